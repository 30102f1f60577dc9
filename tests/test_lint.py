"""The tree is ruff clean (lint and format), as CI and reviewers expect."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=REPO, capture_output=True, text=True, check=False)


def test_ruff_check():
    result = ruff("check", ".")
    assert result.returncode == 0, result.stdout


def test_ruff_format():
    result = ruff("format", "--check", ".")
    assert result.returncode == 0, result.stdout


def test_the_house_is_layered_by_lifecycle_stage():
    """import-linter's contracts (pyproject.toml): each stage imports only the stages below it, nothing
    imports the local profile, and the serving app imports nothing of asgard."""
    lint_imports = Path(sys.executable).parent / "lint-imports"
    env = {"PYTHONPATH": f"{REPO / 'plugins'}:{REPO / 'include' / 'serving'}", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_module_is_a_room_of_its_own():
    """No module in the shared package grows past ~400 lines: a module that does is several concerns."""
    sizes = {path: len(path.read_text().splitlines()) for path in (REPO / "plugins" / "asgard").rglob("*.py")}
    assert not {str(path.relative_to(REPO)): lines for path, lines in sizes.items() if lines > 400}
