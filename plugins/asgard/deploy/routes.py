"""The stable endpoint's route table: which container serves each model, in one JSON file.

The Docker deploy target writes it (a switch is one atomic rename of the whole table), and the
local profile's router reads it on every request (re-reading only when the file changed).

Each profile of an installation has a table of its own (``Settings.routes_file``), and a table that
knows its owner (profile and installation, :func:`owner_of`) stamps every route it writes with it and
answers only its own: two profiles of one installation share the Docker engine, never a route, so one
profile's router never forwards to (and its reconcile never brings back) the other's containers.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asgard.core.storage import write_text

if TYPE_CHECKING:
    from asgard.core.settings import Settings

# Labels of every serving container (and its network): the profile and installation that own it.
PROFILE_LABEL = "io.asgard.profile"
INSTALL_LABEL = "io.asgard.install"


def owner_of(settings: Settings) -> dict[str, str]:
    """The profile and installation (a hash of its home) that own what ``settings`` deploys."""
    return {"profile": settings.profile, "install": hashlib.sha256(str(settings.home).encode()).hexdigest()[:12]}


class RouteTable:
    """``{model_name: {"upstream": url, "version": ..., "digest": ...}}`` kept in one JSON file.

    With an ``owner`` (:func:`owner_of`), routes written carry it and routes read are only the owner's:
    a route of another profile or installation is not there. A route written before routes carried an
    owner (no ``owner`` key) counts as the table's own.
    """

    def __init__(self, path: Path, owner: dict[str, str] | None = None) -> None:
        self.path = path
        self.owner = owner
        self._mtime: float | None = None
        self._routes: dict[str, dict[str, Any]] = {}

    @classmethod
    def for_settings(cls, settings: Settings) -> RouteTable:
        """The route table of ``settings``' profile and installation."""
        return cls(settings.routes_file, owner_of(settings))

    def owner_labels(self) -> dict[str, str]:
        """The labels that mark a serving container as this table's owner's (none without an owner)."""
        if not self.owner:
            return {}
        return {PROFILE_LABEL: self.owner["profile"], INSTALL_LABEL: self.owner["install"]}

    def owns(self, route: dict[str, Any] | None) -> bool:
        """Whether ``route`` is this table's owner's (any route, for a table without one)."""
        return bool(route) and (not self.owner or route.get("owner", self.owner) == self.owner)

    def routes(self) -> dict[str, dict[str, Any]]:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return {}
        if mtime != self._mtime:
            read = json.loads(self.path.read_text() or "{}")
            self._routes = {name: route for name, route in read.items() if self.owns(route)}
            self._mtime = mtime
        return self._routes

    def set(self, model_name: str, route: dict[str, Any] | None) -> None:
        """Point ``model_name`` at a new upstream (or remove it) with one atomic rename.

        The table is read, changed and written under an exclusive lock, so two deploys of two models
        at once both keep their change. Routes of other owners in the file are kept as they are.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{self.path.name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._mtime = None
            try:
                routes = json.loads(self.path.read_text() or "{}")
            except FileNotFoundError:
                routes = {}
            if route is None:
                if self.owns(routes.get(model_name)):
                    routes.pop(model_name, None)
            else:
                routes[model_name] = {**route, "owner": self.owner} if self.owner else route
            write_text(self.path, json.dumps(routes, indent=2))
