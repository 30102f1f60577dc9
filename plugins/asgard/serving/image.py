"""Serving images: a registered model version → a build context → an image on a Docker engine.

The context holds the serving app (``include/serving``), the model bundle the app loads at
start-up (ONNX when the conversion is proven faithful on the holdout sample, else the native
model), a pinned ``requirements.txt`` and a wheelhouse, so the build installs with no network.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asgard.core import sandbox
from asgard.core.build_cache import PythonEnvironments, Wheelhouse
from asgard.core.errors import InputError
from asgard.core.leftovers import copy_left_tree
from asgard.core.param_schemas import plain_requirements
from asgard.core.sandbox import Bind, owned_by_sandbox
from asgard.core.settings import REPO_ROOT
from asgard.core.xcom import XComRecord
from asgard.hooks.docker import local_image_labels
from asgard.registry.versions import ModelVersionRef, holdout_frame
from asgard.serving.bundle import SERVED_FLAVORS

if TYPE_CHECKING:
    import docker
    from feast import FeatureStore

    from asgard.hooks.mlflow import MlflowHook

log = logging.getLogger(__name__)

SERVING_APP = REPO_ROOT / "include" / "serving"
LABEL_PREFIX = "io.asgard.model."
# The bundler (asgard.serving.bundle) and what it needs besides the model's own requirements: MLflow's
# flavor loaders (mlflow-skinny), the converters, and cloudpickle to write a native bundle's model.
PLATFORM_PACKAGE = REPO_ROOT / "plugins" / "asgard"
BUNDLER_REQUIREMENTS = (
    *("mlflow-skinny", "cloudpickle", "numpy", "pandas", "pyarrow"),
    *("onnx", "onnxruntime", "skl2onnx", "onnxmltools"),
)
# Where the bundler's inputs and output are inside its sandbox.
MODEL_INSIDE, INPUT_INSIDE, OUTPUT_INSIDE, CODE_INSIDE = "/model", "/input", "/output", "/platform"
# boto3: the prediction log may go to S3.
# httpx: a shadow's copies (``asgard_serving.mirror``), sent only while a shadow deploy runs.
SERVING_REQUIREMENTS = ["fastapi", "uvicorn", "uvloop", "httptools", "orjson", "numpy", "boto3", "httpx"]
ONNX_REQUIREMENTS = ["onnxruntime"]
# What reading features by entity id adds: Redis's client (the SQLite reader is the standard library's)
# with its C reply parser (redis-py's own, in Python, took longer over a 100-id reply than the read),
# and what redis-py needs on the image's Python (3.11.2, below 3.11.3) but not on the host's, whose
# download of the wheels would otherwise leave it out.
ONLINE_REQUIREMENTS = ["redis", "hiredis", "async-timeout"]
NATIVE_REQUIREMENTS = ["cloudpickle", "pandas"]
# Docker's tag grammar: what a model name must fit to name an image tag.
TAG_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def image_tag(model_name: str, version: str) -> str:
    tag = f"{model_name}-v{version}"
    if not TAG_PATTERN.match(tag):
        raise InputError(
            f"model name {model_name!r} cannot name an image tag ({tag!r}): use letters, digits, '_', '.' and '-'"
        )
    return tag


def image_labels(ref: ModelVersionRef, revision: str) -> dict[str, str]:
    """OCI labels of a serving image: which model version it serves, built from which source."""
    return {
        "org.opencontainers.image.title": f"{ref.name} model server",
        "org.opencontainers.image.version": ref.version,
        "org.opencontainers.image.revision": revision,
        "org.opencontainers.image.source": "asgard-mlops",
        f"{LABEL_PREFIX}name": ref.name,
        f"{LABEL_PREFIX}version": ref.version,
        f"{LABEL_PREFIX}run_id": ref.run_id,
    }


def source_revision() -> str:
    """The git revision of the platform's source (``unknown`` outside a checkout)."""
    try:
        result = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() or "unknown"


# ----------------------------------------------------------------------------- the model bundle
def export_bundle(hook: MlflowHook, ref: ModelVersionRef, folder: Path, labels: dict[str, str]) -> dict[str, Any]:
    """Write the bundle the serving app loads (``serving.json`` + ONNX or native model) into ``folder``.

    The worker only downloads files and reads the model's metadata; the model itself is loaded (by
    MLflow's loader of its flavor), converted and checked by :mod:`asgard.serving.bundle` in a sandbox
    (no network, nothing of this host but its inputs), with an environment of the model's own
    requirements, MLflow's loaders and the converters.
    """
    import mlflow
    from mlflow.models import Model

    native = folder / "native"
    with hook.using_server():
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{ref.name}/{ref.version}", dst_path=str(native))
    meta = Model.load(str(native / "MLmodel"))
    if meta.signature is None or meta.signature.inputs is None:
        raise InputError(
            f"{ref.name} version {ref.version} has no input signature: log the model with a signature "
            "(mlflow.models.infer_signature) so the server can check requests"
        )
    flavor = next((name for name in SERVED_FLAVORS if name in meta.flavors), None)
    if flavor is None:
        raise InputError(
            f"{ref.name} version {ref.version} is a {', '.join(sorted(meta.flavors))} model; the serving image "
            f"serves MLflow {', '.join(SERVED_FLAVORS)} models (scikit-learn-API estimators and pipelines of them)"
        )
    columns = signature_columns(meta.signature)
    sample = _holdout_sample(hook, ref, native, meta, [c["name"] for c in columns])
    request = {
        "model_dir": MODEL_INSIDE,
        "flavor": flavor,
        "model_type": ref.tags.get("model_type"),
        "columns": columns,
        "identity": ref.to_dict(),
        "labels": labels,
        "output": OUTPUT_INSIDE,
        "sample": f"{INPUT_INSIDE}/sample.parquet" if sample is not None else None,
    }
    requirements = [*model_requirements(native), *serializer_requirements(meta.flavors[flavor])]
    return _bundle_in_sandbox(native, folder, request, sample, requirements)


def serializer_requirements(flavor_conf: dict[str, Any]) -> list[str]:
    """What reading the model file needs beyond its flavor's library: skops, when MLflow saved it so
    (its default) and the version's requirements were given without it."""
    return ["skops"] if flavor_conf.get("serialization_format") == "skops" else []


def _bundle_in_sandbox(native: Path, folder: Path, request: dict, sample: Any, requirements: list[str]) -> dict:
    python = PythonEnvironments().ensure(sorted({*requirements, *BUNDLER_REQUIREMENTS}))
    requirements_file = logged_requirements(native)
    with tempfile.TemporaryDirectory(prefix="asgard-bundle-") as scratch:
        inputs = Path(scratch) / "input"
        inputs.mkdir()
        if sample is not None:
            sample.to_parquet(inputs / "sample.parquet", index=False)
        (inputs / "request.json").write_text(json.dumps(request))
        lines: list[str] = []
        with owned_by_sandbox(Path(scratch) / "output") as output:
            outcome = sandbox.run(
                [str(python), "-m", "asgard.serving.bundle", f"{INPUT_INSIDE}/request.json"],
                binds=[
                    Bind(python.parent.parent),
                    Bind(native, MODEL_INSIDE),
                    Bind(inputs, INPUT_INSIDE),
                    Bind(output, OUTPUT_INSIDE, writable=True),
                    Bind(PLATFORM_PACKAGE, f"{CODE_INSIDE}/asgard"),
                ],
                env={
                    "PATH": "/usr/bin:/bin",
                    "HOME": "/tmp",
                    "PYTHONPATH": CODE_INSIDE,
                    "LANG": "C.UTF-8",
                    # MLflow's loaders refuse every format (skops too) without it: this sandbox is where
                    # the model may be deserialized. No telemetry: there is no network to send it to.
                    "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true",
                    "MLFLOW_DISABLE_TELEMETRY": "true",
                },
                cwd="/tmp",
                limits=sandbox.Limits(timeout_seconds=900, memory_mb=4096, max_output_bytes=1_000_000),
                scratch=Path(scratch),
                output=lines.append,
            )
            if not outcome.ok:
                why = outcome.stopped_by or f"exit code {outcome.exit_code}"
                raise InputError(f"the model could not be bundled ({why}):\n" + "\n".join(outcome.tail))
            for line in lines:
                log.info("bundle: %s", line)
            # The bundler ran the model's own code: what it left may hold links (to /etc/shadow, to
            # dags/), fifos or devices. Only its folders and regular files come out, into the context.
            shutil.rmtree(native)
            copy_left_tree(output, folder, max_bytes=sandbox.Limits().disk_mb * 1024 * 1024)
            if requirements_file is not None and (folder / "native").is_dir():
                # A native bundle's image installs what the model was logged with: the pins as checked,
                # never the file (whose comments may carry anything, an encoding cookie included).
                (folder / "native" / "requirements.txt").unlink(missing_ok=True)
                (folder / "native" / "requirements.txt").write_text("".join(f"{pin}\n" for pin in requirements_file))
    return json.loads((folder / "serving.json").read_text())


def logged_requirements(native: Path) -> list[str] | None:
    """The pins a model's ``requirements.txt`` lists, checked (None: it has none). The file is the
    model's, so whoever logged it's: only plain pins from the index are taken from it."""
    path = native / "requirements.txt"
    if not path.exists():
        return None
    return plain_requirements(path.read_text().splitlines(), "the model's requirements.txt")


def model_requirements(native: Path) -> list[str]:
    """The pins a model's ``requirements.txt`` lists (without MLflow itself: serving does not load it)."""
    return [pin for pin in logged_requirements(native) or [] if not pin.startswith("mlflow")]


def signature_columns(signature: Any) -> list[dict[str, Any]]:
    columns = []
    for spec in signature.inputs.inputs:
        if spec.name is None:
            raise InputError("the model's signature has unnamed inputs (a tensor signature); name the columns")
        kind = spec.type.name if hasattr(spec.type, "name") else str(spec.type)
        columns.append({"name": spec.name, "type": kind, "required": bool(getattr(spec, "required", True))})
    return columns


def _holdout_sample(hook: MlflowHook, ref: ModelVersionRef, native: Path, meta: Any, names: list[str]) -> Any:
    """The run's logged holdout sample, else the model's input example, else None."""
    import pandas as pd

    frame = holdout_frame(hook, ref.run_id, names)
    if frame is not None:
        return frame
    try:
        example = meta.load_input_example(str(native))
    except Exception:  # an example MLflow cannot read back is no sample
        return None
    return example[names] if isinstance(example, pd.DataFrame) else None


# ----------------------------------------------------------------------------- requirements
def requirements_for(info: dict[str, Any], folder: Path) -> list[str]:
    """What the image installs: the app's needs, plus the model's own pins for a native model."""
    online = ONLINE_REQUIREMENTS if info.get("online_features") else []
    if info["flavor"] == "onnx":
        return sorted({*SERVING_REQUIREMENTS, *ONNX_REQUIREMENTS, *online})
    return sorted({*SERVING_REQUIREMENTS, *NATIVE_REQUIREMENTS, *online, *model_requirements(folder / "native")})


def add_online_features(
    ref: ModelVersionRef, info: dict[str, Any], folder: Path, store: FeatureStore | None = None
) -> dict[str, Any]:
    """The bundle's ``online_features``: how the image reads the version's features by entity id from
    the views its lineage names in ``store`` (default: the profile's), or in ``online_features_reason``
    why it cannot."""
    from asgard.features import store as feature_store
    from asgard.features.online_reading import NotReadable, online_read_spec

    inputs = [column["name"] for column in info["signature"]["inputs"]]
    try:
        if not ref.feature_views:
            raise NotReadable("it was not trained on Feast feature views")
        store = store or feature_store.open_store()
        info["online_features"] = online_read_spec(store, ref.feature_views, inputs)
    except NotReadable as reason:
        info["online_features_reason"] = str(reason)
        log.info("%s v%s cannot be served by entity id: %s", ref.name, ref.version, reason)
    (folder / "serving.json").write_text(json.dumps(info, indent=2))
    return info


# ----------------------------------------------------------------------------- the build context
@dataclass(frozen=True)
class BuildContext:
    folder: Path
    labels: dict[str, str]
    info: dict[str, Any]
    requirements: list[str]


def render_context(
    hook: MlflowHook,
    ref: ModelVersionRef,
    folder: Path,
    *,
    wheelhouse: Wheelhouse | None = None,
    revision: str | None = None,
    feature_store: FeatureStore | None = None,
) -> BuildContext:
    """Everything the Dockerfile needs, in ``folder`` (emptied first); ``feature_store`` is where the
    version's feature views are looked up for reading by entity id (default: the profile's store)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    labels = image_labels(ref, revision or source_revision())
    shutil.copy2(SERVING_APP / "Dockerfile", folder / "Dockerfile")
    shutil.copytree(
        SERVING_APP / "asgard_serving", folder / "app" / "asgard_serving", ignore=shutil.ignore_patterns("__pycache__")
    )
    (folder / "model").mkdir()
    info = export_bundle(hook, ref, folder / "model", labels)
    info = add_online_features(ref, info, folder / "model", feature_store)
    labels["io.asgard.serving.flavor"] = info["flavor"]
    requirements = requirements_for(info, folder / "model")
    (folder / "requirements.txt").write_text("\n".join(requirements) + "\n")
    (wheelhouse or Wheelhouse()).link_into(folder / "wheels", requirements)
    return BuildContext(folder, labels, info, requirements)


# ----------------------------------------------------------------------------- the image
@dataclass(frozen=True)
class BuiltImage(XComRecord):
    """A model version's serving image, built (or found built) and tagged ``<model_name>-v<version>``."""

    image: str
    model_name: str
    version: str
    run_id: str
    source: str
    built: bool
    flavor: str | None
    image_id: str | None = None
    # Kaniko pushes as it builds: where its context was uploaded and the digest it pushed.
    context: str | None = None
    digest: str | None = None


@dataclass(frozen=True)
class PushedImage(XComRecord):
    """An image in the registry, and the reference that pins it (``<repository>@<digest>``)."""

    image: str
    digest: str
    reference: str


def find_image(client: docker.APIClient, reference: str, ref: ModelVersionRef) -> str | None:
    """The id of a local image ``reference`` built from exactly this model version, if there is one."""
    labels = local_image_labels(client, reference)
    if labels is None:
        return None
    if labels.get(f"{LABEL_PREFIX}run_id") == ref.run_id and labels.get(f"{LABEL_PREFIX}version") == ref.version:
        return client.inspect_image(reference)["Id"]
    return None


def build_arguments(context: BuildContext, base_image: str) -> dict[str, str]:
    """The Dockerfile's build arguments (the same for the Docker engine and Kaniko): only the base.

    Which model version an image serves is in its labels, which do not take part in layer caching.
    """
    return {"BASE_IMAGE": base_image}
