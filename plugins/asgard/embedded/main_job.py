"""The main job: the pipeline on the embedded default, driven through the real Airflow REST API.

Each stage prints its progress and its time; the summary at the end says where to look.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from asgard.embedded.airflow_api import AirflowApi, RunOutcome
from asgard.embedded.services import ServiceManager
from asgard.settings import Settings


class MainJobError(RuntimeError):
    """A stage of the main job failed; the message names the stage and the cause."""


@dataclass
class MainJob:
    settings: Settings
    timings: list[tuple[str, float]] = field(default_factory=list)
    results: dict[str, str] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        print(f"\n==> {name}", flush=True)
        started = time.perf_counter()
        try:
            yield
        except Exception as error:
            raise MainJobError(f"stage '{name}' failed: {error}") from error
        finally:
            self.timings.append((name, time.perf_counter() - started))
        print(f"    done in {self.timings[-1][1]:.1f}s", flush=True)

    def run(self) -> None:
        manager = ServiceManager(self.settings)
        with self.stage("start embedded services"):
            manager.start()
        api = AirflowApi(self.settings.airflow_url, *manager.admin_credentials())

        with self.stage("check the platform (check_platform)"):
            outcome = api.run_and_wait("check_platform", {"checks": ["mlflow", "storage"]}, on_progress=_progress)
            self._require_success(outcome)
            self.results["check_platform run"] = outcome.run_id

        self.print_summary(manager)

    @staticmethod
    def _require_success(outcome: RunOutcome) -> None:
        if outcome.state != "success":
            raise MainJobError(f"{outcome.dag_id} run {outcome.run_id} ended {outcome.state}: {outcome.failure}")

    def print_summary(self, manager: ServiceManager) -> None:
        user, password = manager.admin_credentials()
        print("\n==> summary", flush=True)
        for name, seconds in self.timings:
            print(f"    {name:<45} {seconds:7.1f}s")
        print(f"    {'total':<45} {sum(s for _, s in self.timings):7.1f}s")
        for key, value in self.results.items():
            print(f"    {key}: {value}")
        print(f"    Airflow UI:  {self.settings.airflow_url}  (login {user} / {password})")
        print(f"    MLflow UI:   {self.settings.mlflow_url}")
        print("    Stop everything with: ./asgard stop", flush=True)


def _progress(states: dict[str, str]) -> None:
    print("    " + "  ".join(f"{task}={state}" for task, state in sorted(states.items())), flush=True)
