"""Serving images: a registered model version → a build context → an image on a Docker engine.

The context holds the serving app (``include/serving``), the model bundle the app loads at
start-up (ONNX when the conversion is proven faithful on the holdout sample, else the native
model), a pinned ``requirements.txt`` and a wheelhouse, so the build installs with no network.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asgard import onnx_export
from asgard.build_cache import build_once
from asgard.errors import InputError
from asgard.settings import REPO_ROOT, Settings, get_settings
from asgard.training import HOLDOUT_ARTIFACT

if TYPE_CHECKING:
    import docker

    from asgard.hooks.mlflow import MlflowHook

log = logging.getLogger(__name__)

SERVING_APP = REPO_ROOT / "include" / "serving"
CONSTRAINTS = REPO_ROOT / "constraints.txt"
LABEL_PREFIX = "io.asgard.model."
NATIVE_MODEL_FILE = "model.pkl"
# boto3: the prediction log may go to S3.
SERVING_REQUIREMENTS = ["fastapi", "uvicorn", "uvloop", "httptools", "orjson", "numpy", "boto3"]
ONNX_REQUIREMENTS = ["onnxruntime"]
NATIVE_REQUIREMENTS = ["cloudpickle", "pandas"]
# Docker's tag grammar: what a model name must fit to name an image tag.
TAG_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class ImageBuildError(RuntimeError):
    """The Docker engine failed to build the image (the message carries its last output)."""


@dataclass(frozen=True)
class ModelVersionRef:
    """One registered model version, as the image is built from it."""

    name: str
    version: str
    run_id: str
    source: str
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return image_tag(self.name, self.version)

    def to_dict(self) -> dict[str, Any]:
        return {"model_name": self.name, "version": self.version, "run_id": self.run_id, "source": self.source}


def image_tag(model_name: str, version: str) -> str:
    tag = f"{model_name}-v{version}"
    if not TAG_PATTERN.match(tag):
        raise InputError(
            f"model name {model_name!r} cannot name an image tag ({tag!r}): use letters, digits, '_', '.' and '-'"
        )
    return tag


def resolve_model_version(
    hook: MlflowHook, name: str, version: str | None = None, alias: str | None = None
) -> ModelVersionRef:
    """The version named by number or alias (``champion`` when neither is given), or an error naming it."""
    from mlflow.exceptions import MlflowException

    client = hook.client
    try:
        client.get_registered_model(name)
    except MlflowException:
        raise InputError(f"no registered model named {name!r} in MLflow at {hook.tracking_uri}") from None
    try:
        if version:
            found = client.get_model_version(name, str(version))
        else:
            found = client.get_model_version_by_alias(name, alias or "champion")
    except MlflowException:
        which = f"version {version}" if version else f"alias @{alias or 'champion'}"
        raise InputError(f"registered model {name!r} has no {which}") from None
    return ModelVersionRef(name, str(found.version), found.run_id, found.source, dict(found.tags or {}))


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
    """Write the bundle the serving app loads (``serving.json`` + ONNX or native model) into ``folder``."""
    import cloudpickle
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
    if "sklearn" not in meta.flavors:
        raise InputError(
            f"{ref.name} version {ref.version} is a {', '.join(sorted(meta.flavors))} model; the serving image "
            "serves MLflow sklearn-flavor models (pipelines of scikit-learn, XGBoost and LightGBM estimators)"
        )
    columns = _signature_columns(meta.signature)
    pickled = meta.flavors["sklearn"]["pickled_model"]
    with (native / pickled).open("rb") as handle:
        model = cloudpickle.load(handle)
    model_type = ref.tags.get("model_type") or ("classification" if hasattr(model, "predict_proba") else "regression")
    sample = _holdout_sample(hook, ref, native, meta, [c["name"] for c in columns])
    return write_bundle(folder, model, columns, model_type, sample, identity=ref.to_dict(), labels=labels)


def write_bundle(
    folder: Path,
    model: Any,
    columns: list[dict[str, Any]],
    model_type: str,
    sample: Any,
    *,
    identity: dict[str, Any],
    labels: dict[str, str],
) -> dict[str, Any]:
    """``serving.json`` plus ``model.onnx`` (a faithful conversion) or ``native/model.pkl`` in ``folder``."""
    import cloudpickle

    conversion = onnx_export.convert(model, columns, model_type, sample)
    log.info("%s v%s: %s", identity["model_name"], identity["version"], conversion.reason)
    info: dict[str, Any] = {
        **identity,
        "model_type": model_type,
        "classes": _plain_list(getattr(model, "classes_", None)) if model_type == "classification" else None,
        "signature": {"inputs": columns},
        "flavor": "onnx" if conversion.faithful else "native",
        "flavor_reason": conversion.reason,
        "labels": labels,
    }
    native = folder / "native"
    if conversion.faithful:
        (folder / "model.onnx").write_bytes(conversion.onnx_bytes)
        info["onnx"] = {"label_output": conversion.label_output, "probability_output": conversion.probability_output}
        shutil.rmtree(native, ignore_errors=True)
    else:
        native.mkdir(exist_ok=True)
        with (native / NATIVE_MODEL_FILE).open("wb") as handle:
            cloudpickle.dump(model, handle)
        info["native"] = {"pickled_model": NATIVE_MODEL_FILE}
    (folder / "serving.json").write_text(json.dumps(info, indent=2))
    return info


def _signature_columns(signature: Any) -> list[dict[str, Any]]:
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


def holdout_frame(hook: MlflowHook, run_id: str, names: list[str] | None = None) -> Any:
    """The holdout sample ``train_model`` logged to ``run_id`` (those columns), or None if it has none."""
    return hook.logged_frame(run_id, HOLDOUT_ARTIFACT, names)


def _plain_list(values: Any) -> list | None:
    return None if values is None else [v.item() if hasattr(v, "item") else v for v in values]


# ----------------------------------------------------------------------------- requirements and wheels
def requirements_for(info: dict[str, Any], folder: Path) -> list[str]:
    """What the image installs: the app's needs, plus the model's own pins for a native model."""
    if info["flavor"] == "onnx":
        return sorted({*SERVING_REQUIREMENTS, *ONNX_REQUIREMENTS})
    model_requirements = folder / "native" / "requirements.txt"
    pins = (
        [
            line.strip()
            for line in model_requirements.read_text().splitlines()
            if line.strip() and not line.startswith(("#", "-")) and not line.strip().startswith("mlflow")
        ]
        if model_requirements.exists()
        else []
    )
    return sorted({*SERVING_REQUIREMENTS, *NATIVE_REQUIREMENTS, *pins})


class Wheelhouse:
    """Wheels for a requirements set, downloaded once on the host and copied into build contexts."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.root = (settings or get_settings()).data_dir / "wheelhouses"

    @staticmethod
    def key(requirements: list[str]) -> str:
        digest = hashlib.sha256("\n".join(sorted(requirements)).encode())
        digest.update(CONSTRAINTS.read_bytes())
        digest.update(f"{sys.version_info.major}.{sys.version_info.minor}".encode())
        return digest.hexdigest()[:16]

    def ensure(self, requirements: list[str]) -> Path:
        folder, built = build_once(
            self.root, self.key(requirements), lambda target: self._download(target, requirements)
        )
        log.info("%s wheelhouse %s", "downloaded" if built else "reusing", folder.name)
        return folder

    @staticmethod
    def _download(target: Path, requirements: list[str]) -> None:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            # Wheels only: the image has no compiler, and the build has no network to fetch one.
            "--only-binary",
            ":all:",
            "--dest",
            str(target),
            "-c",
            str(CONSTRAINTS),
            *requirements,
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            detail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-10:])
            raise ImageBuildError(f"could not download wheels for {', '.join(requirements)}: {detail}")


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
) -> BuildContext:
    """Everything the Dockerfile needs, in ``folder`` (emptied first)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    labels = image_labels(ref, revision or source_revision())
    shutil.copy2(SERVING_APP / "Dockerfile", folder / "Dockerfile")
    shutil.copytree(
        SERVING_APP / "asgard_serving", folder / "app" / "asgard_serving", ignore=shutil.ignore_patterns("__pycache__")
    )
    (folder / "model").mkdir()
    info = export_bundle(hook, ref, folder / "model", labels)
    labels["io.asgard.serving.flavor"] = info["flavor"]
    requirements = requirements_for(info, folder / "model")
    (folder / "requirements.txt").write_text("\n".join(requirements) + "\n")
    add_wheels(folder / "wheels", requirements, wheelhouse)
    # The model's own requirements file is not needed in the image once its pins are in requirements.txt.
    return BuildContext(folder, labels, info, requirements)


def add_wheels(folder: Path, requirements: list[str], wheelhouse: Wheelhouse | None = None) -> None:
    """The wheels of ``requirements`` (downloaded once on the host) into a build context's ``folder``."""
    wheels = (wheelhouse or Wheelhouse()).ensure(requirements)
    folder.mkdir()
    for wheel in wheels.glob("*.whl"):
        _link_or_copy(wheel, folder / wheel.name)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


# ----------------------------------------------------------------------------- the Docker engine
def find_image(client: docker.APIClient, reference: str, ref: ModelVersionRef) -> str | None:
    """The id of a local image ``reference`` built from exactly this model version, if there is one."""
    import docker

    try:
        image = client.inspect_image(reference)
    except docker.errors.ImageNotFound:
        return None
    labels = (image.get("Config") or {}).get("Labels") or {}
    if labels.get(f"{LABEL_PREFIX}run_id") == ref.run_id and labels.get(f"{LABEL_PREFIX}version") == ref.version:
        return image["Id"]
    return None


def build_arguments(context: BuildContext, base_image: str) -> dict[str, str]:
    """The Dockerfile's build arguments (the same for the Docker engine and Kaniko)."""
    return {
        "BASE_IMAGE": base_image,
        "MODEL_NAME": context.info["model_name"],
        "MODEL_VERSION": context.info["version"],
        "RUN_ID": context.info["run_id"],
        "SOURCE_REVISION": context.labels["org.opencontainers.image.revision"],
    }


def build_image(
    client: docker.APIClient,
    folder: Path,
    reference: str,
    *,
    build_args: dict[str, str],
    labels: dict[str, str],
    progress: Callable[[str], None] = log.info,
) -> str:
    """Build the context in ``folder`` as ``reference``; the image id.

    No network inside the build: every wheel it installs is in the context.
    """
    image_id, tail = None, []
    for chunk in _stream(
        client.build(
            path=str(folder),
            tag=reference,
            buildargs=build_args,
            labels=labels,
            rm=True,
            forcerm=True,
            pull=False,
            network_mode="none",
            decode=True,
        )
    ):
        if "error" in chunk:
            raise ImageBuildError(f"building {reference} failed: {chunk['error'].strip()}\n" + "\n".join(tail[-15:]))
        line = (chunk.get("stream") or "").rstrip()
        if line:
            tail.append(line)
            progress(line)
        image_id = (chunk.get("aux") or {}).get("ID", image_id)
    if image_id is None:
        raise ImageBuildError(f"building {reference} ended without an image:\n" + "\n".join(tail[-15:]))
    return image_id


def _stream(chunks: Any) -> Iterator[dict[str, Any]]:
    yield from chunks


class PushError(RuntimeError):
    """The registry did not take the image; ``transient`` says whether trying again may help."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


# Registry answers that say "not now" rather than "no".
TRANSIENT_MARKERS = (
    "connection refused",
    "timeout",
    "timed out",
    "503",
    "502",
    "504",
    "eof",
    "reset by peer",
    "tls handshake",
    "temporary failure",
    "no such host",
    "i/o timeout",
)


def push_image(
    client: docker.APIClient,
    image: str,
    *,
    attempts: int = 3,
    wait_seconds: float = 2.0,
    progress: Callable[[str], None] = log.info,
) -> str:
    """Push ``image`` (retrying transient failures) and return the digest the registry recorded."""
    import tenacity

    repository, tag = image.rsplit(":", 1)
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential(multiplier=wait_seconds, max=30),
        retry=tenacity.retry_if_exception(lambda error: isinstance(error, PushError) and error.transient),
        reraise=True,
        before_sleep=lambda state: progress(f"push failed ({state.outcome.exception()}); retrying"),
    )
    return retrying(_push_once, client, repository, tag, progress)


def _push_once(client: docker.APIClient, repository: str, tag: str, progress: Callable[[str], None]) -> str:
    import docker

    digest = None
    try:
        for chunk in client.push(repository, tag=tag, stream=True, decode=True):
            if "error" in chunk:
                message = chunk["error"].strip()
                transient = any(marker in message.lower() for marker in TRANSIENT_MARKERS)
                raise PushError(f"pushing {repository}:{tag} failed: {message}", transient=transient)
            if chunk.get("status") in ("Pushed", "Layer already exists"):
                progress(f"{chunk['status']} {chunk.get('id', '')}")
            digest = (chunk.get("aux") or {}).get("Digest", digest)
    except docker.errors.APIError as error:
        raise PushError(f"pushing {repository}:{tag} failed: {error}", transient=error.is_server_error()) from error
    except docker.errors.DockerException as error:  # the engine itself is unreachable
        raise PushError(f"pushing {repository}:{tag} failed: {error}", transient=True) from error
    if not digest:
        raise PushError(f"pushing {repository}:{tag} ended without a digest from the registry", transient=True)
    return digest
