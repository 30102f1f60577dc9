"""Running a user's training script in isolation: checked, in its own virtualenv, bounded, scrubbed.

The script gets nothing of the platform's environment: no Airflow, database, cloud or connection
variables; only what the contract injects (``MLFLOW_TRACKING_URI``, ``EXPERIMENT_NAME``,
``MODEL_NAME``, ``USE_FEAST``, ``FEAST_REPO_PATH``, ``FEATURE_VIEW_NAME``, ``MLFLOW_RUN_ID`` — the
run to log into) and the user's own ``env_vars``. It runs in its own working directory and session,
under a memory limit and a hard timeout that kills its whole process tree, with its output
streamed to the task log up to a cap.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asgard.build_cache import build_once
from asgard.errors import InputError
from asgard.settings import REPO_ROOT, Settings, get_settings

log = logging.getLogger(__name__)

MAX_SCRIPT_BYTES = 1_000_000
SCRIPT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}\.py$")
# Variable names a user may not set: the platform's own, and every family that carries secrets.
FORBIDDEN_ENV = re.compile(r"^(AIRFLOW|AWS_|ASGARD_|MLFLOW_|AZURE_|GOOGLE_|GCP_|KUBE|PG|REDIS|DATABASE|SQL)")
INJECTED = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_RUN_ID",
    "EXPERIMENT_NAME",
    "MODEL_NAME",
    "USE_FEAST",
    "FEAST_REPO_PATH",
    "FEATURE_VIEW_NAME",
)
# Every script environment can log to MLflow: the platform's own MLflow client, pinned.
PLATFORM_REQUIREMENTS = ("mlflow-skinny",)
CONSTRAINTS = REPO_ROOT / "constraints.txt"


class ScriptError(InputError):
    """The script, its requirements or its run failed; the message says which."""


@dataclass(frozen=True)
class UserScript:
    name: str
    source: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()


def decode_script(name: str, content_b64: str, *, max_bytes: int = MAX_SCRIPT_BYTES) -> UserScript:
    """The script, checked before anything expensive: a sane name, valid base64, a size limit, valid Python."""
    if not SCRIPT_NAME.match(name):
        raise ScriptError(f"script_name {name!r} must be a file name ending in .py (letters, digits, _ . -)")
    if len(content_b64) > (max_bytes * 4) // 3 + 4:
        raise ScriptError(f"script_content is larger than the {max_bytes} byte limit")
    try:
        raw = base64.b64decode(content_b64, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ScriptError(f"script_content is not valid base64: {error}") from error
    if len(raw) > max_bytes:
        raise ScriptError(f"script is {len(raw)} bytes, over the {max_bytes} byte limit")
    try:
        source = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ScriptError(f"script is not UTF-8 text: {error}") from error
    try:
        compile(source, name, "exec")
    except SyntaxError as error:
        raise ScriptError(f"syntax error in {name}, line {error.lineno}: {error.msg}") from error
    return UserScript(name, source)


def check_env_vars(env_vars: dict[str, str]) -> dict[str, str]:
    """The user's variables, refusing any that would shadow the contract or look like platform secrets."""
    refused = sorted(key for key in env_vars if key in INJECTED or FORBIDDEN_ENV.match(key))
    if refused:
        raise ScriptError(f"env_vars may not set {', '.join(refused)} (reserved for the platform)")
    return {key: str(value) for key, value in env_vars.items()}


def injected_variables(
    params: dict[str, Any], tracking_uri: str, mlflow_run_id: str, feast_repo_path: str
) -> dict[str, str]:
    """The contract's variables for one run (the same for the local runner and the pod)."""
    return {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_RUN_ID": mlflow_run_id,
        "EXPERIMENT_NAME": params["experiment_name"],
        "MODEL_NAME": params["model_name"],
        "USE_FEAST": "true" if params.get("use_feast", True) else "false",
        "FEAST_REPO_PATH": feast_repo_path,
        "FEATURE_VIEW_NAME": params.get("feature_view_name") or "customer_features",
    }


# --------------------------------------------------------------------------- environments
def environment_key(requirements: list[str]) -> str:
    """The cache key of a requirements set: requirements (normalised), constraints, Python version.

    The local runner's virtualenv folder and the pod runner's image tag both carry it.
    """
    normalised = sorted({re.sub(r"\s+", "", r).lower() for r in [*requirements, *PLATFORM_REQUIREMENTS]})
    digest = hashlib.sha256()
    digest.update(f"{sys.version_info[:3]}\n".encode())
    digest.update("\n".join(normalised).encode())
    digest.update(CONSTRAINTS.read_bytes())
    return digest.hexdigest()[:16]


class ScriptEnvironments:
    """Virtualenvs for user scripts, one per requirements set, built once and shared.

    The cache key hashes the requirements (normalised, sorted), the platform's constraints and the
    Python version: every package resolves to the platform's pinned version, so a model a script
    logs loads in the platform. Built once per key (:func:`asgard.build_cache.build_once`).
    """

    def __init__(self, root: Path | None = None, settings: Settings | None = None) -> None:
        self.root = root or (settings or get_settings()).data_dir / "script-envs"

    def key(self, requirements: list[str]) -> str:
        return environment_key(requirements)

    def ensure(self, requirements: list[str], *, progress: Callable[[str], None] = log.info) -> Path:
        """The python executable of the environment for ``requirements``, building it if needed."""
        key = self.key(requirements)
        folder, built = build_once(self.root, key, lambda target: self._build(target, requirements, progress))
        progress(f"{'built' if built else 'reusing'} script environment {key}")
        return folder / "bin" / "python"

    def _build(self, target: Path, requirements: list[str], progress: Callable[[str], None]) -> None:
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "venv", str(target)], check=True, capture_output=True)
        command = [
            str(target / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            "-c",
            str(CONSTRAINTS),
            *PLATFORM_REQUIREMENTS,
            *requirements,
        ]
        progress(
            f"installing {', '.join(requirements) or 'no extra requirements'} (+ {', '.join(PLATFORM_REQUIREMENTS)})"
        )
        result = subprocess.run(command, capture_output=True, text=True, check=False, env=_pip_env())
        if result.returncode != 0:
            detail = _last_lines(result.stderr or result.stdout, 15)
            raise ScriptError(f"could not install the requirements {requirements}: {detail}")
        progress(f"installed in {time.monotonic() - started:.0f}s")


def _pip_env() -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CACHE_DIR", "PIP_CERT")
    return {key: os.environ[key] for key in keep if key in os.environ}


# --------------------------------------------------------------------------- running
@dataclass(frozen=True)
class Limits:
    timeout_seconds: int = 600
    memory_mb: int = 4096
    max_output_bytes: int = 5_000_000


@dataclass(frozen=True)
class ScriptOutcome:
    exit_code: int
    seconds: float
    output_bytes: int
    tail: str


def run_script(
    script: UserScript,
    python: Path,
    workdir: Path,
    env: dict[str, str],
    limits: Limits,
    *,
    output: Callable[[str], None] = log.info,
) -> ScriptOutcome:
    """Run ``script`` with ``python`` in ``workdir``; fail with the cause unless it exits 0 in time.

    ``env`` is the whole environment the script sees (see :func:`script_environment`).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / script.name
    path.write_text(script.source)
    started = time.monotonic()
    process = subprocess.Popen(
        [str(python), "-u", str(path)],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: a timeout kills everything it started
        preexec_fn=_limit_memory(limits.memory_mb),
    )
    reader = _OutputReader(process, limits.max_output_bytes, output)
    reader.start()
    try:
        process.wait(timeout=limits.timeout_seconds)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        if process.poll() is None or timed_out:
            _kill_tree(process)
        reader.join(timeout=10)
    seconds = time.monotonic() - started
    outcome = ScriptOutcome(process.returncode, seconds, reader.total, reader.tail())
    if timed_out:
        raise ScriptError(f"{script.name} timed out after {limits.timeout_seconds}s; it and its processes were killed")
    if reader.overflowed:
        raise ScriptError(f"{script.name} wrote more than {limits.max_output_bytes} bytes of output and was stopped")
    if outcome.exit_code != 0:
        cause = f"{script.name} exited with code {outcome.exit_code}"
        if "MemoryError" in outcome.tail or outcome.exit_code == -signal.SIGKILL:
            cause += f" (memory limit {limits.memory_mb} MB)"
        raise ScriptError(f"{cause}; last output:\n{outcome.tail}")
    return outcome


def script_environment(
    python: Path, workdir: Path, injected: dict[str, str], env_vars: dict[str, str]
) -> dict[str, str]:
    """Everything the script's process sees: a minimal base, the contract's variables, the user's own."""
    missing = [name for name in INJECTED if name not in injected]
    if missing:
        raise ValueError(f"the platform must inject {', '.join(missing)}")
    base = {
        "PATH": f"{python.parent}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONNOUSERSITE": "1",
    }
    return {**base, **check_env_vars(env_vars), **injected}


def _limit_memory(memory_mb: int) -> Callable[[], None]:
    def apply() -> None:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return apply


def _kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL the script's process group and any descendant that left it."""
    import psutil

    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    for child in descendants:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    process.wait(timeout=10)
    psutil.wait_procs(descendants, timeout=10)


class _OutputReader(threading.Thread):
    """Streams the script's output to the log line by line, keeping a tail for error messages."""

    def __init__(self, process: subprocess.Popen, cap: int, output: Callable[[str], None]) -> None:
        super().__init__(daemon=True)
        self.process, self.cap, self.output = process, cap, output
        self.total = 0
        self.overflowed = False
        self.lines: list[str] = []

    def run(self) -> None:
        for raw in iter(self.process.stdout.readline, b""):
            self.total += len(raw)
            if self.total > self.cap:
                self.overflowed = True
                _kill_tree(self.process)
                break
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.output(line)
            self.lines = [*self.lines[-39:], line]
        self.process.stdout.close()

    def tail(self) -> str:
        return "\n".join(self.lines[-20:])


def _last_lines(text: str, count: int) -> str:
    return "\n".join(line for line in text.strip().splitlines()[-count:])
