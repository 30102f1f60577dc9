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
