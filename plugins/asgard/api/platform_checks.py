"""Platform checks: prove each service the pipeline depends on answers and does real work.

Used by the ``check_platform`` DAG (the first thing the main job runs) so a broken
installation fails in one place with a message that names the service, not halfway through
training.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from asgard.core.settings import get_settings

CHECK_NAMES = ("mlflow", "storage", "sandbox", "trino")
CHECK_EXPERIMENT = "asgard-platform-checks"


class PlatformCheckError(RuntimeError):
    """A service the platform needs is missing or does not work."""


def check_mlflow(*, dag_id: str, run_id: str, mlflow_conn_id: str = "mlflow_default") -> dict[str, Any]:
    """Tracking and artifact store both work: log a metric and an artifact, read them back."""
    from asgard.hooks.mlflow import MlflowHook

    hook = MlflowHook(mlflow_conn_id)
    started = time.perf_counter()
    try:
        run = hook.get_or_create_run(experiment_name=CHECK_EXPERIMENT, dag_id=dag_id, run_id=run_id)
        client = hook.client
        client.log_metric(run.info.run_id, "check_started_at", time.time())
        with tempfile.TemporaryDirectory() as scratch:
            probe = Path(scratch) / "probe.txt"
            probe.write_text(f"asgard platform check {dag_id} {run_id}\n")
            client.log_artifact(run.info.run_id, str(probe))
        names = [artifact.path for artifact in client.list_artifacts(run.info.run_id)]
        client.set_terminated(run.info.run_id)
    except Exception as error:
        raise PlatformCheckError(f"MLflow at {hook.tracking_uri} failed the check: {error}") from error
    if "probe.txt" not in names:
        raise PlatformCheckError(f"MLflow at {hook.tracking_uri} did not keep the logged artifact (saw {names})")
    return {
        "service": "mlflow",
        "tracking_uri": hook.tracking_uri,
        "mlflow_run_id": run.info.run_id,
        "seconds": round(time.perf_counter() - started, 3),
    }


def check_storage(root: str | None = None) -> dict[str, Any]:
    """Where runs pass files between their tasks (production: S3) takes an atomic write and reads it back."""
    from asgard.core.storage import Location

    settings = get_settings()
    probe = Location(root or settings.runs_root, settings.aws_conn_id).child(".checks", uuid.uuid4().hex)
    started = time.perf_counter()
    try:
        probe.write_bytes(b"ok")
        content = probe.read_bytes()
        probe.filesystem().delete_file(probe.path)
    except OSError as error:
        raise PlatformCheckError(f"run storage {probe.uri} is not usable: {error}") from error
    if content != b"ok":
        raise PlatformCheckError(f"run storage {probe.uri} returned {content!r} for what was written")
    return {"service": "storage", "path": probe.uri, "seconds": round(time.perf_counter() - started, 3)}


def check_sandbox() -> dict[str, Any]:
    """User scripts can run isolated here: a sandbox starts, as uid 65534, and sees nothing of this host."""
    from asgard.core import sandbox

    settings = get_settings()
    if settings.script_runner != "local":
        return {"service": "sandbox", "skipped": f"user scripts run on {settings.script_runner}"}
    started = time.perf_counter()
    seen: list[str] = []
    probe = "import os; print(os.getuid(), sorted(os.listdir('/')))"
    with tempfile.TemporaryDirectory(prefix="asgard-check-") as scratch:
        try:
            outcome = sandbox.run(
                [settings.script_python, "-c", probe],
                binds=[],
                env={"PATH": "/usr/bin:/bin"},
                cwd="/",
                limits=sandbox.Limits(timeout_seconds=60, memory_mb=256, max_processes=16),
                scratch=Path(scratch),
                output=seen.append,
            )
        except sandbox.SandboxError as error:
            raise PlatformCheckError(f"user scripts cannot run isolated on this worker: {error}") from error
    if not outcome.ok or not seen or not seen[0].startswith(f"{sandbox.SANDBOX_UID} "):
        raise PlatformCheckError(f"the sandbox did not run as expected: {outcome} {seen}")
    return {"service": "sandbox", "saw": seen[0], "seconds": round(time.perf_counter() - started, 3)}


def check_trino(*, timeout: float = 10.0) -> dict[str, Any]:
    """The profile's Trino (production: the gold layer's query engine) answers a query that reads its Iceberg
    catalog's list; its version and the query's id are returned. A profile without Trino skips it."""
    from asgard.features.store import OfflineStoreUnavailableError, trino_info

    # The platform's environment names Trino (asgard.local.production.platform_env; Feast reads the same).
    host, port, user = (os.environ.get(name) for name in ("TRINO_HOST", "TRINO_PORT", "TRINO_USER"))
    if not (host and port):
        return {"service": "trino", "skipped": f"no Trino in the {get_settings().profile} profile"}
    address = f"http://{host}:{port}"
    started = time.perf_counter()
    try:
        info = trino_info(address, timeout=timeout)
    except OfflineStoreUnavailableError as error:
        raise PlatformCheckError(str(error)) from None
    import trino

    try:
        cursor = trino.dbapi.connect(host=host, port=int(port), user=user or "asgard", request_timeout=timeout).cursor()
        cursor.execute("SELECT catalog_name FROM system.metadata.catalogs")
        catalogs = sorted(row[0] for row in cursor.fetchall())
    except Exception as error:  # the client's errors are many kinds; each is a failed check, said so
        raise PlatformCheckError(f"Trino at {address} failed the check: {type(error).__name__}: {error}") from None
    if "iceberg" not in catalogs:
        raise PlatformCheckError(f"Trino at {address} has no iceberg catalog (catalogs: {', '.join(catalogs)})")
    return {
        "service": "trino",
        "url": address,
        "version": str((info.get("nodeVersion") or {}).get("version", "unknown")),
        "query_id": cursor.query_id,
        "catalogs": catalogs,
        "seconds": round(time.perf_counter() - started, 3),
    }


def run_check(name: str, *, dag_id: str, run_id: str) -> dict[str, Any]:
    """Run the check called ``name`` and return what it found."""
    if name == "mlflow":
        return check_mlflow(dag_id=dag_id, run_id=run_id)
    if name == "storage":
        return check_storage()
    if name == "sandbox":
        return check_sandbox()
    if name == "trino":
        return check_trino()
    raise PlatformCheckError(f"unknown check {name!r}; known checks: {', '.join(CHECK_NAMES)}")
