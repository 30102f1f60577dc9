"""Building a script's environment runs none of its packages' code on the host.

Any package on the index can ship a ``.pth`` file, which Python's ``site`` runs at start-up; uv's
``--compile-bytecode`` compiled with the new environment's interpreter, site and all, so a wheel's
``.pth`` ran as root on the worker (found by a hostile review). A real wheel with such a file is
built here and installed through the real builder from a local folder.
"""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

from asgard.core.build_cache import PythonEnvironments
from asgard.core.settings import get_settings


def hostile_wheel(folder: Path, marker: Path) -> Path:
    """``asgardprobe-1.0``: a module, and a ``.pth`` that writes ``marker`` when any interpreter of the
    environment starts with its site."""
    folder.mkdir(parents=True)
    wheel = folder / "asgardprobe-1.0-py3-none-any.whl"
    hook = f"import os; open({str(marker)!r}, 'a').write(f'uid={{os.getuid()}}\\n')\n"
    files = {
        "asgardprobe.py": "VALUE = 1\n",
        "asgardprobe_hook.pth": hook,
        "asgardprobe-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: asgardprobe\nVersion: 1.0\n",
        "asgardprobe-1.0.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = [f"{name},," for name in files] + ["asgardprobe-1.0.dist-info/RECORD,,"]
    files["asgardprobe-1.0.dist-info/RECORD"] = "\n".join(record) + "\n"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return wheel


def test_an_environment_is_built_and_compiled_without_running_a_packages_pth(tmp_path, monkeypatch):
    marker = tmp_path / "pth-ran"
    wheels = tmp_path / "wheels"
    hostile_wheel(wheels, marker)
    monkeypatch.setenv("UV_FIND_LINKS", str(wheels))
    monkeypatch.setenv("UV_NO_INDEX", "1")
    settings = get_settings().model_copy(update={"cache_dir": tmp_path / "cache"})
    python = PythonEnvironments(settings, root=tmp_path / "envs").ensure(["asgardprobe"], progress=lambda _: None)
    assert not marker.exists(), marker.read_text()
    # Compiled: the sandbox sees the environment read-only, and finds its bytecode written.
    compiled = list((python.parent.parent / "lib").rglob("__pycache__/asgardprobe.*.pyc"))
    assert compiled, "asgardprobe.py was not compiled"
    # The environment works (and the hook is real: an interpreter with its site runs it).
    subprocess.run([str(python), "-c", "import asgardprobe"], check=True)
    assert marker.read_text().startswith("uid=")
