"""The image train_script's pod runner runs user scripts in: one per requirements set, built once.

It is tagged with the key of the local runner's virtualenv cache (``user_scripts.environment_key``:
requirements, the platform's constraints, Python), so a requirements set is resolved and built once
and every later run — on any worker — reuses it: an image already on the engine, or already in the
registry, is pushed or pulled rather than rebuilt. The build installs wheels the host downloaded
(``serving_image.Wheelhouse``) with no network inside, and the pod gets the image by digest.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asgard import serving_image, user_scripts
from asgard.settings import REPO_ROOT, Settings, get_settings

if TYPE_CHECKING:
    import docker

log = logging.getLogger(__name__)

DOCKERFILE = REPO_ROOT / "include" / "script_env" / "Dockerfile"
ENVIRONMENT_LABEL = "io.asgard.script.environment"
REGISTRY_CONN_ID = "asgard_registry"


def script_requirements(requirements: list[str]) -> list[str]:
    """What the image installs: the script's requirements and what the platform's contract needs."""
    return sorted({*requirements, *user_scripts.PLATFORM_REQUIREMENTS})


def render_context(requirements: list[str], folder: Path, wheelhouse: serving_image.Wheelhouse | None = None) -> None:
    """The Dockerfile, requirements.txt and wheels in ``folder`` (emptied first)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shutil.copy2(DOCKERFILE, folder / "Dockerfile")
    installed = script_requirements(requirements)
    (folder / "requirements.txt").write_text("\n".join(installed) + "\n")
    serving_image.add_wheels(folder / "wheels", installed, wheelhouse)


def ensure_script_image(
    requirements: list[str],
    *,
    settings: Settings | None = None,
    progress: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """The pushed image for ``requirements`` (built only when no engine or registry has it): its digest."""
    from asgard.operators.serving_image import registry_client

    settings = settings or get_settings()
    key = user_scripts.environment_key(requirements)
    repository = settings.script_repository
    image = f"{repository}:{key}"
    client = registry_client(
        image,
        registry_type=settings.registry_type,
        docker_conn_id=REGISTRY_CONN_ID,
        aws_conn_id=settings.aws_conn_id,
        docker_url=settings.docker_url,
    )
    built = not (_local(client, image, key) or _pulled(client, image, key))
    if built:
        with tempfile.TemporaryDirectory(prefix="asgard-script-image-") as scratch:
            context = Path(scratch) / "context"
            render_context(requirements, context, serving_image.Wheelhouse(settings))
            serving_image.build_image(
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
    digest = serving_image.push_image(client, image, progress=progress)
    return {"image": f"{repository}@{digest}", "environment_key": key, "built": built}


def _local(client: docker.APIClient, image: str, key: str) -> bool:
    import docker

    try:
        labels = client.inspect_image(image)["Config"].get("Labels") or {}
    except docker.errors.ImageNotFound:
        return False
    return labels.get(ENVIRONMENT_LABEL) == key


def _pulled(client: docker.APIClient, image: str, key: str) -> bool:
    """Pulled from the registry, where another worker pushed it (False: it is not there)."""
    import docker

    repository, tag = image.rsplit(":", 1)
    try:
        client.pull(repository, tag=tag)
    except docker.errors.DockerException as error:
        log.info("%s is not in the registry yet (%s): building it", image, error)
        return False
    return _local(client, image, key)
