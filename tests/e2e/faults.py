"""Service crashes in the middle of the main job (tests/e2e/test_main_job.py runs it with them): each
service's whole process group is SIGKILLed in turn while ``./asgard run`` runs (MLflow, Airflow's scheduler,
the router, Airflow's API server, the registry, the Docker engine), as a lost process would end it.

Every time the supervisor must start the service again and ``/predict`` answer again within 30 s of the
restart for every model the router serves; the main job must go on, each model have exactly one version per
run that registered one (a retried task added none), and ``./asgard stop`` leave no process behind.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import NamedTuple

import httpx
import psutil

from sample_data.models import SEED_PREDICTION

# The Airflow components (children of the airflow service, each a process group of its own) by the
# words of their command lines.
COMPONENTS = {"scheduler": "scheduler", "api-server": "api_server"}
RESTART_WITHIN = 180  # seconds for a killed service to be healthy again, on cores the other streams share
PREDICT_WITHIN = 30  # seconds after the restart for /predict to answer again


class Kill(NamedTuple):
    stage: str  # the main job's stage line it waits for
    after: float  # seconds into that stage
    service: str


# Each lands in a stage that uses the service or runs beside it: a task of it in flight, or its stores.
KILLS = (
    Kill("materialize features", 2, "mlflow"),
    Kill("train three frameworks", 15, "scheduler"),
    Kill("new features retrain the champion", 5, "router"),
    Kill("upload a script", 25, "api-server"),
    Kill("build, push and deploy the champion", 8, "registry"),
    Kill("score a batch", 3, "docker"),
)


class Installation:
    """The test's own installation: its settings, its services' state and the router's models."""

    def __init__(self, env: dict[str, str]) -> None:
        from asgard.core.settings import Settings
        from asgard.local.services import ServiceManager

        settings = {
            name.removeprefix("ASGARD_").lower(): value for name, value in env.items() if name.startswith("ASGARD_")
        }
        self.settings = Settings(**settings)
        self.manager = ServiceManager(self.settings, base_env=env)

    def leader(self, service: str) -> psutil.Process | None:
        """The process (its group's leader) of ``service``: a supervised one, or an Airflow component."""
        statuses = {status.name: status for status in self.manager.status()}
        if service in COMPONENTS:
            airflow = statuses["airflow"]
            if not airflow.pid:
                return None
            for child in psutil.Process(airflow.pid).children():
                try:
                    if COMPONENTS[service] in " ".join(child.cmdline()).replace("-", "_"):
                        return child
                except psutil.NoSuchProcess:
                    continue
            return None
        status = statuses[service]
        return psutil.Process(status.pid) if status.healthy and status.pid else None

    def routed_models(self) -> list[str]:
        from asgard.deploy.routes import RouteTable

        return sorted(RouteTable.for_settings(self.settings).routes())

    def families(self) -> list[psutil.Process]:
        """Every process of the installation: each service's supervisor and all it started (it is their
        subreaper, so a crashed service's orphans are among them)."""
        processes = []
        for status in self.manager.status():
            if status.pid and psutil.pid_exists(status.pid):
                supervisor = psutil.Process(status.pid).parent()
                processes += [supervisor, *supervisor.children(recursive=True)]
        return processes


class Faults:
    """Kills each service of ``KILLS`` when its stage comes, one after the other, and checks it comes back."""

    def __init__(self, installation: Installation, job_running) -> None:
        self.installation = installation
        self.job_running = job_running  # () -> bool: the main job has not ended
        self.stages: dict[str, float] = {}
        self._lock = threading.Lock()
        self.findings: list[str] = []
        self.problems: list[str] = []
        self.killed: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def stage_started(self, line: str) -> None:
        with self._lock:
            self.stages.setdefault(line, time.monotonic())

    def _stage(self, name: str) -> float | None:
        with self._lock:
            return next((started for line, started in self.stages.items() if name in line), None)

    def _current_stage(self) -> str:
        with self._lock:
            return list(self.stages)[-1].removeprefix("==> ").strip()

    def _run(self) -> None:
        try:
            for kill in KILLS:
                self._kill_and_follow(kill)
        except Exception as error:  # reported by the test, not lost in a thread
            self.problems.append(f"{type(error).__name__}: {error}")

    def _kill_and_follow(self, kill: Kill) -> None:
        while (started := self._stage(kill.stage)) is None:
            time.sleep(0.2)
        time.sleep(max(0.0, started + kill.after - time.monotonic()))
        victim = self.installation.leader(kill.service)
        if victim is None or not self.job_running():
            self.problems.append(f"{kill.service}: not running, or the main job over, when its kill was due")
            return
        os.killpg(victim.pid, signal.SIGKILL)
        killed, during = time.monotonic(), self._current_stage()
        while (back := self.installation.leader(kill.service)) is None or back.pid == victim.pid:
            if time.monotonic() - killed > RESTART_WITHIN:
                self.problems.append(f"{kill.service}: not running again {RESTART_WITHIN} s after SIGKILL")
                return
            time.sleep(0.5)
        restarted = time.monotonic()
        models = self.installation.routed_models()
        for model in models:
            url = f"{self.installation.settings.router_url}/models/{model}/predict"
            while not _answers(url):
                if time.monotonic() - restarted > PREDICT_WITHIN:
                    self.problems.append(f"{kill.service}: {url} not answering {PREDICT_WITHIN} s after the restart")
                    return
                time.sleep(0.5)
        self.killed.append(kill.service)
        self.findings.append(
            f"{kill.service} (pid {victim.pid}) killed in '{during}': running again in "
            f"{restarted - killed:.1f} s, /predict of {models or 'no model yet'} answering "
            f"{time.monotonic() - restarted:.1f} s after that"
        )

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join(timeout=RESTART_WITHIN + PREDICT_WITHIN + 60)


def _answers(url: str) -> bool:
    try:
        return httpx.post(url, json=SEED_PREDICTION, timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def versions_and_their_runs(installation: Installation) -> dict[str, tuple[list[int], int]]:
    """Each registered model's version numbers, and how many DAG runs registered a version of it."""
    from mlflow import MlflowClient

    from asgard.hooks.airflow_api import AirflowApi

    api = AirflowApi.login(installation.settings.airflow_url, *installation.manager.admin_credentials())
    client = MlflowClient(tracking_uri=installation.settings.mlflow_url)
    registered: dict[str, tuple[list[int], int]] = {}
    for model in client.search_registered_models():
        versions = client.search_model_versions(f"name = '{model.name}'")
        runs = {version.run_id for version in versions}
        assert len(runs) == len(versions), f"{model.name}: two versions of one MLflow run"
        registered[model.name] = (sorted(int(version.version) for version in versions), 0)
    for dag_id in ("train_model", "train_script"):  # retrain_model's runs are train_model runs
        for run_id in api.list_run_ids(dag_id):
            if api.task_states(dag_id, run_id).get("register_model") == "success":
                name = api.run_conf(dag_id, run_id)["model_name"]
                versions, count = registered.get(name, ([], 0))
                registered[name] = (versions, count + 1)
    return registered
