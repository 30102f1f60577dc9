"""Supervising local service processes: start, wait until healthy, restart on a crash, stop with every descendant.

Each service runs under a supervisor of its own (:mod:`asgard.local.supervisor`, detached: it outlives
``./asgard start``) that starts it as a process group, adopts whatever it orphans, restarts it with
backoff when it dies, and keeps its state in a PID file with the start times (so a recycled PID is
never mistaken for ours). ``stop`` asks the supervisor to stop the service, then ends whatever of the
supervisor's tree and the service's group is left: a clean stop leaves no orphan processes, even after
a crash.
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
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from asgard.core.settings import REPO_ROOT, Settings
from asgard.local.supervisor import end_processes, group_members, started_since_boot, stop_tree


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
    # Run by the supervisor once the service is healthy after each start, then every reconcile_interval
    # seconds while it runs (the Docker engine: every routed serving container running and answering).
    reconcile: Callable[[], None] | None = None
    reconcile_interval: float = 15.0
    # Slow to start and needed by nobody at start (Trino, until a task queries it): launched with the
    # others, waited for after them, so its start-up overlaps theirs rather than delaying their hooks.
    slow_start: bool = False


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    healthy: bool
    pid: int | None
    url: str
    # healthy, starting/unhealthy, stopped, crashed (its leader died), restarting (waiting out the backoff)
    state: str = ""
    restarts: int = 0
    last_exit: str | None = None

    def describe(self) -> str:
        state = self.state or ("healthy" if self.healthy else ("starting/unhealthy" if self.running else "stopped"))
        pid = f"pid {self.pid}" if self.pid else "-"
        history = f"  (restarts {self.restarts}, last exit: {self.last_exit})" if self.last_exit else ""
        return f"{self.name:<13} {state:<18} {pid:<12} {self.url}{history}"


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
        tasks that run later talk to them.) A service whose supervisor is restarting it is waited for.
        """
        starting, launched = [], set()
        for service in self._select(names):
            if self._running_process(service.name) or self._supervisor(service.name):
                if healthy(service):
                    log(f"{service.name}: already running at {self._url(service)}")
                    continue
            else:
                self._end_leftovers(service.name)  # what a crash left behind, when nothing supervised it
                self._launch(service, log=log)
                launched.add(service.name)
            starting.append(service)
        for service in sorted(starting, key=lambda service: service.slow_start):
            try:
                self._wait_healthy(service, fresh=service.name in launched, log=log)
            except ServiceError:
                if service.name in launched:  # not left restarting a service that cannot start
                    self.stop([service.name], log=lambda _: None)
                raise
            if service.after_start:
                service.after_start()

    def stop(self, names: Iterable[str] | None = None, *, log: Callable[[str], None] = print) -> None:
        """Stop the named services (all by default), children included, even after a crash. Idempotent."""
        for service in reversed(self._select(names)):
            record = self._record(service.name)
            supervisor, leader = self._supervisor(service.name), self._running_process(service.name)
            group = group_members(record["pgid"]) if record.get("pgid") else []
            if supervisor is None and leader is None and not group:
                log(f"{service.name}: not running")
                self._pid_file(service.name).unlink(missing_ok=True)
                continue
            family = {p.pid: p for p in (supervisor, leader, *group) if p is not None}
            for process in (supervisor, leader):
                with contextlib.suppress(psutil.NoSuchProcess, AttributeError):
                    family.update({child.pid: child for child in process.children(recursive=True)})
            if supervisor is not None:
                # It stops the service with the service's own signal and grace, then every descendant.
                with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
                    supervisor.terminate()
                    supervisor.wait(timeout=60.0)
            elif leader is not None:
                stop_tree(leader, service.stop_signal, whole_tree=not service.stops_its_children)
            # Whatever outlived its keeper: the rest of the group, adopted orphans, the supervisor itself.
            leftovers = [p for p in [*family.values(), *group_members(record.get("pgid") or -1)] if alive(p)]
            try:
                end_processes(leftovers, grace=5.0)
            except RuntimeError as error:
                raise ServiceError(f"{service.name}: {error}") from None
            self._pid_file(service.name).unlink(missing_ok=True)
            if service.after_stop:
                service.after_stop()
            log(f"{service.name}: stopped")

    def status(self) -> list[ServiceStatus]:
        result = []
        for service in self.services():
            record = self._record(service.name)
            process, supervisor = self._running_process(service.name), self._supervisor(service.name)
            if process is not None:
                is_healthy = healthy(service)
                state = "healthy" if is_healthy else "starting/unhealthy"
                if record.get("supervisor") and supervisor is None:
                    state += " (unsupervised)"
            else:
                is_healthy = False
                # A leader gone with its PID file kept was never stopped: it crashed (an orphan answering
                # its health check is not the service).
                kept = record.get("state")
                state = "stopped" if not record else (kept if kept in ("restarting", "stopping") else "crashed")
            result.append(
                ServiceStatus(
                    name=service.name,
                    running=process is not None,
                    healthy=is_healthy,
                    pid=process.pid if process else None,
                    url=self._url(service),
                    state=state,
                    restarts=int(record.get("restarts") or 0),
                    last_exit=record.get("last_exit"),
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

    def _record(self, name: str) -> dict:
        """What the service's supervisor last recorded ({} when nothing runs it)."""
        try:
            record = json.loads(self._pid_file(name).read_text())
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def leader_pids(self, names: Iterable[str]) -> set[int]:
        """The process ids of the named services' leaders that are alive (cheap: no health check)."""
        return {process.pid for name in names if (process := self._running_process(name)) is not None}

    def _running_process(self, name: str) -> psutil.Process | None:
        """The service's leader process, when alive."""
        record = self._record(name)
        return _process(record.get("pid"), record.get("started"))

    def _supervisor(self, name: str) -> psutil.Process | None:
        """The service's supervisor, when alive."""
        record = self._record(name).get("supervisor") or {}
        return _process(record.get("pid"), record.get("started"))

    def _end_leftovers(self, name: str) -> None:
        """End what is left of a service nothing supervises any more (its group outlived its leader)."""
        pgid = self._record(name).get("pgid")
        if pgid:
            with contextlib.suppress(RuntimeError):
                end_processes(group_members(pgid), grace=5.0)
        self._pid_file(name).unlink(missing_ok=True)

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
        pid_file, log_path = self._pid_file(service.name), self.log_file(service.name)
        pid_file.unlink(missing_ok=True)
        hooks = service.after_start or service.after_stop or service.reconcile
        spec = {
            "name": service.name,
            "argv": service.argv,
            "env": {**self.base_env, **service.env},
            "cwd": str(self.settings.home),
            "log": str(log_path),
            "state_file": str(pid_file),
            "stop_signal": int(service.stop_signal),
            "stops_its_children": service.stops_its_children,
            # Where the supervisor finds the hooks again (they are code, not data).
            "manager": f"{type(self).__module__}:{type(self).__qualname__}" if hooks else None,
        }
        spec_file = self.settings.state_dir / f".{service.name}.supervise.json"
        write_private(spec_file, json.dumps(spec))  # the environment holds secrets: never a command line
        env = {
            **self.base_env,
            **self.settings.as_env(),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT / "plugins"), self.base_env.get("PYTHONPATH")])),
        }
        with log_path.open("ab") as log_handle:
            supervisor = subprocess.Popen(
                [sys.executable, "-m", "asgard.local.supervisor", str(spec_file)],
                env=env,
                cwd=self.settings.home,
                stdin=subprocess.DEVNULL,
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                # Detached: it outlives this command, and a Ctrl-C here does not reach it.
                start_new_session=True,
            )
        deadline = time.monotonic() + 30.0
        while not self._record(service.name).get("pid"):
            if supervisor.poll() is not None or time.monotonic() > deadline:
                raise ServiceError(
                    f"{service.name}: its supervisor did not start it; last lines of {log_path}:\n"
                    + self.tail(service.name, 30)
                )
            time.sleep(0.05)
        log(f"{service.name}: started (pid {self._record(service.name)['pid']}), log {log_path}")

    def _wait_healthy(self, service: Service, *, fresh: bool, log: Callable[[str], None]) -> None:
        """Until ``service`` answers its health check; a ``fresh`` start that crashes even once has failed."""
        deadline = time.monotonic() + service.start_timeout
        while time.monotonic() < deadline:
            if healthy(service):
                log(f"{service.name}: healthy at {self._url(service)}")
                return
            gone = self._running_process(service.name) is None and self._supervisor(service.name) is None
            if gone or (fresh and self._record(service.name).get("last_exit")):
                raise ServiceError(
                    f"{service.name}: exited during start-up; last lines of {self.log_file(service.name)}:\n"
                    + self.tail(service.name, 30)
                )
            time.sleep(1.0)
        raise ServiceError(
            f"{service.name}: not healthy after {service.start_timeout:.0f}s at {service.health_url}; "
            f"last lines of {self.log_file(service.name)}:\n" + self.tail(service.name, 30)
        )


def _process(pid: int | None, started: float | None) -> psutil.Process | None:
    """The live, non-zombie process ``pid`` started ``started`` s after boot (a recycled PID is someone else's)."""
    if not pid or started is None:
        return None
    try:
        process = psutil.Process(pid)
        now = started_since_boot(pid)
        if now is None or abs(now - started) > 1.0 or process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def alive(process: psutil.Process) -> bool:
    """``process`` runs and is not a zombie waiting for its parent."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def healthy(service: Service) -> bool:
    """Whether ``service`` answers its health check."""
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


def write_private(path: Path, content: str) -> None:
    """Write a secret-bearing file readable by its owner only, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
    os.replace(tmp, path)
