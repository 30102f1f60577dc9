"""The embedded services: start, stop, status and logs of the processes behind the default profile.

Each service is a process group of its own, recorded in a PID file with its start time (so a
recycled PID is never mistaken for ours). ``stop`` signals the whole group and every descendant
it can find, waits, then escalates: a clean stop leaves no orphan processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from asgard.settings import LOCAL_BASE_IMAGE, REPO_ROOT, Settings

ADMIN_USER = "admin"
REGISTRY_USER = "asgard"
BASE_IMAGE_TARBALL = REPO_ROOT / ".cache" / "python-base-bookworm.tar"


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
    # A service answering on a unix socket rather than a TCP port (the Docker engine).
    health_socket: str | None = None


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
        return f"{self.name:<8} {state:<18} {pid:<12} {self.url}"


def venv_bin() -> Path:
    """The bin folder of the interpreter running us: Airflow's components spawn ``airflow`` from PATH."""
    return Path(sys.executable).parent


class ServiceManager:
    """Starts and stops the embedded services of one :class:`Settings`."""

    def __init__(self, settings: Settings, *, base_env: dict[str, str] | None = None) -> None:
        self.settings = settings
        # What the services inherit besides their own settings (the caller's environment by default).
        self.base_env = dict(os.environ if base_env is None else base_env)

    # ----------------------------------------------------------------- definitions
    def services(self) -> list[Service]:
        """The services in start order (Airflow last: its tasks talk to all the others)."""
        return [self._mlflow(), self._docker(), self._registry(), self._router(), self._airflow()]

    def service(self, name: str) -> Service:
        for service in self.services():
            if service.name == name:
                return service
        known = ", ".join(s.name for s in self.services())
        raise ServiceError(f"unknown service {name!r}; known services: {known}")

    def _mlflow(self) -> Service:
        s = self.settings
        return Service(
            name="mlflow",
            argv=[
                str(venv_bin() / "mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{s.mlflow_dir / 'mlflow.db'}",
                # Artifacts go through the server (mlflow-artifacts:/), as they do in production,
                # so clients never need the artifact store's own credentials.
                "--artifacts-destination",
                str(s.mlflow_dir / "artifacts"),
                "--serve-artifacts",
                "--host",
                s.bind_host,
                "--port",
                str(s.mlflow_port),
                "--workers",
                "1",
            ],
            health_url=f"{s.mlflow_url}/health",
            port=s.mlflow_port,
            stop_signal=signal.SIGTERM,
            prepare=lambda: s.mlflow_dir.mkdir(parents=True, exist_ok=True),
        )

    def _docker(self) -> Service:
        """A private Docker engine: its own socket, data and exec roots; host networking left alone."""
        s = self.settings
        socket_path = s.state_dir / "docker.sock"
        exec_root = self.docker_exec_root
        return Service(
            name="docker",
            argv=[
                "dockerd",
                "--host",
                f"unix://{socket_path}",
                "--data-root",
                str(s.home / "docker"),
                "--exec-root",
                str(exec_root),
                "--pidfile",
                str(s.state_dir / "dockerd.pid"),
                # No bridge, no iptables: builds and containers use the host network (loopback).
                "--iptables=false",
                "--ip-forward=false",
                "--bridge=none",
            ],
            health_url="http://docker/_ping",
            health_socket=str(socket_path),
            port=0,
            stop_signal=signal.SIGTERM,
            start_timeout=60.0,
            prepare=lambda: self.settings.state_dir.mkdir(parents=True, exist_ok=True),
            after_start=self._load_base_image,
            after_stop=self._release_docker_mounts,
        )

    @property
    def docker_exec_root(self) -> Path:
        """The engine's runtime folder: short and outside ASGARD_HOME, since containerd's unix sockets
        live in it and a socket path may not exceed 107 bytes; one per home (a hash of its path)."""
        digest = hashlib.sha256(str(self.settings.home).encode()).hexdigest()[:12]
        base = Path("/run") if os.access("/run", os.W_OK) else Path(tempfile.gettempdir())
        return base / f"asgard-docker-{digest}"

    def _release_docker_mounts(self) -> None:
        """Unmount what a stopped engine may leave mounted (its network namespace, overlay layers), so
        ASGARD_HOME can be deleted."""
        roots = (str(self.docker_exec_root), str(self.settings.home / "docker"))
        with open("/proc/self/mounts") as mounts:
            targets = [line.split()[1] for line in mounts if line.split()[1].startswith(roots)]
        for target in sorted(targets, key=len, reverse=True):  # nested mounts first
            subprocess.run(["umount", "-l", target], capture_output=True, check=False)
        shutil.rmtree(self.docker_exec_root, ignore_errors=True)

    def _load_base_image(self) -> None:
        """Import the local serving base (built by ./asgard setup) when the engine does not have it."""
        import docker

        client = docker.APIClient(base_url=self.settings.docker_url, version="auto")
        try:
            client.inspect_image(LOCAL_BASE_IMAGE)
            return
        except docker.errors.ImageNotFound:
            pass
        if not BASE_IMAGE_TARBALL.exists():
            raise ServiceError(f"docker: {BASE_IMAGE_TARBALL} is missing; run ./asgard setup (as root) to build it")
        repository, tag = LOCAL_BASE_IMAGE.split(":")
        client.import_image(
            src=str(BASE_IMAGE_TARBALL),
            repository=repository,
            tag=tag,
            changes=["ENV LANG=C.UTF-8", 'CMD ["python3"]'],
        )

    def _registry(self) -> Service:
        """A local OCI registry (distribution) standing in for ECR, with basic auth like a real one."""
        s = self.settings
        config = s.state_dir / "registry.yml"
        return Service(
            name="registry",
            argv=["docker-registry", "serve", str(config)],
            health_url=f"http://{s.registry_address}/",
            port=s.registry_port,
            stop_signal=signal.SIGTERM,
            start_timeout=30.0,
            prepare=lambda: self._prepare_registry(config),
        )

    def registry_credentials(self) -> tuple[str, str]:
        """The login of the local registry (created on first start)."""
        path = self.settings.state_dir / "registry-secrets.json"
        if not path.exists():
            _write_private(path, json.dumps({"user": REGISTRY_USER, "password": secrets.token_urlsafe(18)}))
        record = json.loads(path.read_text())
        return record["user"], record["password"]

    def _prepare_registry(self, config: Path) -> None:
        s = self.settings
        user, password = self.registry_credentials()
        htpasswd = s.state_dir / "registry.htpasswd"
        # distribution only accepts bcrypt; the password goes through stdin, never the command line.
        result = subprocess.run(["htpasswd", "-niB", user], input=password, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ServiceError(f"registry: htpasswd failed: {result.stderr.strip()} (apt-get install apache2-utils)")
        _write_private(htpasswd, result.stdout)
        storage = s.home / "registry"
        storage.mkdir(parents=True, exist_ok=True)
        _write_private(
            config,
            json.dumps(  # JSON is YAML: no YAML writer needed
                {
                    "version": 0.1,
                    "log": {"level": "warn"},
                    "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
                    "http": {"addr": s.registry_address, "secret": secrets.token_urlsafe(24)},
                    "auth": {"htpasswd": {"realm": "asgard", "path": str(htpasswd)}},
                }
            ),
        )

    def _router(self) -> Service:
        """The stable model endpoint the Docker deploy target switches between containers."""
        s = self.settings
        return Service(
            name="router",
            argv=[sys.executable, "-m", "asgard.embedded.router", str(s.routes_file), s.bind_host, str(s.router_port)],
            health_url=f"{s.router_url}/health",
            port=s.router_port,
            env={"PYTHONPATH": str(REPO_ROOT / "plugins")},
            stop_signal=signal.SIGTERM,
            start_timeout=30.0,
            prepare=lambda: s.state_dir.mkdir(parents=True, exist_ok=True),
        )

    def _airflow(self) -> Service:
        s = self.settings
        return Service(
            name="airflow",
            argv=[str(venv_bin() / "airflow"), "standalone"],
            health_url=f"{s.airflow_url}/api/v2/monitor/health",
            port=s.airflow_port,
            env=self.airflow_env(),
            prepare=self._prepare_airflow,
        )

    def airflow_env(self) -> dict[str, str]:
        """The environment of every Airflow component (and so of every task) in the embedded profile."""
        s = self.settings
        secrets_ = self._airflow_secrets()
        return {
            "AIRFLOW_HOME": str(s.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(s.dags_folder),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(s.plugins_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            # Two cores: a small parallelism keeps idle memory ~1.8 GiB instead of ~5.6 GiB.
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "4",
            "AIRFLOW__API__HOST": s.bind_host,
            "AIRFLOW__API__PORT": str(s.airflow_port),
            "AIRFLOW__API__WORKERS": "1",
            # Workers report task state to the API server: it must follow the configured port.
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{s.airflow_url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.passwords_file),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets_["jwt_secret"],
            "AIRFLOW__API__SECRET_KEY": secrets_["secret_key"],
            # New DAG files show up within seconds, not minutes.
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "15",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
            # The scheduler loop sleeps this long when idle: it is the gap between one task ending and
            # the next starting. One machine, few DAGs: a short sleep costs little CPU.
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.25",
            # Connections of the embedded profile; production sets its own (secrets backend or env).
            "AIRFLOW_CONN_MLFLOW_DEFAULT": json.dumps(
                {"conn_type": "http", "host": s.bind_host, "port": s.mlflow_port, "schema": "http"}
            ),
            "AIRFLOW_CONN_ASGARD_REGISTRY": self.registry_connection(),
            "ASGARD_HOME": str(s.home),
            "ASGARD_PROFILE": s.profile,
            # Where tasks push serving images (the repository is derived from it).
            "ASGARD_REGISTRY_PORT": str(s.registry_port),
            "ASGARD_ROUTER_PORT": str(s.router_port),
            "PATH": f"{venv_bin()}{os.pathsep}{self.base_env.get('PATH', '')}",
        }

    def registry_connection(self) -> str:
        """The Docker connection (basic auth) of the local registry, as an AIRFLOW_CONN_* value."""
        user, password = self.registry_credentials()
        return json.dumps(
            {
                "conn_type": "docker",
                "host": self.settings.bind_host,
                "port": self.settings.registry_port,
                "login": user,
                "password": password,
            }
        )

    @property
    def passwords_file(self) -> Path:
        return self.settings.airflow_home / "simple_auth_manager_passwords.json"

    def admin_credentials(self) -> tuple[str, str]:
        """The UI/API login of the embedded Airflow (created on first start)."""
        if not self.passwords_file.exists():
            raise ServiceError(f"no Airflow login yet: {self.passwords_file} is created by `start`")
        return ADMIN_USER, json.loads(self.passwords_file.read_text())[ADMIN_USER]

    def _prepare_airflow(self) -> None:
        self.settings.airflow_home.mkdir(parents=True, exist_ok=True)
        if not self.passwords_file.exists():
            _write_private(self.passwords_file, json.dumps({ADMIN_USER: secrets.token_urlsafe(12)}))

    def _airflow_secrets(self) -> dict[str, str]:
        path = self.settings.state_dir / "airflow-secrets.json"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_private(
                path, json.dumps({"jwt_secret": secrets.token_urlsafe(32), "secret_key": secrets.token_urlsafe(32)})
            )
        return json.loads(path.read_text())

    # ----------------------------------------------------------------- lifecycle
    def start(self, names: Iterable[str] | None = None, *, log: Callable[[str], None] = print) -> None:
        """Start the named services (all by default) and wait until each is healthy. Idempotent."""
        for service in self._select(names):
            if self._running_process(service.name):
                if _healthy(service):
                    log(f"{service.name}: already running at {self._url(service)}")
                    continue
            else:
                self._launch(service, log=log)
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
            _stop_tree(process, service.stop_signal)
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
        _write_private(self._pid_file(service.name), json.dumps(record))
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


def _stop_tree(process: psutil.Process, first_signal: int, grace: float = 30.0) -> None:
    """Signal the process group, then every descendant still alive; escalate to SIGKILL."""
    try:
        family = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, first_signal)
    # Descendants that left the group (task runners start sessions of their own) get it directly.
    for member in family[1:]:
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


def _write_private(path: Path, content: str) -> None:
    """Write a secret-bearing file readable by its owner only, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
    os.replace(tmp, path)
