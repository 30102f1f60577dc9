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
from collections.abc import Callable
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
    owner (no ``owner`` key) is nobody's until :meth:`adopt_unowned` decides from its container whose it
    is: an old table was shared by both profiles, so it may name the other profile's container.
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
        return bool(route) and (not self.owner or route.get("owner") == self.owner)

    def adopt_unowned(self, owner_of_container: Callable[[str], dict[str, str] | None]) -> list[str]:
        """Give each route without an owner one: this table's when its container is this owner's (or says
        nothing of its owner, or is gone: the table's file was then its profile's), else it leaves the
        table (another profile's container is never forwarded to nor brought back from here). What was
        done, one line per route. ``owner_of_container(name)`` tells a container's owner, as far as known.
        """
        if not self.owner or not self.path.exists():
            return []
        done: list[str] = []

        def adopt(routes: dict[str, dict[str, Any]]) -> None:
            for name, route in list(routes.items()):
                if not isinstance(route, dict) or "owner" in route:
                    continue
                theirs = owner_of_container(str(route.get("container") or "")) or {}
                if any(theirs.get(key) not in (None, mine) for key, mine in self.owner.items()):
                    routes.pop(name)
                    done.append(f"{name}: route to {route.get('container')} dropped ({theirs}'s container)")
                else:
                    routes[name] = {**route, "owner": self.owner}
                    done.append(f"{name}: route to {route.get('container')} adopted as {self.owner['profile']}'s")

        self._change(adopt)
        return done

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

        def change(routes: dict[str, dict[str, Any]]) -> None:
            if route is None:
                if self.owns(routes.get(model_name)):
                    routes.pop(model_name, None)
            else:
                routes[model_name] = {**route, "owner": self.owner} if self.owner else route

        self._change(change)

    def _change(self, change: Callable[[dict[str, dict[str, Any]]], None]) -> None:
        """Read the whole file, ``change`` it and write it back under the table's lock (one rename)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{self.path.name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._mtime = None
            try:
                routes = json.loads(self.path.read_text() or "{}")
            except FileNotFoundError:
                routes = {}
            before = json.dumps(routes, sort_keys=True)
            change(routes)
            if json.dumps(routes, sort_keys=True) != before or not self.path.exists():
                write_text(self.path, json.dumps(routes, indent=2))
