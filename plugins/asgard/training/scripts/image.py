"""The image train_script's pod runner runs user scripts in: one per requirements set, built once.

It is tagged with the key of the local runner's virtualenv cache (``runner.environment_key``:
requirements, the platform's constraints, Python), so a requirements set is resolved and built once
and every later run — on any worker — reuses it: an image already on the engine, or already in the
registry, is pushed or pulled rather than rebuilt. The build installs wheels the host downloaded
(``core.build_cache.Wheelhouse``) with no network inside, and the pod gets the image by digest.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asgard.core.build_cache import Wheelhouse
from asgard.core.settings import REPO_ROOT, Settings, get_settings
from asgard.hooks.docker import build_image, local_image_labels, pull, push_image, registry_client
from asgard.training.scripts import runner

if TYPE_CHECKING:
    import docker

log = logging.getLogger(__name__)

DOCKERFILE = REPO_ROOT / "include" / "script_env" / "Dockerfile"
ENVIRONMENT_LABEL = "io.asgard.script.environment"
REGISTRY_CONN_ID = "asgard_registry"


def script_requirements(requirements: list[str]) -> list[str]:
    """What the image installs: the script's requirements and what the platform's contract needs."""
    return sorted({*requirements, *runner.PLATFORM_REQUIREMENTS})


def render_context(requirements: list[str], folder: Path, wheelhouse: Wheelhouse | None = None) -> None:
    """The Dockerfile, requirements.txt and wheels in ``folder`` (emptied first)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shutil.copy2(DOCKERFILE, folder / "Dockerfile")
    installed = script_requirements(requirements)
    (folder / "requirements.txt").write_text("\n".join(installed) + "\n")
    (wheelhouse or Wheelhouse()).link_into(folder / "wheels", installed)


def ensure_script_image(
    requirements: list[str],
    *,
    settings: Settings | None = None,
    progress: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """The pushed image for ``requirements`` (built only when no engine or registry has it): its digest."""
    settings = settings or get_settings()
    key = runner.environment_key(requirements)
    repository = settings.script_repository
    image = f"{repository}:{key}"
    client = registry_client(
        image,
        registry_type=settings.registry_type,
        docker_conn_id=REGISTRY_CONN_ID,
        aws_conn_id=settings.aws_conn_id,
        docker_url=settings.docker_url,
    )
    built = not (_built_for(client, image, key) or (pull(client, image) and _built_for(client, image, key)))
    if built:
        with tempfile.TemporaryDirectory(prefix="asgard-script-image-") as scratch:
            context = Path(scratch) / "context"
            render_context(requirements, context, Wheelhouse(settings))
            build_image(
                client,
                context,
                image,
                build_args={"BASE_IMAGE": settings.serving_base_image, "ENVIRONMENT_KEY": key},
                labels={ENVIRONMENT_LABEL: key},
                progress=progress,
            )
        progress(f"built {image} for {', '.join(script_requirements(requirements))}")
    else:
        progress(f"{image} is already built for these requirements: reusing it")
    digest = push_image(client, image, progress=progress)
    return {"image": f"{repository}@{digest}", "environment_key": key, "built": built}


def _built_for(client: docker.APIClient, image: str, key: str) -> bool:
    """The engine has ``image``, built for exactly this requirements set."""
    return (local_image_labels(client, image) or {}).get(ENVIRONMENT_LABEL) == key
