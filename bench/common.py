"""What the benchmarks share: the embedded services they run against.

A benchmark starts its own services under a scratch home on free ports and stops them at the end,
or, with ``--reuse-services``, uses the running stack its ``ASGARD_*`` environment describes and
leaves it running (the test suite's smoke runs share the session's stack this way).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for folder in (REPO / "include", REPO / "plugins"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from asgard.core.settings import Settings  # noqa: E402
from asgard.local.services import ServiceManager  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def embedded_services(
    names: list[str] | None, *, reuse: bool, prefix: str, quiet: bool = True
) -> Iterator[tuple[Settings, ServiceManager]]:
    """The embedded ``names`` (all when None), healthy, and this process pointed at them.

    ``reuse``: the running services of the stack the environment describes (an error naming the
    one that is not healthy); else a fresh stack under a scratch home, stopped and removed at the end,
    even when the benchmark is terminated.
    """
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    scratch = None
    if reuse:
        settings = Settings.from_env()
    else:
        scratch = tempfile.TemporaryDirectory(prefix=prefix)
        ports = ("airflow_port", "mlflow_port", "registry_port", "router_port")
        settings = Settings(home=Path(scratch.name), profile="embedded", **{port: free_port() for port in ports})
    manager = ServiceManager(settings, base_env={k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")})
    os.environ["ASGARD_HOME"] = str(settings.home)
    os.environ["AIRFLOW_CONN_MLFLOW_DEFAULT"] = json.dumps(
        {"conn_type": "http", "host": settings.bind_host, "port": settings.mlflow_port}
    )
    try:
        if reuse:
            wanted = set(names or [service.name for service in manager.services()])
            down = [status.name for status in manager.status() if status.name in wanted and not status.healthy]
            if down:
                raise SystemExit(f"--reuse-services: {', '.join(down)} not running and healthy under {settings.home}")
        else:
            manager.start(names, log=(lambda _: None) if quiet else (lambda line: print(f"  {line}", flush=True)))
        yield settings, manager
    finally:
        if scratch is not None:
            manager.stop(log=lambda _: None)
            scratch.cleanup()


def exit_code(failures: list[str]) -> int:
    """A benchmark's exit status: 0, or 1 after printing what disagreed."""
    if failures:
        print("FAILED: " + "; ".join(failures))
        return 1
    return 0
