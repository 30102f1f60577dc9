"""Where a ``train_script`` run keeps its files, and how the platform touches what a script had.

Folders are named by a digest of the run's raw ids. A run id is chosen by whoever triggers the run,
and a mapping that drops characters lets two ids share a folder (``…T10:00:00.1+00:00`` and
``…T10_00_00.1_00_00`` did): the second run's upload would replace the first's script, which would
then run with the first run's ``env_vars``.

A script's working folder is its own for one attempt. The next attempt (a retry, a cleared task)
gets a new one, and the old one is removed without following anything in it: a script may leave
links (to ``dags/``, to ``airflow_local_settings.py``), fifos or huge files there, and root must
never write through, block on or read them. Where the platform reads what a sandbox left, it reads
through :func:`read_left_file`: no link followed on the way, a regular file only, under a size cap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

from asgard.core.settings import Settings, get_settings
from asgard.core.storage import Location

log = logging.getLogger(__name__)

# Airflow's dag and task ids are plain segments already; anything else is named by its digest.
PLAIN_SEGMENT = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}$")
_NO_FOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


# --------------------------------------------------------------------------- names
def run_key(dag_id: str, run_id: str) -> str:
    """A DAG run's folder name: the sha256 of its raw ids (distinct ids, distinct names, whatever they hold)."""
    return hashlib.sha256(json.dumps([dag_id, run_id]).encode()).hexdigest()


def script_storage(dag_id: str, run_id: str, settings: Settings | None = None) -> Location:
    """Where ``check_upload`` stores a run's script for ``run_script``: under ``runs_uri`` (production: S3,
    since the task that runs it may be on another worker; embedded: the data folder)."""
    settings = settings or get_settings()
    root = Location(settings.runs_root, settings.aws_conn_id)
    return root.child(segment(dag_id), run_key(dag_id, run_id), "script")


def task_folder(
    dag_id: str, run_id: str, task_id: str, map_index: int | None = -1, settings: Settings | None = None
) -> Path:
    """One task instance's local folder on this worker; each of its attempts gets a folder inside
    (:func:`fresh_attempt`)."""
    settings = settings or get_settings()
    name = segment(task_id) if map_index is None or map_index < 0 else f"{segment(task_id)}.{int(map_index)}"
    return settings.data_dir / "runs" / segment(dag_id) / run_key(dag_id, run_id) / "tasks" / name


def segment(name: str) -> str:
    """``name`` when it is a plain path segment, else a digest of it (the run key carries the raw id)."""
    return name if PLAIN_SEGMENT.match(name) else hashlib.sha256(name.encode()).hexdigest()[:32]


# --------------------------------------------------------------------------- folders a script had
@contextlib.contextmanager
def fresh_attempt(folder: Path, try_number: int) -> Iterator[Path]:
    """A new empty folder, root's only, for one attempt of a task (``folder/try-<n>``).

    What earlier attempts left in ``folder`` (a killed worker's, a script's links) is removed first,
    and this attempt's folder after the block: no attempt ever sees, or writes into, another's.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for name in sorted(os.listdir(folder)):
        remove_tree(folder / name)
    attempt = folder / f"try-{int(try_number)}"
    attempt.mkdir(mode=0o700)  # exclusive: a folder that already exists is never reused
    try:
        yield attempt
    finally:
        try:
            remove_tree(attempt)
        except OSError as error:  # the attempt's own outcome matters more; the next one removes it
            log.warning("could not remove %s: %s", attempt, error)


def make_fresh(folder: Path) -> Path:
    """``folder`` created anew and empty (root's only): whatever was there is removed first."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_tree(folder)
    folder.mkdir(mode=0o700)
    return folder


def remove_tree(path: Path) -> None:
    """Remove ``path`` and everything under it without following a link: a link is removed, never what
    it points to; a fifo is unlinked, never opened. Any depth (a script can nest folders deeper than
    Python's recursion, which bounds ``shutil.rmtree``)."""
    path = Path(path).absolute()
    if path.parent == path:
        raise ValueError("refusing to remove /")
    if not os.path.lexists(path):
        return
    # GNU rm walks the tree physically (fts): links are unlinked, never followed, at any depth; it
    # does not cross into another file system.
    done = subprocess.run(
        ["rm", "-rf", "--one-file-system", "--", str(path)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0 or os.path.lexists(path):
        raise OSError(f"could not remove {path}: {done.stderr.strip() or 'it is still there'}")


def write_new_file(path: Path, data: bytes, mode: int = 0o644) -> Path:
    """Create ``path`` with ``data``; refused if anything (a file, a link, a fifo) is already there."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NO_FOLLOW, mode)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(data)
    return path
