"""The documentation's screenshots: saved by the browser tests, checked by the docs build.

The tests that drive the Airflow UI in Chromium save each page they check (``record``) into
``docs/screenshots/`` at one window size, and note in ``manifest.json`` what each shows, when it was
taken, its size and its checksum. The site's build (``mkdocs.yml`` names this file as a hook) fails when a
page shows a screenshot the manifest does not hold, or one that is not the file the tests saved: the
pictures cannot be retouched by hand or go stale without the build saying so. A missing file is already a
strict build's broken link.

Writers and the build take turns on a lock file, so a build never copies a picture from one test run
beside the manifest of another. Standard library only: MkDocs loads this file as a hook by its path.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import struct
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FOLDER = Path(__file__).resolve().parents[3] / "docs" / "screenshots"
MANIFEST = "manifest.json"
# The browser's window (tests/e2e/browser.py): every screenshot is this size, so pages look alike.
WINDOW = (1400, 1000)


class ScreenshotError(Exception):
    """A screenshot the site shows is not the one the browser tests saved."""


@contextlib.contextmanager
def _turn(folder: Path, kind: int) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as handle:
        fcntl.flock(handle, kind)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's header (its IHDR chunk)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ScreenshotError("not a PNG file")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def read_manifest(folder: Path = FOLDER) -> dict[str, dict[str, Any]]:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return {}


def _write_atomically(path: Path, data: bytes) -> None:
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.write_bytes(data)
    os.replace(staging, path)


def record(png: bytes, name: str, *, page: str, shows: str, folder: Path = FOLDER) -> dict[str, Any]:
    """Save ``png`` as ``<name>.png`` and note it in the manifest; ``shows`` is what the test saw on the page."""
    width, height = png_size(png)
    if (width, height) != WINDOW:
        raise ScreenshotError(f"{name}: {width}x{height}, not the window's {WINDOW[0]}x{WINDOW[1]}")
    entry = {
        "file": f"{name}.png",
        "page": page,
        "shows": shows,
        "taken_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "width": width,
        "height": height,
        "bytes": len(png),
        "sha256": hashlib.sha256(png).hexdigest(),
        "test": os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0],
    }
    with _turn(folder, fcntl.LOCK_EX):
        manifest = read_manifest(folder)
        _write_atomically(folder / entry["file"], png)
        manifest[name] = entry
        _write_atomically(folder / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return entry


def check(built: Path, manifest: dict[str, dict[str, Any]]) -> list[str]:
    """Every problem with the screenshots in the built site's ``screenshots/`` folder against ``manifest``."""
    problems, listed = [], {entry["file"]: entry for entry in manifest.values()}
    for path in sorted(built.glob("*.png")):
        entry = listed.get(path.name)
        if entry is None:
            problems.append(f"{path.name}: no browser test saved it (not in {MANIFEST})")
            continue
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != entry["sha256"] or len(data) != entry["bytes"]:
            problems.append(f"{path.name}: not the file the browser test saved at {entry['taken_at']}")
        elif (size := png_size(data)) != WINDOW:
            problems.append(f"{path.name}: {size[0]}x{size[1]}, not the window's {WINDOW[0]}x{WINDOW[1]}")
    return problems


# MkDocs hooks (mkdocs.yml: hooks). The build holds the writers' lock from the first file it reads to the
# last it writes, and checks the pictures it copied against the manifest it copied with them.
_build_turn: contextlib.ExitStack | None = None


def on_pre_build(config: Any) -> None:
    global _build_turn
    _build_turn = contextlib.ExitStack()
    _build_turn.enter_context(_turn(Path(config["docs_dir"]) / "screenshots", fcntl.LOCK_SH))


def on_post_build(config: Any) -> None:
    global _build_turn
    try:
        built = Path(config["site_dir"]) / "screenshots"
        problems = check(built, read_manifest(built))
    finally:
        if _build_turn is not None:
            _build_turn.close()
            _build_turn = None
    if problems:
        from mkdocs.exceptions import PluginError

        raise PluginError("screenshots: " + "; ".join(problems))
