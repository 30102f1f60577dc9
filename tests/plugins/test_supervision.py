"""Supervision with real processes: a killed service comes back without orphans, and so does serving
after its Docker engine is killed."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import sys
import tarfile
import textwrap
import time

import httpx
import psutil
import pytest

from asgard.core.settings import Settings
from asgard.local.services import Service, ServiceManager
from conftest import TEST_DATA_ROOTS, free_port

# Like `mlflow server`: a leader whose worker (same process group) holds the port.
LEADER_WITH_WORKER = textwrap.dedent(
    """
    import subprocess, sys
    worker = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", sys.argv[1]])
    open(sys.argv[2], "a").write(f"{worker.pid}\\n")
    worker.wait()
    """
)


class WorkerManager(ServiceManager):
    def __init__(self, settings, port, workers_file):
        super().__init__(settings)
        self.port, self.workers_file = port, workers_file

    def services(self):
        return [
            Service(
                name="tiny",
                argv=[sys.executable, "-c", LEADER_WITH_WORKER, str(self.port), str(self.workers_file)],
                health_url=f"http://127.0.0.1:{self.port}/",
                port=self.port,
                start_timeout=20,
                stop_signal=signal.SIGTERM,
            )
        ]


def port_taken(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def supervised_family(manager, name="tiny") -> list[psutil.Process]:
    supervisor = manager._supervisor(name)
    return [supervisor, *supervisor.children(recursive=True)] if supervisor else []


def gone(processes) -> bool:
    return all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in processes)


@pytest.fixture
def worker_manager(tmp_path):
    settings = Settings(home=tmp_path / "home", profile="embedded")
    manager = WorkerManager(settings, free_port(), tmp_path / "workers")
    yield manager
    manager.stop(log=lambda _: None)


def test_killed_leader_is_restarted_without_its_orphan(worker_manager):
    manager = worker_manager
    manager.start(log=lambda _: None)
    (status,) = manager.status()
    first_leader, first_worker = status.pid, int(manager.workers_file.read_text().split()[0])
    leader = psutil.Process(first_leader)
    os.kill(first_leader, signal.SIGKILL)
    killed = time.monotonic()
    while not gone([leader]):  # the kill takes effect (the supervisor has yet to reap it)
        time.sleep(0.01)
    seen = []
    while time.monotonic() - killed < 20:
        (status,) = manager.status()
        seen.append(status.state)
        if status.healthy:
            break
        time.sleep(0.1)
    restarted_in = time.monotonic() - killed
    print(f"restarted and healthy {restarted_in:.1f}s after SIGKILL; states seen: {sorted(set(seen))}")
    # The orphaned worker (still serving) never passes for the service: crashed, then restarting.
    assert seen[0] in ("crashed", "restarting") and "healthy" not in seen[:-1]
    assert status.healthy and status.pid != first_leader and restarted_in < 10
    assert status.restarts == 1 and status.last_exit == "signal SIGKILL"
    assert "(restarts 1, last exit: signal SIGKILL)" in status.describe()
    assert not psutil.pid_exists(first_worker) or psutil.Process(first_worker).status() == psutil.STATUS_ZOMBIE
    second_worker = int(manager.workers_file.read_text().split()[1])
    assert psutil.Process(second_worker).ppid() == status.pid  # the port is the new worker's
    log = manager.tail("tiny")
    assert "exited unexpectedly (signal SIGKILL)" in log and "restarting tiny in 1s (restart 1)" in log
    family = supervised_family(manager)
    assert len(family) == 3  # supervisor, leader, worker
    manager.stop(log=lambda _: None)
    assert gone(family) and not port_taken(manager.port)
    assert manager.status()[0].state == "stopped"


def test_stop_ends_the_group_when_leader_and_supervisor_are_gone(worker_manager):
    manager = worker_manager
    manager.start(log=lambda _: None)
    (status,) = manager.status()
    worker = psutil.Process(int(manager.workers_file.read_text().split()[0]))
    os.kill(manager._supervisor("tiny").pid, signal.SIGKILL)
    os.kill(status.pid, signal.SIGKILL)
    time.sleep(0.5)
    assert port_taken(manager.port) and worker.is_running()  # an orphan holds the port...
    (status,) = manager.status()
    assert status.state == "crashed" and not status.healthy  # ...and is not mistaken for the service
    manager.stop(log=lambda _: None)
    assert gone([worker]) and not port_taken(manager.port)
    manager.start(log=lambda _: None)  # the port is free again: a new start works
    assert manager.status()[0].healthy


def test_a_service_that_keeps_crashing_backs_off(tmp_path):
    settings = Settings(home=tmp_path / "home", profile="embedded")
    port = free_port()
    # Healthy at first, then every later start dies at once: the restarts space out 1 s, 2 s, 4 s...
    script = textwrap.dedent(
        f"""
        import http.server, os, sys, time
        marker = {str(tmp_path / "started")!r}
        if os.path.exists(marker):
            sys.exit(7)
        open(marker, "w").close()
        http.server.HTTPServer(("127.0.0.1", {port}), http.server.SimpleHTTPRequestHandler).serve_forever()
        """
    )
    manager = WorkerManager(settings, port, tmp_path / "unused")
    manager.services = lambda: [
        Service(name="tiny", argv=[sys.executable, "-c", script], health_url=f"http://127.0.0.1:{port}/", port=port)
    ]
    try:
        manager.start(log=lambda _: None)
        os.kill(manager.status()[0].pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while manager.status()[0].restarts < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        (status,) = manager.status()
        assert status.restarts >= 3 and status.last_exit == "exit code 7"
        # Caught between its waits: waiting out the backoff, or just started again and not yet dead.
        assert status.state in ("crashed", "restarting", "starting/unhealthy") and not status.healthy
        delays = [
            line.split(" in ")[1].split("s ")[0] for line in manager.tail("tiny").splitlines() if "restarting" in line
        ]
        assert delays[:3] == ["1", "2", "4"]
    finally:
        manager.stop(log=lambda _: None)
    assert manager._supervisor("tiny") is None and not port_taken(port)


# A stand-in model server: /health and /predict, on the port the deploy target publishes.
FAKE_MODEL = (
    "import http.server, os\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def answer(self):\n"
    "        self.send_response(200); self.send_header('content-length', '2'); self.end_headers()\n"
    "        self.wfile.write(b'{}')\n"
    "    do_GET = do_POST = answer\n"
    "http.server.HTTPServer(('0.0.0.0', int(os.environ['ASGARD_SERVING_PORT'])), H).serve_forever()\n"
)


def test_serving_comes_back_after_the_engine_is_killed(tmp_path):
    import docker

    from asgard.core.settings import LOCAL_BASE_IMAGE
    from asgard.deploy.docker_target import create_serving_container
    from asgard.deploy.routes import RouteTable
    from asgard.local.reconcile import reconcile_serving

    settings = Settings(home=tmp_path / "home", profile="embedded", router_port=free_port(), data_roots=TEST_DATA_ROOTS)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    manager = ServiceManager(settings, base_env=base_env)
    family = []
    try:
        manager.start(["docker", "router"], log=lambda _: None)
        client = docker.APIClient(base_url=settings.docker_url, version="auto")
        context = io.BytesIO()
        with tarfile.open(fileobj=context, mode="w") as tar:
            data = f"FROM {LOCAL_BASE_IMAGE}\nCMD {json.dumps(['python3', '-c', FAKE_MODEL])}\n".encode()
            info = tarfile.TarInfo("Dockerfile")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        context.seek(0)
        list(client.build(fileobj=context, custom_context=True, tag="asgard-test/fake-model:1", rm=True))
        name = "asgard-serving-fake-v1-test"
        container, port = create_serving_container(
            client, name, "asgard-test/fake-model:1", {}, {},
            {"io.asgard.deploy.model": "fake", **RouteTable.for_settings(settings).owner_labels()}, settings=settings,
        )  # fmt: skip
        client.start(container)
        # As the deploy target writes it: the profile's table, its owner stamped on the route.
        RouteTable.for_settings(settings).set(
            "fake", {"upstream": f"http://127.0.0.1:{port}", "version": "1", "image": "asgard-test/fake-model:1",
                     "container": name}
        )  # fmt: skip
        predict = f"{settings.router_url}/models/fake/predict"
        assert wait_for(lambda: httpx.post(predict, json={}, timeout=5).status_code == 200, 120)
        engine = next(s for s in manager.status() if s.name == "docker")
        os.killpg(engine.pid, signal.SIGKILL)  # the engine's whole process group, containerd with it
        killed = time.monotonic()
        # Generous waits: beside the rest of the suite, an engine's start alone took over 30 s.
        assert wait_for(lambda: httpx.post(predict, json={}, timeout=5).status_code == 200, 180)
        back_in = time.monotonic() - killed
        engine = next(s for s in manager.status() if s.name == "docker")
        print(f"/predict answered again {back_in:.1f}s after the engine's group was SIGKILLed")
        assert engine.healthy and engine.restarts == 1
        # The whole log file: the engine's own lines (a few per container event) push a line out of any tail.
        assert "docker exited unexpectedly (signal SIGKILL)" in manager.log_file("docker").read_text(errors="replace")
        # A container stopped for good (as one the engine's restart policy does not bring back) is
        # started again by the supervisor's timer...
        client = docker.APIClient(base_url=settings.docker_url, version="auto")
        client.stop(name, timeout=1)
        stopped = time.monotonic()
        assert wait_for(lambda: httpx.post(predict, json={}, timeout=5).status_code == 200, 180)
        print(f"/predict answered again {time.monotonic() - stopped:.1f}s after its container was stopped")
        # The supervisor logs what it did once its own check of the container answers: a moment after the
        # router's first answer (under load that moment is seconds; it raced this read once).
        engine_log = manager.log_file("docker")
        assert wait_for(lambda: "was exited: started again" in engine_log.read_text(errors="replace"), 60)
        # ...and one that is gone is re-created from its image, its route following the new port.
        client.remove_container(name, force=True)
        (action,) = reconcile_serving(settings, health_timeout=120)
        assert "re-created from asgard-test/fake-model:1, answering" in action
        assert RouteTable.for_settings(settings).routes()["fake"]["upstream"] != f"http://127.0.0.1:{port}"
        assert httpx.post(predict, json={}, timeout=5).status_code == 200
        family = [p for s in ("docker", "router") for p in supervised_family(manager, s)]
    finally:
        manager.stop(log=lambda _: None)
    assert gone(family)


def wait_for(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    return False
