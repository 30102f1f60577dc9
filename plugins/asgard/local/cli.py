"""``./asgard upload | train | score | monitor | job | models | history | deploy | materialize | features
| gold``: a client of the ``/mlops`` and ``/feast`` APIs.

It replaces the seed's ``upload_and_deploy.py``: upload a training script, then follow the job's
tasks, the model version it made and, when the gate promotes it, the deployment that promotion
starts, until the model serves. Everything goes through the REST plugin (``deploy``: Airflow's REST
API) with Airflow's token, so the CLI works against any Asgard installation it can reach. Answers
are printed as short tables (``asgard.local.summaries``); ``--json`` prints the API's answer as it is.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

from asgard.core.settings import Settings
from asgard.hooks.airflow_api import fetch_token
from asgard.local import summaries
from asgard.local.cli_parser import TRIAL_LIMITS, add_commands
from asgard.local.mlops_client import CliError, MlopsClient

# add_commands is ./asgard's parser of these commands (asgard.local.__main__ takes it from here).
__all__ = ["COMMANDS", "CliError", "MlopsClient", "add_commands", "client_for", "follow", "run"]

DONE = ("completed", "failed")


def upload_request(
    script: Path,
    *,
    model_name: str,
    experiment_name: str,
    requirements: list[str],
    timeout: int,
    env_vars: dict[str, str],
    use_feast: bool,
    secret_env_vars: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The seed's ``POST /mlops/training/upload`` body for a script file."""
    if not script.is_file():
        raise CliError(f"{script}: no such file")
    return {
        "script_name": script.name,
        "script_content": base64.b64encode(script.read_bytes()).decode("ascii"),
        "experiment_name": experiment_name,
        "model_name": model_name,
        "requirements": requirements,
        "timeout": timeout,
        "env_vars": env_vars,
        **({"secret_env_vars": secret_env_vars} if secret_env_vars else {}),
        "use_feast": use_feast,
    }


@dataclass
class Progress:
    """Prints what changed in a job since the last look: one line per change, fit for a terminal or a log."""

    out: TextIO
    started: float

    def __post_init__(self) -> None:
        self._seen: dict[str, str] = {}

    def show(self, prefix: str, states: dict[str, str]) -> None:
        for task, state in states.items():
            key = f"{prefix}{task}"
            if self._seen.get(key) != state:
                self._seen[key] = state
                self.say(f"{key}: {state}")

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.0f}s] {text}", file=self.out, flush=True)


def follow(
    client: MlopsClient,
    job_id: str,
    *,
    out: TextIO = sys.stdout,
    deploy: bool = True,
    timeout: float = 3600.0,
    poll: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll a job until it ends and, for a promoted model, its deployment until the model serves."""
    progress = Progress(out, time.monotonic())
    deadline = time.monotonic() + timeout
    look = _patient(client, f"/jobs/{job_id}", sleep=sleep, poll=poll)
    while True:
        job = look()
        progress.show("", job["tasks"])
        if job["status"] in DONE:
            break
        if time.monotonic() > deadline:
            raise CliError(f"job {job_id} still {job['status']} after {timeout:.0f}s")
        sleep(poll)
    if job["status"] == "failed":
        raise CliError(failure_message(job, client.get(f"/jobs/{job_id}")["logs"]))
    if job.get("model_version"):
        alias = "@champion" if job["promoted"] else "@challenger"
        progress.say(f"model {job['model_name']} v{job['model_version']} -> {alias}")
    if deploy and job.get("promoted") and client.get("/status")["dags"]["deploy_model"]["paused"]:
        progress.say("deploy_model is paused, so promotions are not deployed: unpause it, or deploy by hand")
        return job
    while deploy and job.get("promoted"):
        deployment = job.get("deployment") or {}
        progress.show("deploy_model.", deployment.get("tasks") or {})
        if deployment.get("status") == "completed":
            progress.say(f"serving {job['model_name']} v{job['model_version']} at {deployment['endpoint']}")
            break
        if deployment.get("status") == "failed":
            raise CliError(f"deployment {deployment['run_id']} failed: the previous version keeps serving")
        if time.monotonic() > deadline:
            raise CliError(f"deployment still {deployment.get('status')} after {timeout:.0f}s: {deployment}")
        sleep(poll)
        job = look()
    return job


def failure_message(job: dict[str, Any], logs: str) -> str:
    """Why a job failed: the task that failed first, its exception, then the end of the job's logs."""
    error = job.get("error") or {}
    failed = [task for task, state in job["tasks"].items() if state == "failed"]  # not the ones after them
    task = error.get("task") or ", ".join(failed) or "an unknown task"
    message = error.get("message", "")
    return f"job {job['job_id']} failed in {task}:\n{message}\n--- the end of its logs ---\n{_tail(logs)}"


def _patient(client: MlopsClient, path: str, *, sleep: Callable[[float], None], poll: float, tries: int = 5):
    """A status look-up that rides out a few server errors in a row (an API server restarting)."""

    def look() -> dict[str, Any]:
        attempt = 1
        while True:
            try:
                return client.get(path, logs=False)
            except CliError as error:
                if (error.status or 0) < 500 or attempt >= tries:
                    raise
            attempt += 1
            sleep(poll)

    return look


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------- command line
COMMANDS = ("upload", "train", "score", "monitor", "job", "models", "history", "deploy", "approve", "reject",
            "materialize", "features", "gold")  # fmt: skip
_SUBMIT_PATHS = {"train": "/models", "score": "/serve/batch", "monitor": "/monitoring/run"}
# An upload's body is the file itself: at most the API's body limit (asgard.api.security.MAX_BODY_BYTES).
UPLOAD_LIMIT = 2_000_000


def run(args: argparse.Namespace, client: MlopsClient, out: TextIO | None = None) -> int:
    """Carry out one client command, printing to ``out`` (default: standard output as it is now)."""
    out = out or sys.stdout
    as_json = getattr(args, "json", False)

    def show(answer: Any, summary: Callable[[Any], str]) -> None:
        print(json.dumps(answer, indent=2, default=str) if as_json else summary(answer), file=out, flush=True)

    if args.command == "upload":
        env_vars = dict(_key_value(item) for item in args.env)
        body = upload_request(
            args.script,
            model_name=args.model_name,
            experiment_name=args.experiment,
            requirements=args.requirement,
            timeout=args.timeout,
            env_vars=env_vars,
            use_feast=not args.no_feast,
            secret_env_vars=dict(_key_value(item) for item in args.secret),
        )
        job = client.post("/training/upload", body)
        print(f"job {job['job_id']} ({job['status_url']})", file=out, flush=True)
        if not args.no_follow:
            follow(client, job["job_id"], out=out)
    elif args.command in _SUBMIT_PATHS:
        job = client.post(_SUBMIT_PATHS[args.command], _read_json(args.request))
        _submitted(client, job, args, out, show)
    elif args.command == "job":
        if args.run_id:
            job = client.get(f"/runs/{quote(args.job_id, safe='')}/{quote(args.run_id, safe='')}", logs=args.logs)
        elif "--" in args.job_id:
            job = client.get(f"/jobs/{quote(args.job_id, safe='')}", logs=args.logs)
        else:
            raise CliError(f"{args.job_id!r} is not a job id (<dag_id>--<hex>): give DAG_ID RUN_ID for any other run")
        if args.logs:
            print(job.pop("logs"), file=out)
        else:
            show(job, summaries.job)
    elif args.command == "models":
        if args.model_name:
            show(client.get(f"/models/{quote(args.model_name, safe='')}"), summaries.model)
        else:
            show(client.get("/models"), summaries.models)
    elif args.command == "history":
        body = {"model_name": args.model_name, "limit": args.limit}
        body.update({k: v for k, v in (("model_version", args.version), ("metric_type", args.metric_type)) if v})
        show(client.post("/monitoring/history", body), summaries.history)
    elif args.command == "deploy":
        _submitted(client, deploy(client, args), args, out, show)
    elif args.command in ("approve", "reject"):
        show(decide(client, args), summaries.decision)
    elif args.command == "materialize":
        conf = {k: v for k, v in (("feature_views", args.feature_views), ("start", args.start), ("end", args.end)) if v}
        _submitted(client, client.feast("POST", "/materialize", json=conf), args, out, show)
    elif args.command == "features":
        _submitted(client, client.feast("POST", "/features", json=_read_json(args.request)), args, out, show)
    elif args.command == "gold" and args.gold_command == "tables":
        show(client.feast("GET", "/gold"), lambda answer: "\n".join(answer["tables"]) or "(no tables)")
    elif args.command == "gold":
        show(gold_load(client, args), summaries.gold_load)
    return 0


def deploy(client: MlopsClient, args: argparse.Namespace) -> dict[str, Any]:
    """Start a ``deploy_model`` run through Airflow's REST API, named as a job so ``/mlops/jobs`` follows it.

    A paused ``deploy_model`` would leave the run queued: that is refused unless ``--unpause`` says to
    unpause it (which also lets every promotion deploy itself).
    """
    api = client.airflow()
    conf: dict[str, Any] = {"model_name": args.model_name, "strategy": args.strategy, "target": args.target}
    conf.update({k: v for k, v in (("version", args.version), ("alias", args.alias), ("percent", args.percent)) if v})
    conf.update({limit: getattr(args, limit) for limit in TRIAL_LIMITS if getattr(args, limit) is not None})
    if api.dag_state("deploy_model")["paused"]:
        if not args.unpause:
            raise CliError(
                "deploy_model is paused, so this run would wait: add --unpause to unpause it (promotions then "
                "deploy themselves too), or unpause it in the Airflow UI"
            )
        api.unpause("deploy_model")
    run_id = api.trigger("deploy_model", conf, run_id=f"deploy_model--{uuid.uuid4().hex[:16]}")
    return {"job_id": run_id, "dag_id": "deploy_model", "run_id": run_id, "status": "queued",
            "status_url": f"{client.base_url}/mlops/jobs/{run_id}"}  # fmt: skip


def decide(client: MlopsClient, args: argparse.Namespace) -> dict[str, Any]:
    """Approve or reject, as the client's user, the deploy_model run waiting for the version (Airflow's HITL API)."""
    from asgard.hooks import airflow_hitl as approval

    try:
        run_id = approval.waiting_run(client.base_url, client.token, args.model_name, args.version)
        answer = approval.respond(
            client.base_url, client.token, run_id, approve=args.command == "approve", reason=args.reason
        )
    except approval.ApprovalError as error:
        raise CliError(str(error), error.status) from None
    return {"model_name": args.model_name, "version": args.version, "run_id": run_id, **answer}


def gold_load(client: MlopsClient, args: argparse.Namespace) -> dict[str, Any]:
    """Send the file as the body when it fits the API's limit; else name it, for the server to read
    (a path under its data roots: this install's own, or an ``s3://`` URI)."""
    table = quote(args.table, safe="")
    query = {"entity_column": args.entity, "timestamp_column": args.timestamp, "mode": args.mode}
    if args.team:
        query["team"] = args.team
    local = Path(args.file)
    if not args.file.startswith("s3://") and local.is_file() and local.stat().st_size <= UPLOAD_LIMIT:
        fmt = args.format or _suffix_format(local)
        content = "text/csv" if fmt == "csv" else "application/octet-stream"
        return client.feast(
            "POST", f"/gold/{table}", params={**query, "format": fmt}, content=local.read_bytes(),
            headers={"Content-Type": content},
        )  # fmt: skip
    if not args.file.startswith("s3://") and not local.is_file():
        raise CliError(f"{args.file}: no such file")
    path = args.file if args.file.startswith("s3://") else str(local.resolve())
    body = {**query, "path": path, **({"format": args.format} if args.format else {})}
    return client.feast("POST", f"/gold/{table}/from-path", json=body)


def _suffix_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise CliError(f"{path}: cannot tell csv from parquet by its name: give --format")


def _submitted(client: MlopsClient, job: dict[str, Any], args: argparse.Namespace, out: TextIO, show) -> None:
    """A started job: its id and where to look; followed to its end unless ``--no-follow``."""
    print(f"job {job['job_id']} ({job['status_url']})", file=out, flush=True)
    if args.no_follow:
        return
    show(follow(client, job["job_id"], out=out, deploy=False), summaries.job)


def client_for(args: argparse.Namespace, settings: Settings, credentials: Callable[[], tuple[str, str]]) -> MlopsClient:
    """A client for ``--url`` (or ``ASGARD_API_URL``, else the local install) with a token:
    ``ASGARD_API_TOKEN``, else a login as ``ASGARD_API_USERNAME``/``ASGARD_API_PASSWORD``, else as
    the local install's admin."""
    url = (args.url or settings.api_url or settings.airflow_url).rstrip("/")
    if settings.api_token:
        return MlopsClient(url, settings.api_token.get_secret_value())
    if settings.api_username and settings.api_password:
        user, password = settings.api_username, settings.api_password.get_secret_value()
    elif url == settings.airflow_url:
        user, password = credentials()  # this install's own admin, only ever sent to this install
    else:
        raise CliError(
            f"{url} is not this install's Airflow: give ASGARD_API_TOKEN, or ASGARD_API_USERNAME and "
            "ASGARD_API_PASSWORD (this install's admin password is never sent elsewhere)"
        )
    return MlopsClient(url, fetch_token(url, user, password))


def _key_value(item: str) -> tuple[str, str]:
    key, separator, value = item.partition("=")
    if not separator or not key:
        raise CliError(f"--env {item!r}: expected KEY=VALUE")
    return key, value


def _read_json(source: str) -> dict[str, Any]:
    text = sys.stdin.read() if source == "-" else Path(source).read_text()
    try:
        body = json.loads(text)
    except ValueError as error:
        raise CliError(f"{source}: not JSON ({error})") from error
    if not isinstance(body, dict):
        raise CliError(f"{source}: expected a JSON object")
    return body
