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
import hashlib
import logging
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asgard.core import sandbox
from asgard.core.build_cache import BuildCacheError, PythonEnvironments
from asgard.core.errors import InputError
from asgard.core.param_schemas import RESERVED_ENV_PATTERN
from asgard.core.sandbox import Bind, owned_by_sandbox
from asgard.core.settings import REPO_ROOT, Settings, get_settings
from asgard.training.scripts import run_folders

log = logging.getLogger(__name__)

MAX_SCRIPT_BYTES = 1_000_000
SCRIPT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}\.py$")
# Variable names a user may not set (the Param's pattern; the base below is the platform's too).
FORBIDDEN_ENV = re.compile(RESERVED_ENV_PATTERN)
INJECTED = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_RUN_ID",
    "EXPERIMENT_NAME",
    "MODEL_NAME",
    "USE_FEAST",
    "FEAST_REPO_PATH",
    "FEATURE_VIEW_NAME",
)
# Every script environment can log to MLflow (the platform's own client, pinned) and be scored by the
# platform (a model loaded and predicting on Parquet rows in the same sandbox); skops is what MLflow
# saves scikit-learn models with by default, so an ordinary script's log_model works as it is.
PLATFORM_REQUIREMENTS = ("mlflow-skinny", "pandas", "pyarrow", "skops")
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
    module = name.removesuffix(".py")
    if module in sys.stdlib_module_names:
        # The script's folder comes first on its import path: every library importing that module would
        # import the script instead, and fail in ways that name neither.
        raise ScriptError(f"script_name {name!r} would shadow Python's own {module} module: rename it")
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
    nul = sorted(key for key, value in env_vars.items() if "\0" in str(value))
    if nul:
        raise ScriptError(f"env_vars value of {', '.join(nul)} holds a NUL character, which no environment can")
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
def environment_key(requirements: list[str], python: str | None = None) -> str:
    """The cache key of a script's requirements set (the platform's own requirements included).

    The local runner's environment folder and the pod runner's image tag both carry it.
    """
    return PythonEnvironments.key_of([*requirements, *PLATFORM_REQUIREMENTS], python or get_settings().script_python)


class ScriptEnvironments:
    """Environments for user scripts, one per requirements set (plus the platform's), built once by uv."""

    def __init__(self, root: Path | None = None, settings: Settings | None = None) -> None:
        self.environments = PythonEnvironments(settings, root=root)

    def key(self, requirements: list[str]) -> str:
        return self.environments.key([*requirements, *PLATFORM_REQUIREMENTS])

    def ensure(self, requirements: list[str], *, progress: Callable[[str], None] = log.info) -> Path:
        """The python executable of the environment for ``requirements``, building it if needed."""
        try:
            return self.environments.ensure([*requirements, *PLATFORM_REQUIREMENTS], progress=progress)
        except BuildCacheError as error:
            raise ScriptError(str(error)) from None


# --------------------------------------------------------------------------- running
# Where things are inside the sandbox (asgard.core.sandbox): the script's working folder (its only
# writable place), the platform's launcher, and the unix sockets of the doors out.
WORKDIR = "/work"
LAUNCHER = REPO_ROOT / "include" / "sandbox" / "launch.py"
LAUNCHER_INSIDE = "/asgard/launch.py"
SOCKETS_INSIDE = "/asgard/sockets"
MLFLOW_PORT_INSIDE = 5000


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
    limits: sandbox.Limits,
    *,
    binds: list[Bind] = (),
    sockets: Path | None = None,
    doors: dict[int, str] | None = None,
    output: Callable[[str], None] = log.info,
) -> ScriptOutcome:
    """Run ``script`` in a sandbox with ``python`` (a script environment); fail naming the cause unless
    it exits 0 within its limits.

    The sandbox sees ``workdir`` (writable, and new: whatever was there is removed first) as ``/work``,
    the environment and ``binds`` read-only, and nothing else of this host; ``sockets`` (a folder
    holding ``mlflow.sock``) is its one way out: ``MLFLOW_TRACKING_URI`` inside points at a relay to
    it; ``doors`` (port inside -> another socket in that folder) are the others. ``env`` is the whole
    environment the script sees (see :func:`script_environment`).
    """
    environment_root = python.parent.parent
    binds = [
        Bind(workdir, WORKDIR, writable=True),
        Bind(environment_root),
        Bind(LAUNCHER, LAUNCHER_INSIDE),
        *binds,
    ]
    forwards: list[str] = []
    if sockets is not None:
        binds.append(Bind(sockets, SOCKETS_INSIDE))
        for port, name in {MLFLOW_PORT_INSIDE: "mlflow.sock", **(doors or {})}.items():
            forwards += ["--forward", f"{port}={SOCKETS_INSIDE}/{name}"]
    command = [str(python), LAUNCHER_INSIDE, *forwards, "--", str(python), "-u", f"{WORKDIR}/{script.name}"]
    # /work is the script's for this run only: made anew (what an earlier run left, links included, is
    # removed without being followed) and the script written into it before the sandbox's uid owns it.
    run_folders.make_fresh(workdir)
    run_folders.write_new_file(workdir / script.name, script.source.encode())
    with owned_by_sandbox(workdir):
        outcome = sandbox.run(
            command,
            binds=binds,
            env=env,
            cwd=WORKDIR,
            limits=limits,
            scratch=workdir.parent,
            output=output,
        )
    tail = "\n".join(outcome.tail)
    if outcome.stopped_by == "timeout":
        raise ScriptError(f"{script.name} timed out after {limits.timeout_seconds}s; it and its processes were killed")
    if outcome.stopped_by == "output":
        raise ScriptError(f"{script.name} wrote more than {limits.max_output_bytes} bytes of output and was stopped")
    if outcome.stopped_by == "memory":
        raise ScriptError(f"{script.name} ran out of its memory limit ({limits.memory_mb} MB); last output:\n{tail}")
    if outcome.stopped_by == "processes":
        raise ScriptError(f"{script.name} reached its limit of {limits.max_processes} processes; last output:\n{tail}")
    if outcome.exit_code != 0:
        raise ScriptError(f"{script.name} exited with code {outcome.exit_code}; last output:\n{tail}")
    return ScriptOutcome(outcome.exit_code, outcome.seconds, outcome.output_bytes, tail)


def script_environment(python: Path, injected: dict[str, str], env_vars: dict[str, str]) -> dict[str, str]:
    """Everything the script's process sees: a minimal base, the contract's variables, the user's own."""
    missing = [name for name in INJECTED if name not in injected]
    if missing:
        raise ValueError(f"the platform must inject {', '.join(missing)}")
    base = {
        "PATH": f"{python.parent}{os.pathsep}/usr/bin:/bin",
        "HOME": WORKDIR,
        "TMPDIR": "/tmp",
        "USER": "sandbox",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONNOUSERSITE": "1",
    }
    return {**base, **check_env_vars(env_vars), **injected}  # env_vars may not name a base variable


def mlflow_uri_inside() -> str:
    """The tracking URI a sandboxed script uses: the relay to its door (asgard.hooks.mlflow_gateway)."""
    return f"http://127.0.0.1:{MLFLOW_PORT_INSIDE}"


def _last_lines(text: str, count: int) -> str:
    return "\n".join(line for line in text.strip().splitlines()[-count:])
