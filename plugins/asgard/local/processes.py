"""Supervising local service processes: start, wait until healthy, stop with every descendant.

Each service is a process group of its own, recorded in a PID file with its start time (so a
recycled PID is never mistaken for ours). ``stop`` signals the whole group and every descendant
it can find, waits, then escalates: a clean stop leaves no orphan processes.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from asgard.core.settings import Settings


class ServiceError(RuntimeError):
    """A service could not be started, reached or stopped; the message says which and why."""


@dataclass(frozen=True)
class Service:
    """How to run one embedded service and how to tell that it is up."""

    name: str
    argv: list[str]
    health_url: str
    port: int
    env: dict[str, str] = field(default_factory=dict)
    start_timeout: float = 180.0
    # Airflow standalone shuts its children down on SIGINT; SIGTERM leaves them behind.
    stop_signal: int = signal.SIGINT
    prepare: Callable[[], None] | None = None
    # Run once the service is healthy (e.g. load the base image into a fresh Docker engine).
    after_start: Callable[[], None] | None = None
    # Run once the service has stopped (e.g. release the mounts a Docker engine leaves behind).
    after_stop: Callable[[], None] | None = None
    # How to tell it is up when a GET of health_url cannot (a Celery worker answers over its broker).
    health_check: Callable[[], bool] | None = None
    # A service answering on a unix socket rather than a TCP port (the Docker engine).
    health_socket: str | None = None
    # It stops what it started (a Docker engine its containers, then its containerd; Airflow standalone
    # its components): only it is signalled, its descendants only if they outlive the grace. Signalled
    # with it, containerd died before dockerd could stop the containers, and LocalExecutor workers
    # before their scheduler could end them, each stop then waiting out its timeouts.
    stops_its_children: bool = False


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    healthy: bool
    pid: int | None
    url: str

    def describe(self) -> str:
        state = "healthy" if self.healthy else ("starting/unhealthy" if self.running else "stopped")
        pid = f"pid {self.pid}" if self.pid else "-"
        return f"{self.name:<13} {state:<18} {pid:<12} {self.url}"


class ProcessSupervisor(abc.ABC):
    """Starts and stops the :meth:`services` of one :class:`Settings` as process groups."""

    def __init__(self, settings: Settings, *, base_env: dict[str, str] | None = None) -> None:
        self.settings = settings
        # What the services inherit besides their own settings (the caller's environment by default).
        self.base_env = dict(os.environ if base_env is None else base_env)

    @abc.abstractmethod
    def services(self) -> list[Service]:
        """The services in start order."""

    def service(self, name: str) -> Service:
        for service in self.services():
            if service.name == name:
                return service
        known = ", ".join(s.name for s in self.services())
        raise ServiceError(f"unknown service {name!r}; known services: {known}")

    # ----------------------------------------------------------------- lifecycle
    def start(self, names: Iterable[str] | None = None, *, log: Callable[[str], None] = print) -> None:
        """Start the named services (all by default) and wait until each is healthy. Idempotent.

        Every service is launched before any is waited for: they start side by side, so the slowest
        one sets the pace rather than their sum. (Nothing needs another to be up to start; only the
        tasks that run later talk to them.)
        """
        starting = []
        for service in self._select(names):
            if self._running_process(service.name):
                if _healthy(service):
                    log(f"{service.name}: already running at {self._url(service)}")
                    continue
            else:
                self._launch(service, log=log)
            starting.append(service)
        for service in starting:
            self._wait_healthy(service, log=log)
            if service.after_start:
                service.after_start()

    def stop(self, names: Iterable[str] | None = None, *, log: Callable[[str], None] = print) -> None:
        """Stop the named services (all by default), children included. Idempotent."""
        for service in reversed(self._select(names)):
            process = self._running_process(service.name)
            if process is None:
                log(f"{service.name}: not running")
                self._pid_file(service.name).unlink(missing_ok=True)
                continue
            _stop_tree(process, service.stop_signal, whole_tree=not service.stops_its_children)
            self._pid_file(service.name).unlink(missing_ok=True)
            if service.after_stop:
                service.after_stop()
            log(f"{service.name}: stopped")

    def status(self) -> list[ServiceStatus]:
        result = []
        for service in self.services():
            process = self._running_process(service.name)
            result.append(
                ServiceStatus(
                    name=service.name,
                    running=process is not None,
                    healthy=process is not None and _healthy(service),
                    pid=process.pid if process else None,
                    url=self._url(service),
                )
            )
        return result

    def log_file(self, name: str) -> Path:
        self.service(name)
        return self.settings.logs_dir / f"{name}.log"

    def tail(self, name: str, lines: int = 50) -> str:
        path = self.log_file(name)
        if not path.exists():
            return ""
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 256 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    # ----------------------------------------------------------------- internals
    def _select(self, names: Iterable[str] | None) -> list[Service]:
        if names is None:
            return self.services()
        wanted = list(names)
        for name in wanted:
            self.service(name)
        return [s for s in self.services() if s.name in wanted]

    def _url(self, service: Service) -> str:
        if service.health_socket:
            return f"unix://{service.health_socket}"
        if service.health_check is not None or not service.port:
            return service.health_url
        return f"http://{self.settings.bind_host}:{service.port}"

    def _pid_file(self, name: str) -> Path:
        return self.settings.state_dir / f"{name}.pid"

    def _running_process(self, name: str) -> psutil.Process | None:
        path = self._pid_file(name)
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_text())
            process = psutil.Process(record["pid"])
            # A recycled PID belongs to someone else: only a matching start time is ours.
            if abs(process.create_time() - record["create_time"]) > 1.0 or not process.is_running():
                return None
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
            return process
        except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, ValueError):
            return None

    def _launch(self, service: Service, *, log: Callable[[str], None]) -> None:
        if service.port and _port_in_use(self.settings.bind_host, service.port):
            raise ServiceError(
                f"{service.name}: port {service.port} on {self.settings.bind_host} is taken by another "
                f"process; stop it or choose another port (ASGARD_{service.name.upper()}_PORT)"
            )
        if not Path(service.argv[0]).exists() and shutil.which(service.argv[0]) is None:
            raise ServiceError(f"{service.name}: {service.argv[0]} not found; run ./asgard setup first")
        if service.prepare:
            service.prepare()
        for folder in (self.settings.state_dir, self.settings.logs_dir):
            folder.mkdir(parents=True, exist_ok=True)
        env = {**self.base_env, **service.env}
        log_path = self.log_file(service.name)
        with log_path.open("ab") as log_handle:
            process = subprocess.Popen(
                service.argv,
                env=env,
                cwd=self.settings.home,
                stdin=subprocess.DEVNULL,
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                # Its own process group, so stop can signal every child it spawns.
                start_new_session=True,
            )
        record = {"pid": process.pid, "create_time": psutil.Process(process.pid).create_time()}
        write_private(self._pid_file(service.name), json.dumps(record))
        log(f"{service.name}: started (pid {process.pid}), log {log_path}")

    def _wait_healthy(self, service: Service, *, log: Callable[[str], None]) -> None:
        deadline = time.monotonic() + service.start_timeout
        while time.monotonic() < deadline:
            if _healthy(service):
                log(f"{service.name}: healthy at {self._url(service)}")
                return
            if self._running_process(service.name) is None:
                raise ServiceError(
                    f"{service.name}: exited during start-up; last lines of {self.log_file(service.name)}:\n"
                    + self.tail(service.name, 30)
                )
            time.sleep(1.0)
        raise ServiceError(
            f"{service.name}: not healthy after {service.start_timeout:.0f}s at {service.health_url}; "
            f"last lines of {self.log_file(service.name)}:\n" + self.tail(service.name, 30)
        )


def _healthy(service: Service) -> bool:
    import httpx

    if service.health_check is not None:
        return service.health_check()
    url = service.health_url
    transport = httpx.HTTPTransport(uds=service.health_socket) if service.health_socket else None
    try:
        with httpx.Client(transport=transport, timeout=3.0) as client:
            response = client.get(url)
    except httpx.HTTPError:
        return False
    if response.status_code != 200:
        return False
    if url.endswith("/api/v2/monitor/health"):
        # The API answers before the scheduler has started: wait for the components that run tasks.
        body = response.json()
        return all(
            body.get(component, {}).get("status") == "healthy"
            for component in ("metadatabase", "scheduler", "dag_processor")
        )
    return True


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def _stop_tree(process: psutil.Process, first_signal: int, grace: float = 30.0, *, whole_tree: bool = True) -> None:
    """Signal the process group (or, not ``whole_tree``, the process alone), then every descendant still
    alive; escalate to SIGKILL."""
    try:
        family = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    if not whole_tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(first_signal)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, first_signal)
    # Descendants that left the group (task runners start sessions of their own) get it directly.
    for member in family[1:] if whole_tree else []:
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
            if os.getpgid(member.pid) != process.pid:
                member.send_signal(first_signal)
    _, alive = psutil.wait_procs(family, timeout=grace)
    for escalation in (signal.SIGTERM, signal.SIGKILL):
        if not alive:
            return
        # Children that moved to a group of their own (task runners, gunicorn workers) too.
        for straggler in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                straggler.send_signal(escalation)
        _, alive = psutil.wait_procs(alive, timeout=10.0)
    if alive:
        raise ServiceError(f"could not stop pids {[p.pid for p in alive]}")


def write_private(path: Path, content: str) -> None:
    """Write a secret-bearing file readable by its owner only, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
    os.replace(tmp, path)
