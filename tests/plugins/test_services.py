"""The embedded services manager, with real processes: start, idempotence, status, clean stop."""

from __future__ import annotations

import signal
import socket
import sys
import textwrap

import psutil
import pytest

from asgard.core.settings import Settings
from asgard.local.services import Service, ServiceError, ServiceManager
from conftest import free_port

# A service that, like Airflow, spawns a child which leaves the process group (a task runner).
SERVER = textwrap.dedent(
    """
    import http.server, subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    open(sys.argv[2], "w").write(str(child.pid))
    print("serving", flush=True)
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), http.server.SimpleHTTPRequestHandler).serve_forever()
    """
)


class TinyManager(ServiceManager):
    def __init__(self, settings, argv, port):
        super().__init__(settings)
        self._argv, self._port = argv, port

    def services(self):
        return [
            Service(
                name="tiny",
                argv=self._argv,
                health_url=f"http://127.0.0.1:{self._port}/",
                port=self._port,
                start_timeout=20,
                stop_signal=signal.SIGTERM,
            )
        ]


@pytest.fixture
def settings(tmp_path):
    return Settings(home=tmp_path, profile="embedded", airflow_port=free_port(), mlflow_port=free_port())


def test_start_is_idempotent_and_stop_leaves_no_process(settings, tmp_path):
    port = free_port()
    child_pid_file = tmp_path / "child.pid"
    manager = TinyManager(settings, [sys.executable, "-c", SERVER, str(port), str(child_pid_file)], port)
    try:
        manager.start(log=lambda _: None)
        (status,) = manager.status()
        assert status.running and status.healthy
        first_pid = status.pid
        supervisor = manager._supervisor("tiny")  # the long-lived keeper that restarts it on a crash
        assert supervisor is not None and first_pid in [child.pid for child in supervisor.children()]
        manager.start(log=lambda _: None)  # second start: nothing new
        assert manager.status()[0].pid == first_pid
        child_pid = int(child_pid_file.read_text())
        assert psutil.pid_exists(child_pid)
        assert "serving" in manager.tail("tiny")
    finally:
        manager.stop(log=lambda _: None)
    assert not psutil.pid_exists(first_pid)
    assert not supervisor.is_running() or supervisor.status() == psutil.STATUS_ZOMBIE
    assert not psutil.pid_exists(child_pid) or psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE
    (status,) = manager.status()
    assert not status.running and status.pid is None
    manager.stop(log=lambda _: None)  # stopping twice is fine


def test_a_wall_clock_step_leaves_running_services_running(settings, tmp_path, monkeypatch):
    # The kernel's boot time (/proc/stat btime) is the wall clock minus the uptime: a VM's time sync that
    # steps the clock moves it, and with it every process's create_time(). Services are not crashed by it.
    import psutil._pslinux as linux

    port = free_port()
    manager = TinyManager(settings, [sys.executable, "-c", SERVER, str(port), str(tmp_path / "child.pid")], port)
    try:
        manager.start(log=lambda _: None)
        pid = manager.status()[0].pid
        before, stepped = psutil.Process(pid).create_time(), linux.boot_time() + 90.0
        monkeypatch.setattr(linux, "boot_time", lambda: stepped)
        assert psutil.Process(pid).create_time() == pytest.approx(before + 90.0)  # what the step does
        (status,) = manager.status()
        assert (status.state, status.pid) == ("healthy", pid), status
    finally:
        monkeypatch.undo()
        manager.stop(log=lambda _: None)


def test_taken_port_is_named(settings):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        manager = TinyManager(settings, [sys.executable, "-c", "pass"], port)
        with pytest.raises(ServiceError, match=f"port {port}"):
            manager.start(log=lambda _: None)


def test_crash_at_start_reports_the_log(settings):
    port = free_port()
    argv = [sys.executable, "-c", "import sys; print('bad config: missing thing'); sys.exit(3)"]
    manager = TinyManager(settings, argv, port)
    with pytest.raises(ServiceError, match="exited during start-up") as error:
        manager.start(log=lambda _: None)
    assert "bad config: missing thing" in str(error.value)


def test_recycled_pid_is_not_ours(settings):
    manager = TinyManager(settings, [sys.executable], free_port())
    settings.state_dir.mkdir(parents=True)
    # A PID file pointing at a live process that we did not start (our own test process).
    (settings.state_dir / "tiny.pid").write_text(f'{{"pid": {psutil.Process().pid}, "started": 1.0}}')
    assert manager.status()[0].running is False


def test_unknown_service_is_named(settings):
    with pytest.raises(ServiceError, match="unknown service 'nope'"):
        ServiceManager(settings).start(["nope"])


def test_airflow_env_points_at_the_configured_ports(settings):
    env = ServiceManager(settings).airflow_env()
    assert env["AIRFLOW__API__PORT"] == str(settings.airflow_port)
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == f"{settings.airflow_url}/execution/"
    assert f'"port": {settings.mlflow_port}' in env["AIRFLOW_CONN_MLFLOW_DEFAULT"]
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    # The API server's /mlops routes call back into Airflow, and tasks reach every service: they
    # read the same settings (not the defaults) from the environment.
    inherited = {"ASGARD_AIRFLOW_PORT": "airflow_port", "ASGARD_MLFLOW_PORT": "mlflow_port", "ASGARD_HOME": "home"}
    assert {name: env[name] for name in inherited} == {
        name: str(getattr(settings, field)) for name, field in inherited.items()
    }
    # Secrets are generated once and kept, never the same across installs.
    again = ServiceManager(settings).airflow_env()
    assert again["AIRFLOW__API_AUTH__JWT_SECRET"] == env["AIRFLOW__API_AUTH__JWT_SECRET"]
    assert len(env["AIRFLOW__API_AUTH__JWT_SECRET"]) >= 32
    assert (settings.state_dir / "airflow-secrets.json").stat().st_mode & 0o077 == 0
