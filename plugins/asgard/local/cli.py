"""``./asgard upload | train | score | monitor | job | models | history``: a client of the ``/mlops`` API.

It replaces the seed's ``upload_and_deploy.py``: upload a training script, then follow the job's
tasks, the model version it made and, when the gate promotes it, the deployment that promotion
starts, until the model serves. Everything goes through the REST plugin with Airflow's token, so
the CLI works against any Asgard installation it can reach.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx

from asgard.core.settings import Settings
from asgard.hooks.airflow_api import fetch_token

DONE = ("completed", "failed")


class CliError(RuntimeError):
    """The API refused a request or a job failed; the message says why."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class MlopsClient:
    """The ``/mlops`` API of one Airflow API server, with a token."""

    def __init__(self, base_url: str, token: str, *, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=f"{self.base_url}/mlops", headers={"Authorization": f"Bearer {token}"}, timeout=timeout
        )

    def get(self, path: str, **params: Any) -> Any:
        return self._answer(self._send("GET", path, params=params))

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._answer(self._send("POST", path, json=body))

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise CliError(f"cannot reach {self.base_url}: {error}") from error

    @staticmethod
    def _answer(response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text
            status, request = response.status_code, response.request
            raise CliError(f"{request.method} {request.url.path}: {status} {detail}", status)
        return response.json()


def upload_request(
    script: Path,
    *,
    model_name: str,
    experiment_name: str,
    requirements: list[str],
    timeout: int,
    env_vars: dict[str, str],
    use_feast: bool,
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
def add_commands(commands: Any) -> None:
    """The client's sub-commands, on ``./asgard``'s parser."""
    upload = commands.add_parser("upload", help="upload a training script and follow it to deployment")
    upload.add_argument("script", type=Path)
    upload.add_argument("--model-name", required=True)
    upload.add_argument("--experiment", required=True, help="MLflow experiment name")
    upload.add_argument("--requirement", "-r", action="append", default=[], help="pip requirement (repeatable)")
    upload.add_argument("--timeout", type=int, default=600, help="seconds the script may run")
    upload.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="script variable")
    upload.add_argument("--no-feast", action="store_true", help="the script does not read Feast")
    upload.add_argument("--no-follow", action="store_true", help="print the job id and return")
    for name, help_text in (
        ("train", "train a model (the seed's POST /mlops/models body, from a JSON file)"),
        ("score", "score a batch (the seed's POST /mlops/serve/batch body, from a JSON file)"),
        ("monitor", "monitor a model now (monitor_model conf, from a JSON file; '{}' for every serving model)"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("request", help="a JSON file, or - for standard input")
        command.add_argument("--no-follow", action="store_true")
    job = commands.add_parser("job", help="show a job (status, tasks, result; --logs for its logs)")
    job.add_argument("job_id")
    job.add_argument("--logs", action="store_true")
    models = commands.add_parser("models", help="list registered models, or show one")
    models.add_argument("model_name", nargs="?")
    history = commands.add_parser("history", help="monitoring history of a model")
    history.add_argument("model_name")
    history.add_argument("--version")
    history.add_argument("--metric-type")
    history.add_argument("--limit", type=int, default=20)
    for command in (upload, job, models, history, *[commands.choices[n] for n in ("train", "score", "monitor")]):
        command.add_argument("--url", help="Airflow API server URL (default: ASGARD_API_URL, else this install)")


COMMANDS = ("upload", "train", "score", "monitor", "job", "models", "history")
_SUBMIT_PATHS = {"train": "/models", "score": "/serve/batch", "monitor": "/monitoring/run"}


def run(args: argparse.Namespace, client: MlopsClient, out: TextIO = sys.stdout) -> int:
    """Carry out one client command."""
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
        )
        job = client.post("/training/upload", body)
        print(f"job {job['job_id']} ({job['status_url']})", file=out, flush=True)
        if not args.no_follow:
            follow(client, job["job_id"], out=out)
    elif args.command in _SUBMIT_PATHS:
        job = client.post(_SUBMIT_PATHS[args.command], _read_json(args.request))
        print(f"job {job['job_id']} ({job['status_url']})", file=out, flush=True)
        if not args.no_follow:
            done = follow(client, job["job_id"], out=out, deploy=False)
            print(json.dumps(done["result"], indent=2, default=str), file=out)
    elif args.command == "job":
        job = client.get(f"/jobs/{args.job_id}", logs=args.logs)
        print(job.pop("logs") if args.logs else json.dumps(job, indent=2, default=str), file=out)
    elif args.command == "models":
        path = f"/models/{args.model_name}" if args.model_name else "/models"
        print(json.dumps(client.get(path), indent=2), file=out)
    elif args.command == "history":
        body = {"model_name": args.model_name, "limit": args.limit}
        body.update({k: v for k, v in (("model_version", args.version), ("metric_type", args.metric_type)) if v})
        print(json.dumps(client.post("/monitoring/history", body), indent=2), file=out)
    return 0


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
