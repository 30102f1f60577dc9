"""The main job: the pipeline on a profile's services, driven through the real Airflow REST API.

Each stage prints its progress and its time; the summary at the end says where to look.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from asgard.core.settings import Settings
from asgard.core.storage import Location, team_data_roots
from asgard.features import gold
from asgard.features import store as feature_store
from asgard.hooks.airflow_api import AirflowApi, RunOutcome
from asgard.local.airflow_teams import check_memory_pool
from asgard.local.deploy_decisions import approve_drift_deploy, earlier_version, set_deploy_policy
from asgard.local.examples import (
    BY_ID_CUSTOMERS,
    CANARY_DEPLOY,
    CANARY_ROLLOUT,
    CHURN_MODEL_REQUEST,
    EXAMPLE_REQUIREMENTS,
    EXAMPLE_SCRIPT,
    FRAMEWORK_PARAMS,
    PRODUCTION_BATCH_PARTITIONS,
    PRODUCTION_EXAMPLE_REQUIREMENTS,
    SUPPORT_FEATURES_REQUEST,
    every_customer_batch,
    framework_request,
    monitoring_windows,
)
from asgard.local.live_traffic import LiveTraffic, predict
from asgard.local.mlops_client import MlopsClient
from asgard.local.services import ServiceManager
from asgard.local.stages import MainJobError, StageClock, trino_check_line, trino_reads_line
from asgard.local.task_memory import TaskMemory
from sample_data.models import SEED_PREDICTION


@dataclass
class MainJob:
    settings: Settings
    customers: int = 2000
    days: int = 14
    clock: StageClock = field(init=False)
    results: dict[str, str] = field(default_factory=dict)
    # The drifted window's train_model run and its gate decision (the monitoring stage sets it).
    drift_retrain: tuple[str, dict] | None = None
    approve_in_ui: bool = False  # a person decides the drift retrain's deployment in the Airflow UI

    def __post_init__(self) -> None:
        # Each stage's time and the memory this installation's tasks took (sampled here, where its workers run).
        self.clock = StageClock(TaskMemory.of(ServiceManager.for_settings(self.settings)))

    def stage(self, name: str) -> AbstractContextManager[None]:
        return self.clock.stage(name)

    def run(self) -> None:
        manager = ServiceManager.for_settings(self.settings)
        with self.stage(f"start {self.settings.profile} services"):
            manager.start()
            # The main job reads and writes the stores too (the gold layer, feast apply): it gets what
            # the platform's processes get.
            os.environ.update(manager.platform_env())
        api = AirflowApi.login(self.settings.airflow_url, *manager.admin_credentials())

        with self.stage("check the platform (check_platform)"):
            _say(check_memory_pool(api, self.settings))
            names = ["mlflow", "storage", "sandbox", *(["trino"] if self.settings.profile == "production" else [])]
            outcome = api.run_and_wait("check_platform", {"checks": names}, on_progress=_progress)
            self._require_success(outcome)
            self.results["check_platform run"] = outcome.run_id
            if "trino" in names:
                trino = api.task_result("check_platform", outcome.run_id, "run_check", map_index=names.index("trino"))
                _say(trino_check_line(trino))

        with self.stage("generate the sample gold layer"):
            from sample_data.gold_layer import GoldSpec, write_gold_layer

            spec = GoldSpec(customers=self.customers, days=self.days)
            write_gold_layer(spec, gold.GoldLocation.for_settings(self.settings), log=_say)
            self.results["gold layer"] = (
                f"{self.customers} customers x {self.days} days, {spec.start_time:%Y-%m-%d} → {spec.end_time:%Y-%m-%d}"
            )

        with self.stage("apply the feature repo (feast apply)"):
            for line in feature_store.apply_repo(self.settings).splitlines():
                if line.strip():
                    _say(line.strip())

        with self.stage("register features (register_features)"):
            outcome = api.run_and_wait("register_features", SUPPORT_FEATURES_REQUEST, on_progress=_progress)
            self._require_success(outcome)
            self.say_trino_reads(api, outcome.run_id, "register_features", "validate_request")
            self.results["register_features run"] = outcome.run_id

        with self.stage("materialize features (materialize_features)"):
            window = {"start": spec.start_time.isoformat(), "end": spec.end_time.isoformat()}
            outcome = api.run_and_wait("materialize_features", window, on_progress=_progress)
            self._require_success(outcome)
            self.results["materialize_features run"] = outcome.run_id

        with self.stage("train three frameworks; the gate picks the champion (train_model)"):
            # deploy_model is unpaused (a promotion follows its model's policy); until the drift stage,
            # this job deploys the churn model by hand: its promotions are not deployed (policy manual).
            api.wait_for_dag("deploy_model")
            api.unpause("deploy_model")
            set_deploy_policy(self.settings, api, CHURN_MODEL_REQUEST["model_name"], "manual")
            # Side by side, as three data scientists would: the gate takes one model's runs in turn.
            api.wait_for_dag("train_model")
            api.unpause("train_model")
            runs = {
                framework: api.trigger("train_model", framework_request(framework, params))
                for framework, params in FRAMEWORK_PARAMS.items()
            }
            for framework, run_id in runs.items():
                outcome = api.wait_for_run("train_model", run_id, on_progress=_progress)
                self._require_success(outcome)
                decision = api.task_result("train_model", outcome.run_id, "gate_model")
                alias = "champion" if decision["promoted"] else "challenger"
                self.say_trino_reads(api, outcome.run_id, "train_model", "build_training_set")
                self.results[f"model ({framework})"] = (
                    f"{decision['model_name']} v{decision['version']} -> @{alias} "
                    f"({decision['metric']} {decision['score']:.3f}; {decision['reason']})"
                )

        with self.stage("new features retrain the champion (materialize_features -> retrain_model)"):
            self.retrain_on_new_features(api, window)

        with self.stage("upload a script, follow it to serving (./asgard upload)"):
            self.upload_script(api)

        with self.stage("build, push and deploy the champion as a canary (deploy_model)"):
            name = CHURN_MODEL_REQUEST["model_name"]
            # Triggered by hand by the admin (of the model's team): each trigger is the admin's approval.
            # An earlier version serves first, so the champion meets live traffic as a canary.
            earlier = {"model_name": name, "version": earlier_version(self.settings, name), "target": "docker"}
            self._require_success(api.run_and_wait("deploy_model", earlier, timeout=1800, on_progress=_progress))
            request = {"model_name": name, "alias": "champion", **CANARY_DEPLOY}
            with LiveTraffic(f"{self.settings.router_url}/models/{name}/predict") as traffic:
                outcome = api.run_and_wait("deploy_model", request, timeout=1800, on_progress=_progress)
            self._require_success(outcome)
            build = api.task_result("deploy_model", outcome.run_id, "build_image")
            push = api.task_result("deploy_model", outcome.run_id, "push_image")
            deployed = api.task_result("deploy_model", outcome.run_id, "deploy_image")
            self.results["serving image"] = (
                f"{push['reference']} ({build['model_name']} v{build['version']}, {build['flavor']}, "
                f"{'built' if build['built'] else 'reused'})"
            )
            served = predict(deployed["endpoint"], SEED_PREDICTION)
            self.results["model endpoint"] = (
                f"{deployed['endpoint']}/predict serves v{served['model_version']}: "
                f"predictions {served['predictions']}, P(churn) "
                f"{[round(p[1], 3) for p in served['probabilities']]}"
            )
            trial = deployed["trial"] or {}
            figures = (
                f"{trial.get('requests')} requests, {trial.get('errors')} errors, "
                f"p99 {trial.get('p99_ms')} ms vs {trial.get('stable_p99_ms')} ms"
            )
            self.results["canary"] = (
                f"v{deployed['version']} took {trial.get('percent')}% of live traffic beside "
                f"v{deployed['previous_version']}: {trial.get('decision')} ({figures}); callers saw {traffic.summary()}"
            )
            self.predict_by_id(deployed["endpoint"])

        with self.stage("score a batch (score_batch)"):
            production = self.settings.profile == "production"
            output = self.data_root.child("predictions", "batch.parquet")
            entities = self.data_root.child("entities")
            request = every_customer_batch(self.customers, entities, partitions=PRODUCTION_BATCH_PARTITIONS
                                           if production else None)  # fmt: skip
            outcome = api.run_and_wait("score_batch", {**request, "output_path": output.uri}, on_progress=_progress)
            self._require_success(outcome)
            published = api.task_result("score_batch", outcome.run_id, "publish")
            scored = Location(published["output_path"], self.settings.aws_conn_id).read_parquet()
            first = scored.iloc[0]
            self.results["batch predictions"] = (
                f"{published['output_path']}: {published['rows']} rows by {first['model_name']} "
                f"v{first['model_version']}; customer {first['customer_id']} -> {first['prediction']} "
                f"(P(churn) {first['probability_1']:.3f})"
            )
            if production:  # which worker scored which partition: they share no folder
                hosts = api.task_hosts("score_batch", outcome.run_id, "score_partition")
                self.results["batch partitions"] = ", ".join(f"{key} on {host}" for key, host in hosts.items())

        with self.stage("monitor a normal and a drifted window (monitor_model)"):
            # From here on the drift retrain's promotion waits for a person (approve), then rolls out as above.
            set_deploy_policy(self.settings, api, CHURN_MODEL_REQUEST["model_name"], None, CANARY_ROLLOUT)
            self.monitor(api)

        with self.stage("a person approves the drift retrain's deploy (deploy_model approve_deployment)"):
            self.approve_drift_deploy(api)

        self.print_summary(manager)

    def say_trino_reads(self, api: AirflowApi, run_id: str, dag_id: str, task_id: str) -> None:
        if self.settings.profile == "production" and self.settings.offline_store == "trino":
            _say(trino_reads_line(f"{dag_id}.{task_id}", api.task_log(dag_id, run_id, task_id)))

    def retrain_on_new_features(self, api: AirflowApi, window: dict[str, str]) -> None:
        """Materialize the churn model's features again: their Asset events schedule retrain_model,
        which trains the champion again with the conf that trained it, through the gate."""
        from asgard.features.store import feature_view_asset_uri

        view = CHURN_MODEL_REQUEST["data_source"]["feature_views"][0]
        api.unpause("retrain_model")
        try:
            outcome = api.run_and_wait("materialize_features", {**window, "feature_views": [view]})
            self._require_success(outcome)
            retrain_run = api.run_started_by(feature_view_asset_uri(view), outcome.run_id, "retrain_model")
            retrained = api.wait_for_run("retrain_model", retrain_run, timeout=900, on_progress=_progress)
            self._require_success(retrained)
        finally:
            api.pause("retrain_model")  # the later stages train and deploy by hand
        retrain_run, training_run = self._churn_retraining(api, retrain_run)
        decision = api.task_result("train_model", training_run, "gate_model")
        alias = "champion" if decision["promoted"] else "challenger"
        self.results["retrained on new features"] = (
            f"{decision['model_name']} v{decision['version']} -> @{alias} "
            f"(retrain_model {retrain_run} -> train_model {training_run}; {decision['reason']})"
        )

    @staticmethod
    def _churn_retraining(api: AirflowApi, retrain_run: str) -> tuple[str, str]:
        """The retrain_model run that retrained the churn champion, and its train_model run.

        Usually the run these features started. But materialize_features is also scheduled hourly:
        when an hour strikes during this stage, that run's retrain_model run goes first (one at a
        time), trains the champion, and the run these features started rightly finds a version
        newer than them: the retraining to report is the earlier one.
        """
        runs = api.list_run_ids("retrain_model", newest_first=True)
        for run_id in runs[runs.index(retrain_run) :] if retrain_run in runs else [retrain_run]:
            triggers = api.task_result("retrain_model", run_id, "requests") or []
            for trigger in triggers:
                if trigger["conf"]["model_name"] == CHURN_MODEL_REQUEST["model_name"]:
                    return run_id, trigger["trigger_run_id"]
        raise MainJobError(
            f"retrain_model {retrain_run} requested no {CHURN_MODEL_REQUEST['model_name']} training, nor did an "
            "earlier retrain_model run (its requests task log says why)"
        )

    @property
    def data_root(self) -> Location:
        """Where the job's files go: its models' (the default) team's folder of the first data root, on S3 in
        production (the tasks that read them run on other workers)."""
        return Location(team_data_roots(self.settings.default_team, self.settings)[0], self.settings.aws_conn_id)

    def predict_by_id(self, endpoint: str) -> None:
        """The feature-serving path: customer ids in, the image reads their features from the online store."""
        served = predict(endpoint, {"entities": {"customer_id": BY_ID_CUSTOMERS}, "return_probabilities": True})
        self.results["predict by id"] = (
            f"{endpoint}/predict customer_id {BY_ID_CUSTOMERS} -> predictions {served['predictions']}, P(churn) "
            f"{[round(p[1], 3) for p in served['probabilities']]}, features as of {min(served['feature_timestamps'])}"
        )

    def upload_script(self, api: AirflowApi) -> None:
        """The seed's ``upload_and_deploy.py`` as the CLI does it: upload the example script through the
        ``/mlops`` plugin, follow training and the gate, then the deployment the promotion starts."""
        production = self.settings.profile == "production"
        requirements = PRODUCTION_EXAMPLE_REQUIREMENTS if production else EXAMPLE_REQUIREMENTS
        command = [
            sys.executable, "-m", "asgard.local", "upload", str(EXAMPLE_SCRIPT),
            "--model-name", "churn_predictor_feast", "--experiment", "feast_deployment", "--timeout", "900",
            "--env", f"N_CUSTOMERS={self.customers}", "--url", self.settings.airflow_url,
            *[argument for requirement in requirements for argument in ("-r", requirement)],
        ]  # fmt: skip
        # As the seed's flow: the script model's promotion deploys itself (its policy: auto), replacing what
        # served (no callers here for a canary to meet).
        set_deploy_policy(self.settings, api, "churn_predictor_feast", "auto", {"strategy": "replace"})
        lines = _stream(command, env={**os.environ, "ASGARD_API_TOKEN": api.token})
        job_id = next(line.split()[1] for line in lines if line.startswith("job "))
        job = MlopsClient(self.settings.airflow_url, api.token).get(f"/jobs/{job_id}", logs=False)
        if not job["promoted"]:  # a run again: a version no better than the champion leaves it serving
            self.results["script model"] = f"{job['model_name']} v{job['model_version']} -> @challenger (job {job_id})"
            return
        deployment = job["deployment"] or {}
        if not deployment.get("endpoint"):
            version = f"{job['model_name']} v{job['model_version']}"
            raise MainJobError(f"job {job_id}: {version} is not serving after its promotion: {deployment}")
        # The seed's own /predict example: the script trains on exactly its six features.
        answer = predict(deployment["endpoint"], SEED_PREDICTION)
        self.results["script model"] = (
            f"{job['model_name']} v{job['model_version']} -> @champion, serving at {deployment['endpoint']} "
            f"(job {job_id}; predictions {answer['predictions']})"
        )

    def monitor(self, api: AirflowApi) -> None:
        """Two windows of scored customers: one like training (no alert), one drifted (alert and retraining).

        Persistence is one window here so a single drifted window shows the whole path; the daily
        schedule keeps the default (two windows).
        """
        # A day's predictions: one per customer (at least 2,000: the drift tests' power at a small scale).
        windows = self.data_root.child("monitoring", "windows")
        normal, drifted = monitoring_windows(windows, days=self.days, rows=max(2000, self.customers))
        # Rounded up to the second: the batch scored just before (its Asset event) falls in the last window.
        now = (datetime.now(UTC) + timedelta(seconds=1)).replace(microsecond=0)
        checks = {}
        api.unpause("retrain_model")  # as in production: persistent drift retrains the model
        try:
            self._monitor_windows(api, now, normal, drifted, checks)
        finally:
            api.pause("retrain_model")  # a later run of the job starts from the same state
        if checks["normal"]["alerts"] or not checks["drifted"]["alerts"]:
            raise MainJobError(
                f"monitoring: expected no alert on the normal window and an alert on the drifted one, got "
                f"{checks['normal']['alerts']} and {checks['drifted']['alerts']}"
            )

    def _monitor_windows(
        self, api: AirflowApi, now: datetime, normal: Location, drifted: Location, checks: dict
    ) -> None:
        for label, path, start in (
            ("normal", normal, now - timedelta(hours=2)),
            ("drifted", drifted, now - timedelta(hours=1)),
        ):
            request = {
                "model_name": CHURN_MODEL_REQUEST["model_name"],
                "window_start": start.isoformat(),
                "window_end": (start + timedelta(hours=1)).isoformat(),
                "sources": [path.uri],
                "thresholds": {"persistence": 1},
            }
            outcome = api.run_and_wait("monitor_model", request, on_progress=_progress)
            self._require_success(outcome)
            checks[label] = api.task_result("monitor_model", outcome.run_id, "check", map_index=0)
            requests = api.task_result("monitor_model", outcome.run_id, "alert")
            retrained = ""
            if requests:  # wait for it (Asset -> retrain_model -> train_model): a later run finds the model settled
                training_run = requests[0]["train_run_id"]
                trained = api.wait_for_run("train_model", training_run, timeout=900, appear_within=300)
                self._require_success(trained)
                decision = api.task_result("train_model", training_run, "gate_model")
                self.drift_retrain = (training_run, decision)
                retrained = f"; retraining triggered (retrain_model -> {training_run}): v{decision['version']}"
            alerts, window = checks[label]["alerts"], checks[label]["window"]
            self.results[f"monitoring ({label} window)"] = (
                f"{window['rows']} rows, {len(window['batch_outputs'])} score_batch output(s), "
                f"{checks[label]['checks']} checks, "
                f"{len(alerts)} alert(s){': ' + alerts[0] if alerts else ''}{retrained}; "
                f"report {checks[label]['report']}"
            )

    def approve_drift_deploy(self, api: AirflowApi) -> None:
        if self.drift_retrain is None:
            raise MainJobError("the drifted window requested no retraining")
        run, decision = self.drift_retrain
        self.results["serving at the end"] = approve_drift_deploy(self.settings, api, run, decision, self.approve_in_ui)

    @staticmethod
    def _require_success(outcome: RunOutcome) -> None:
        if outcome.state != "success":
            raise MainJobError(f"{outcome.dag_id} run {outcome.run_id} ended {outcome.state}: {outcome.failure}")

    def print_summary(self, manager: ServiceManager) -> None:
        user, _ = manager.admin_credentials()
        print("\n==> summary", flush=True)
        self.clock.close()
        self.clock.print_timings(self.settings.setup_seconds)
        report = self.clock.write(
            self.settings.home, profile=self.settings.profile, customers=self.customers, days=self.days
        )
        print(f"    stage timings and memory: {report}")
        for key, value in self.results.items():
            print(f"    {key}: {value}")
        print(f"    Airflow UI:  {self.settings.airflow_url}  (login {user}; ./asgard status --show-password)")
        print(f"    MLflow UI:   {self.settings.mlflow_url}")
        print("    Stop everything with: ./asgard stop", flush=True)


def _say(line: str) -> None:
    print(f"    {line}", flush=True)


def _stream(command: list[str], env: dict[str, str]) -> list[str]:
    """Run a command, echoing its output as it comes; its lines, or an error with its last lines."""
    lines = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as process:
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            _say(lines[-1])
    if process.returncode != 0:
        tail = "\n".join(lines[-20:])
        raise MainJobError(f"{' '.join(command[2:5])} exited with {process.returncode}:\n{tail}")
    return lines


def _progress(states: dict[str, str]) -> None:
    print("    " + "  ".join(f"{task}={state}" for task, state in sorted(states.items())), flush=True)
