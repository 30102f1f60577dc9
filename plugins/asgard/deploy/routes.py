"""The stable endpoint's route table: which container serves each model, in one JSON file.

The Docker deploy target writes it (a switch is one atomic rename of the whole table), and the
local profile's router reads it on every request (re-reading only when the file changed).
"""

from __future__ import annotations

import fcntl
import json
from pathlib import Path
from typing import Any

from asgard.core.storage import write_text


class RouteTable:
    """``{model_name: {"upstream": url, "version": ..., "digest": ...}}`` kept in one JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime: float | None = None
        self._routes: dict[str, dict[str, Any]] = {}

    def routes(self) -> dict[str, dict[str, Any]]:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return {}
        if mtime != self._mtime:
            self._routes, self._mtime = json.loads(self.path.read_text() or "{}"), mtime
        return self._routes

    def set(self, model_name: str, route: dict[str, Any] | None) -> None:
        """Point ``model_name`` at a new upstream (or remove it) with one atomic rename.

        The table is read, changed and written under an exclusive lock, so two deploys of two models
        at once both keep their change.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{self.path.name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._mtime = None
            routes = dict(self.routes())
            if route is None:
                routes.pop(model_name, None)
            else:
                routes[model_name] = route
            write_text(self.path, json.dumps(routes, indent=2))
