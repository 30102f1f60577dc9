"""Folders built once per key and shared: Python environments (uv), image wheelhouses.

A build happens under an exclusive lock, in the folder where it will live (virtualenvs embed their
own path), and counts only once a completion marker is written after it: concurrent callers with
the same key wait for one build and never use half of one; a failed build leaves nothing behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from asgard.core.settings import REPO_ROOT, Settings, get_settings

log = logging.getLogger(__name__)

COMPLETE_MARKER = ".asgard-complete"
# Every build resolves to the platform's pinned versions.
CONSTRAINTS = REPO_ROOT / "constraints.txt"
# What an image build installs its wheels with (include/*/Dockerfile): the pinned uv's own wheel.
IMAGE_INSTALLER = "uv"
# A requirements set that takes longer than this to install is refused (a stalled index, a huge set).
INSTALL_TIMEOUT_SECONDS = 600
# Bumped when the way an environment is built changes, so environments built the old way are not reused.
ENVIRONMENT_LAYOUT = "uv-compiled-1"


class BuildCacheError(RuntimeError):
    """A cached folder could not be built (the message carries the tool's last output)."""


def build_once(root: Path, key: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
    """The folder ``root/key``, filled by ``build(folder)`` unless complete already; and whether built now."""
    root.mkdir(parents=True, exist_ok=True)
    folder = root / key
    if (folder / COMPLETE_MARKER).exists():
        return folder, False
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent build of the same key finishes first
        if (folder / COMPLETE_MARKER).exists():
            return folder, False
        shutil.rmtree(folder, ignore_errors=True)  # an interrupted earlier build
        try:
            folder.mkdir()
            build(folder)
            (folder / COMPLETE_MARKER).touch()
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
    return folder, True


class Wheelhouse:
    """Wheels for a requirements set, downloaded once on the host and linked into build contexts.

    Image builds install from these with no network inside the build (and so from a host that may
    reach the package index when the engine's builds may not).
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.root = (settings or get_settings()).cache_dir / "wheelhouses"

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

    def link_into(self, folder: Path, requirements: list[str]) -> None:
        """The wheels of ``requirements``, and uv's to install them with, into a build context's ``folder``
        (hard links where possible)."""
        folder.mkdir()
        for wheel in self.ensure(sorted({*requirements, IMAGE_INSTALLER})).glob("*.whl"):
            try:
                os.link(wheel, folder / wheel.name)
            except OSError:
                shutil.copy2(wheel, folder / wheel.name)

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
            raise BuildCacheError(f"could not download wheels for {', '.join(requirements)}: {detail}")


class PythonEnvironments:
    """Environments built by uv, one per requirements set, for code that runs in a sandbox.

    The key hashes the requirements (normalised, sorted), the platform's constraints and the
    interpreter (``script_python``: the system's, which every sandbox can reach): every package
    resolves to the platform's pinned version. Only wheels are installed, so no package's build code
    ever runs here. uv shares its download cache with the platform's own virtualenv
    (``<cache_dir>/uv``): a requirement the platform pins is not downloaded again.
    """

    def __init__(self, settings: Settings | None = None, *, root: Path | None = None) -> None:
        self.settings = settings or get_settings()
        self.root = root or self.settings.cache_dir / "script-envs"

    @staticmethod
    def key_of(requirements: list[str], python: str) -> str:
        normalised = sorted({re.sub(r"\s+", "", requirement).lower() for requirement in requirements})
        digest = hashlib.sha256()
        digest.update(f"{ENVIRONMENT_LAYOUT}\n{os.path.realpath(python)}\n".encode())
        digest.update("\n".join(normalised).encode())
        digest.update(CONSTRAINTS.read_bytes())
        return digest.hexdigest()[:16]

    def key(self, requirements: list[str]) -> str:
        return self.key_of(requirements, self.settings.script_python)

    def ensure(self, requirements: list[str], *, progress: Callable[[str], None] = log.info) -> Path:
        """The python executable of the environment for ``requirements``, building it if needed."""
        key = self.key(requirements)
        folder, built = build_once(self.root, key, lambda target: self._build(target, requirements, progress))
        progress(f"{'built' if built else 'reusing'} environment {key}")
        return folder / "bin" / "python"

    def _build(self, target: Path, requirements: list[str], progress: Callable[[str], None]) -> None:
        started = time.monotonic()
        progress(f"installing {', '.join(sorted(requirements))}")
        self._uv("venv", "--quiet", "--python", self.settings.script_python, str(target))
        result = self._uv(
            "pip",
            "install",
            "--quiet",
            "--python",
            str(target / "bin" / "python"),
            # Wheels only: a source distribution's build code would run here, with this host's access.
            "--only-binary",
            ":all:",
            # Not --compile-bytecode: uv compiles with the new environment's interpreter, site and all,
            # so a wheel's .pth file ran as root here (found by a hostile review). See below.
            "-c",
            str(CONSTRAINTS),
            *requirements,
        )
        if result.returncode != 0:
            detail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
            raise BuildCacheError(f"could not install the requirements {sorted(requirements)}: {detail}")
        # Sandboxes see the environment read-only: without bytecode written now, every run would compile
        # each module it imports from source again (feast, sklearn, mlflow: ~7x slower). Compiled with no
        # site (-S: no .pth file is read, none of the packages' code runs) and isolated (-I).
        compiled = subprocess.run(
            [str(target / "bin" / "python"), "-I", "-S", "-m", "compileall", "-q", "-j", "0", str(target / "lib")],
            capture_output=True,
            text=True,
            check=False,
            timeout=INSTALL_TIMEOUT_SECONDS,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        )
        if compiled.returncode != 0:  # a package's own broken file (a Python 2 test, say): left to compile at import
            log.info("compileall left some files uncompiled: %s", (compiled.stdout or compiled.stderr)[-500:])
        progress(f"installed in {time.monotonic() - started:.1f}s")

    def _uv(self, *args: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(
                [str(uv_executable()), *args],
                capture_output=True,
                text=True,
                check=False,
                timeout=INSTALL_TIMEOUT_SECONDS,
                env=_uv_env(self.settings.cache_dir / "uv"),
            )
        except subprocess.TimeoutExpired:
            raise BuildCacheError(f"installing the requirements took longer than {INSTALL_TIMEOUT_SECONDS}s") from None


def uv_executable() -> Path:
    """uv, installed beside the platform's Python (requirements.txt pins it)."""
    return Path(sys.executable).parent / "uv"


def _uv_env(cache: Path) -> dict[str, str]:
    """uv's environment: where its cache is, and nothing of the platform's secrets."""
    keep = (
        *("PATH", "LANG", "SSL_CERT_FILE", "HTTPS_PROXY", "NO_PROXY"),
        # Where packages come from, when the operator points uv at a mirror or a local wheel folder.
        *("UV_INDEX_URL", "UV_EXTRA_INDEX_URL", "UV_FIND_LINKS", "UV_NO_INDEX"),
    )
    passed = {key: os.environ[key] for key in keep if key in os.environ}
    return {**passed, "UV_CACHE_DIR": str(cache), "HOME": "/nonexistent"}
