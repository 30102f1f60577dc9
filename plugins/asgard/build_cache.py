"""Folders built once per key and shared: script virtualenvs, image wheelhouses.

A build happens under an exclusive lock, in the folder where it will live (virtualenvs embed their
own path), and counts only once a completion marker is written after it: concurrent callers with
the same key wait for one build and never use half of one; a failed build leaves nothing behind.
"""

from __future__ import annotations

import fcntl
import shutil
from collections.abc import Callable
from pathlib import Path

COMPLETE_MARKER = ".asgard-complete"


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
