"""The README's main command, as a user runs it: ./asgard run, then status, then stop.

The run also survives its services crashing under it (e2e/faults.py): each one is SIGKILLed in turn while
it runs. One run carries both: a second whole main job for the crashes cost CI 13-20 minutes of its
longest stream."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pandas as pd
import pytest

from asgard.hooks.airflow_api import AirflowApi, fetch_token
from asgard.local.processes import alive
from conftest import free_port, team_folder
from e2e.browser import (
    chromium,
    decide_required_action,
    log_in,
    open_required_action,
    open_the_models_page,
    screenshot,
    trigger_with_the_forms_defaults,
)
from e2e.faults import COMPONENTS, KILLS, Faults, Installation, versions_and_their_runs
from e2e.seed_examples import run_the_seed_examples
from e2e.stages import PIPELINE_STAGES, asgard

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


# A full pipeline run with its services crashing, the seed's examples and a stop: the run alone has a 1200 s
# timeout, so the suite-wide 900 s limit would cut the test off while it is still within it.
@pytest.mark.timeout(2400)
def test_main_command_runs_the_pipeline_through_crashes_reports_urls_and_stops_cleanly(tmp_path, machine_to_itself):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        ASGARD_HOME=str(tmp_path),
        ASGARD_AIRFLOW_PORT=str(free_port()),
        ASGARD_MLFLOW_PORT=str(free_port()),
        ASGARD_REGISTRY_PORT=str(free_port()),
        ASGARD_ROUTER_PORT=str(free_port()),
    )
    installation = Installation(env)
    family = []
    try:
        # A person decides the drift retrain's deployment in the Airflow UI, in a real browser; each service
        # is killed in turn in the stages before.
        run, form, faults = run_with_a_person_deciding_in_the_ui(env, installation)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        out = run.stdout
        print("\n".join(faults.findings))
        assert not faults.problems, (faults.problems, out[-4000:])
        assert len(faults.findings) == len(KILLS), faults.findings
        # One version per run that registered one, numbered without a gap: no retried task added a second.
        for name, (versions, runs) in versions_and_their_runs(installation).items():
            assert versions == list(range(1, runs + 1)), (name, versions, runs)
        # Progress and per-stage timings while it runs, then where to look.
        for stage in ("start embedded services", *PIPELINE_STAGES):
            assert f"==> {stage}" in out, stage
        assert "gold layer: 300 customers x 5 days" in out
        # The stack made the memory pool the large-frame tasks take (half of this machine's memory, in GiB).
        assert re.search(r"memory pool asgard_memory: \d+ slots \(GiB\) for the tasks that hold large frames", out)
        assert "materialize=success" in out or "materialize[customer_features]=success" in out
        assert re.search(r"total\s+\d+\.\d+s", out)
        # ... and the memory its tasks took, printed and in main-job.json: training's tasks hold a training set.
        assert re.search(r"train three frameworks.*\s\d+\.\ds\s+\d+ MiB\s+\d+ MiB", out), out[-3000:]
        stages = {stage["name"]: stage for stage in json.loads((tmp_path / "main-job.json").read_text())["stages"]}
        training = stages["train three frameworks; the gate picks the champion (train_model)"]
        assert 100 < training["peak_task_rss_mb"] <= training["peak_tasks_rss_mb"] < training["peak_machine_used_mb"]
        # The seed's upload_and_deploy.py flow: the CLI through the /mlops plugin, the promotion deploying itself.
        router = f"http://127.0.0.1:{env['ASGARD_ROUTER_PORT']}/models/churn_predictor_feast"
        assert re.search(rf"script model: churn_predictor_feast v1 -> @champion, serving at {re.escape(router)} ", out)
        assert "deploy_model.deploy_image: success" in out
        registry = f"127.0.0.1:{env['ASGARD_REGISTRY_PORT']}/asgard/models@sha256:"
        # "reused" when the champion was already deployed in the background: materialize_features runs
        # hourly, so a run that crosses the hour retrains the champion, and its promotion deploys itself.
        image = rf"serving image: {re.escape(registry)}[0-9a-f]{{64}} \(churn_predictor v(\d+), onnx, (built|reused)\)"
        deployed = re.search(image, out)
        assert deployed, out[-3000:]
        # Three frameworks trained side by side (versions in the order they registered), each gated against
        # the champion so far (the gates take turns); the endpoint serves the winner.
        gate = r"model \((sklearn|xgboost|lightgbm)\): churn_predictor v(\d) -> @(champion|challenger)"
        gated = re.findall(gate, out)
        assert [framework for framework, _, _ in gated] == ["sklearn", "xgboost", "lightgbm"], gated
        assert sorted(version for _, version, _ in gated) == ["1", "2", "3"], gated
        assert [alias for _, _, alias in gated].count("champion") >= 1, gated
        champions = {int(version) for _, version, alias in gated if alias == "champion"}
        # Materializing the champion's features again: their Asset events scheduled retrain_model, which
        # trained it again (the request opts in) under the run id it chose, gated against the champion.
        retrained = re.search(
            r"retrained on new features: churn_predictor v4 -> @(champion|challenger) "
            r"\(retrain_model (\S+) -> train_model retrain__churn_predictor__(\S+)__[0-9a-f]{20}; ",
            out,
        )
        assert retrained and retrained.group(2) == retrained.group(3), out[-3000:]
        if retrained.group(1) == "champion":
            champions.add(4)
        # The deploy stage deploys @champion: one of those, or a later retrain's (the hourly materialization).
        assert int(deployed.group(1)) in champions or int(deployed.group(1)) > 4, (deployed.group(0), champions)
        served = deployed.group(1)
        endpoint = f"http://127.0.0.1:{env['ASGARD_ROUTER_PORT']}/models/churn_predictor/predict serves v{served}"
        assert re.search(rf"model endpoint: {re.escape(endpoint)}: predictions \[[01], [01]\]", out)
        # The champion met live traffic as a canary beside an earlier version: promoted, no caller failed.
        canary = re.search(
            rf"canary: v{served} took 20% of live traffic beside v(\d+): promoted \((\d+) requests, 0 errors, "
            r"p99 [\d.]+ ms vs [\d.]+ ms\); callers saw (.*)",
            out,
        )
        assert canary and canary.group(1) != served and int(canary.group(2)) >= 50, out[-3000:]
        statuses = re.findall(r"\d+ x (\S+) from v", canary.group(3))
        assert statuses and set(statuses) == {"200"}, canary.group(0)
        assert f"from v{served}" in canary.group(3) and f"from v{canary.group(1)}" in canary.group(3), canary.group(0)
        by_id = rf"predict by id: {re.escape(endpoint.split(' serves')[0])} customer_id \[1, 2, 3\] -> "
        by_id += r"predictions \[[01], [01], [01]\], P\(churn\) \[[\d., ]+\], features as of 20\d\d-"
        assert re.search(by_id, out), out[-3000:]
        batch = re.search(r"batch predictions: (\S+): 300 rows by churn_predictor v\d+; customer 1 -> [01] ", out)
        assert batch, out[-2000:]
        scored = pd.read_parquet(batch.group(1))  # every customer, in order, with their probabilities
        assert scored["customer_id"].tolist() == list(range(1, 301))
        assert (scored["probability_0"] + scored["probability_1"]).round(9).eq(1).all()
        # Monitoring: the window like training raised nothing; the drifted one alerted and asked for retraining
        # through the retraining Asset, which scheduled retrain_model, which ran train_model under the run id asked.
        # (The windows also hold the rows the serving app logged in them; the drifted one, the last hour, also
        # holds the score_batch output published a few minutes ago, found through its Asset event.)
        normal = re.search(
            r"monitoring \(normal window\): 2\d\d\d rows, 0 score_batch output\(s\), \d+ checks, 0 alert\(s\); "
            r"report (\S+)",
            out,
        )
        assert normal, out[-3000:]
        drifted = re.search(
            r"monitoring \(drifted window\): [2-9]\d\d\d rows, 1 score_batch output\(s\), "
            r"\d+ checks, [1-9]\d* alert\(s\): "
            r".*drift detected.*; "
            r"retraining triggered \(retrain_model -> retrain__churn_predictor__\S+\): v\d+; report (\S+)",
            out,
        )
        assert drifted, out[-3000:]
        # The loop closes: the drift retrain's promotion waited in deploy_model's approval, a person found it on
        # the UI's Required Actions page, read the evidence in its form and approved it there (as the admin), and
        # the stage line names the version serving at the end.
        # Approved, the promotion rolled out as a canary (the promotion strategy's default) beside live callers.
        closed = re.search(
            r"serving at the end: churn_predictor v(\d+) serves at \S+ \(drift retrain v(\d+), approved by admin "
            r"in deploy_model \S+; replaced v\d+; canary of 20% promoted after \d+ requests, 0 errors; callers saw "
            r"[^)]*\)",
            out,
        )
        not_promoted = re.search(r"serving at the end: the drift retrain v\d+ was not promoted", out)
        # A run that crosses the hour: the hourly materialize_features retrained the champion while the drift
        # retrain waited for its person, so the decision refused the older version (the newer one's own
        # deploy_model run decides that one).
        superseded = re.search(
            r"serving at the end: the drift retrain v(\d+) was rejected by admin: superseded: v(\d+) was promoted", out
        )
        assert (
            (closed and closed.group(1) == closed.group(2))
            or not_promoted
            or (superseded and int(superseded.group(2)) > int(superseded.group(1)))
        ), out[-3000:]
        if closed:
            for part in ("The gate", "on the same holdout", "What started it", "a drift alert of monitor_model run",
                         "The rollout plan", "strategy canary"):  # fmt: skip
                assert part in form, (part, form[:3000])
        report = Path(drifted.group(1)).read_text()
        assert "days_since_last_purchase: reference (blue) vs window (orange)" in report
        assert Path(normal.group(1)).is_file()
        assert f"Airflow UI:  http://127.0.0.1:{env['ASGARD_AIRFLOW_PORT']}  (login admin; " in out
        password = json.loads((tmp_path / "airflow" / "simple_auth_manager_passwords.json").read_text())["admin"]
        assert password not in out  # printed only on request
        assert f"MLflow UI:   http://127.0.0.1:{env['ASGARD_MLFLOW_PORT']}" in out

        # The seed's own examples against this stack, then the UI in a real browser.
        airflow = f"http://127.0.0.1:{env['ASGARD_AIRFLOW_PORT']}"
        token = fetch_token(airflow, "admin", password)
        router = f"http://127.0.0.1:{env['ASGARD_ROUTER_PORT']}"
        seed_output = team_folder() / "seed-batch.parquet"  # churn_predictor's team's (default) data root
        run_the_seed_examples(airflow, router, token, seed_output, customers=300)
        # The main job deployed the champion exposing its features; the drift retrain's deploy (a promotion's:
        # no conf) shows none of them.
        serving = f"{router}/models/churn_predictor"
        exposed = not closed
        if superseded:  # the newer champion's own deploy (a promotion's) may have replaced the main job's
            probe = {"entities": {"customer_id": [1]}, "return_features": True}
            exposed = httpx.post(f"{serving}/predict", json=probe, timeout=60).status_code == 200
        the_image_reads_by_id_what_feast_reads(serving, tmp_path, customers=300, exposed=exposed)
        a_user_trains_from_the_form_and_finds_the_champion(airflow, token, password)

        status = asgard("status", env=env, timeout=60)
        assert status.returncode == 0 and password not in status.stdout
        assert password in asgard("status", "--show-password", env=env, timeout=60).stdout
        pids = [int(p) for p in re.findall(r"pid (\d+)", status.stdout)]
        assert len(pids) == 5 and status.stdout.count(" healthy ") == 5, status.stdout
        for service in set(faults.killed) - set(COMPONENTS):  # each crash is on record (Airflow's: in its log)
            line = next(line for line in status.stdout.splitlines() if line.startswith(service))
            assert re.search(r"restarts [1-9]\d*, last exit: signal SIGKILL", line), line
        family = installation.families()

        # Running it again is safe: a second ./asgard run sets up again (this run already did, after the
        # suite's own set-up) and reuses the running services, the same processes, as start does here.
        # (It keeps the gold layer too: tests/plugins/test_features.py. A second whole pipeline run
        # would cost CI another 100 s, mostly repeating what the first run and the seed's examples cover.)
        again = asgard("start", env=env, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        assert again.stdout.count("already running") == len(pids), again.stdout
        assert [int(p) for p in re.findall(r"pid (\d+)", asgard("status", env=env, timeout=60).stdout)] == pids
    finally:
        stop = asgard("stop", env=env, timeout=120)
    assert stop.returncode == 0, stop.stderr
    assert family and not [p.pid for p in family if alive(p)]
    assert "stopped" in asgard("status", env=env, timeout=60).stdout


def run_with_a_person_deciding_in_the_ui(
    env: dict[str, str], installation: Installation
) -> tuple[subprocess.CompletedProcess, str, Faults]:
    """``./asgard run --approve-in-ui`` with each of ``KILLS`` landing in its stage: when the run waits for the
    drift retrain's decision, a person logs in to the Airflow UI, finds the approval on the Required Actions
    page and approves it in its form. The run, what the form showed ("" when the drift retrain was not
    promoted: nothing waited) and what the kills found."""
    import threading

    command = [str(REPO / "asgard"), "run", "--customers", "300", "--days", "5", "--approve-in-ui"]
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    faults = Faults(installation, job_running=lambda: process.poll() is None)
    faults.start()
    errors: list[str] = []
    reader = threading.Thread(target=lambda: errors.extend(process.stderr), daemon=True)
    reader.start()
    lines, form = [], ""
    for line in process.stdout:
        lines.append(line)
        if line.startswith("==> "):
            faults.stage_started(line)
        waiting = re.search(r"waiting for a person to decide '([^']+)' in the Airflow UI", line)
        if waiting:
            airflow = f"http://127.0.0.1:{env['ASGARD_AIRFLOW_PORT']}"
            password = json.loads(
                (Path(env["ASGARD_HOME"]) / "airflow" / "simple_auth_manager_passwords.json").read_text()
            )
            with chromium() as driver:
                log_in(driver, airflow, "admin", password["admin"])
                open_required_action(driver, airflow, waiting.group(1))
                form = decide_required_action(driver, "Approve", "the drift retrain wins on the same holdout")
    process.wait(timeout=120)
    reader.join(timeout=30)
    faults.join()
    return subprocess.CompletedProcess(command, process.returncode, "".join(lines), "".join(errors)), form, faults


def the_image_reads_by_id_what_feast_reads(endpoint: str, home: Path, customers: int, *, exposed: bool) -> None:
    """Every sample customer by id through the stable endpoint: the predictions equal Feast's
    ``get_online_features`` rows sent as features. A deployment that exposes features returns those it
    read (equal to Feast's) and names an id the store does not hold; one that does not refuses
    ``return_features`` and answers that id as any other."""
    import httpx

    from asgard.core.settings import Settings
    from asgard.features import store as feature_store

    ids = list(range(1, customers + 1))
    body = {"entities": {"customer_id": ids}, "return_features": exposed, "return_probabilities": True}
    by_id = httpx.post(f"{endpoint}/predict", json=body, timeout=60)
    assert by_id.status_code == 200, by_id.text
    read = by_id.json()
    names = [column["name"] for column in httpx.get(f"{endpoint}/metadata", timeout=30).json()["signature"]["inputs"]]
    store = feature_store.open_store(Settings(home=home))
    expected = store.get_online_features(
        features=[f"customer_features:{name}" for name in names], entity_rows=[{"customer_id": i} for i in ids]
    ).to_dict()
    features = {name: expected[name] for name in names}
    sent = httpx.post(f"{endpoint}/predict", json={"inputs": features, "return_probabilities": True}, timeout=60)
    assert sent.json()["predictions"] == read["predictions"]
    assert sent.json()["probabilities"] == read["probabilities"]
    unknown = httpx.post(
        f"{endpoint}/predict",
        json={"entities": {"customer_id": [customers + 1]}, "return_probabilities": True},
        timeout=30,
    )
    if exposed:
        assert read["features"] == features
        assert unknown.status_code == 422 and unknown.json()["missing"] == {"customer_id": [customers + 1]}
        return
    assert "features" not in read and "feature_timestamps" not in read
    asked = httpx.post(f"{endpoint}/predict", json={**body, "return_features": True}, timeout=30)
    assert asked.status_code == 403 and "expose_features" in asked.json()["detail"]
    assert unknown.status_code == 200 and set(unknown.json()) == set(read)


def a_user_trains_from_the_form_and_finds_the_champion(airflow: str, token: str, password: str) -> None:
    """Log in, press Trigger on train_model's untouched form, see the run succeed; then the Models
    page inside the UI shows the champion and each feature's drift over time."""
    from selenium.webdriver.common.by import By

    api = AirflowApi(airflow, token)
    before = set(api.list_run_ids("train_model"))
    with chromium() as driver:
        log_in(driver, airflow, "admin", password)
        trigger_with_the_forms_defaults(driver, airflow, "train_model", shows="Trigger Dag")
        deadline = time.monotonic() + 60
        while not (started := set(api.list_run_ids("train_model")) - before) and time.monotonic() < deadline:
            time.sleep(1)
        assert len(started) == 1, started
        run_id = started.pop()
        assert api.runs.get_dag_run("train_model", run_id).conf["model_name"] == "churn_predictor"
        outcome = api.wait_for_run("train_model", run_id, timeout=600)
        assert outcome.state == "success", outcome.failure
        driver.get(f"{airflow}/dags/train_model/runs/{quote(run_id, safe='')}")
        screenshot(driver, "run-grid", page="a train_model run's grid", shows="gate_model")

        heading = open_the_models_page(driver, airflow, "churn_predictor")
        assert heading.text == "churn_predictor"
        assert "@champion" in driver.find_element(By.TAG_NAME, "body").text
        features = {
            line.get_attribute("data-feature")
            for line in driver.find_elements(By.CSS_SELECTOR, "svg.drift-chart polyline.drift-series")
        }
        assert {"days_since_last_purchase", "total_purchases"} <= features, features
        assert driver.find_elements(By.LINK_TEXT, "HTML report") and driver.find_elements(By.LINK_TEXT, "MLflow run")
        screenshot(driver, "models-page", page="a model's page", shows="@champion")
        report = driver.find_element(By.LINK_TEXT, "HTML report").get_attribute("href")
        driver.switch_to.default_content()
        driver.get(report)
        screenshot(driver, "drift-report", page="a monitoring run's drift report", shows="Checks")
