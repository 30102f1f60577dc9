"""Doors: small ASGI apps the platform serves in a thread of its own process for the length of a ``with``
block, through which untrusted code (a sandboxed script, a script pod) reaches exactly what it may."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class DoorError(RuntimeError):
    """A door could not be opened."""


@contextlib.contextmanager
def _served(config: Any, name: str, where: str) -> Iterator[Any]:
    import asyncio

    import uvicorn

    server = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), name=name, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise DoorError(f"the {name} door did not start on {where}")
            time.sleep(0.02)
        yield server
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def serving_door(app: Any, socket_path: Path, name: str) -> Iterator[Path]:
    """``app`` served on the unix socket ``socket_path`` (what a sandbox's :class:`asgard.core.sandbox.Forward`
    reaches)."""
    import uvicorn

    config = uvicorn.Config(app, uds=str(socket_path), log_level="warning", access_log=False, lifespan="on")
    with _served(config, name, str(socket_path)):
        socket_path.chmod(0o666)  # the sandbox's uid connects to it
        yield socket_path


@contextlib.contextmanager
def serving_door_on_tcp(app: Any, host: str, name: str) -> Iterator[int]:
    """``app`` served on ``host`` at a free TCP port, which is yielded."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=0, log_level="warning", access_log=False, lifespan="on")
    with _served(config, name, host) as server:
        yield server.servers[0].sockets[0].getsockname()[1]


def query_refusal(items: list[tuple[str, str]]) -> str | None:
    """A query key given twice means one thing to a door that reads the last value and another to a
    server that reads the first (MLflow, moto): refused."""
    keys = [key for key, _ in items]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    return f"query key(s) given more than once: {', '.join(repeated)[:200]}" if repeated else None
