"""``./asgard``'s client commands and their options (carried out by ``asgard.local.cli.run``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# deploy_model's trial limits a deploy may set (their ranges are the Params'; a bad value is the API's 400).
TRIAL_LIMITS = {
    "min_requests": int,
    "duration": float,
    "max_error_rate": float,
    "max_p99_ratio": float,
    "p99_tolerance_ms": float,
    "min_agreement": float,
    "max_difference": float,
}


def add_commands(commands: Any) -> None:
    """The client's sub-commands, on ``./asgard``'s parser."""
    upload = commands.add_parser("upload", help="upload a training script and follow it to deployment")
    upload.add_argument("script", type=Path)
    upload.add_argument("--model-name", required=True)
    upload.add_argument("--experiment", required=True, help="MLflow experiment name")
    upload.add_argument("--requirement", "-r", action="append", default=[], help="pip requirement (repeatable)")
    upload.add_argument("--timeout", type=int, default=600, help="seconds the script may run")
    upload.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="script variable")
    upload.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="KEY=variable:TEAM.NAME",
        help="script variable read from an Airflow Variable (or connection:TEAM.ID) of the model's team",
    )
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
    job = commands.add_parser(
        "job", help="show a job: a job id, or DAG_ID RUN_ID for any run (UI, REST, schedule); --logs for its logs"
    )
    job.add_argument("job_id", metavar="JOB_ID|DAG_ID")
    job.add_argument("run_id", nargs="?", metavar="RUN_ID")
    job.add_argument("--logs", action="store_true")
    models = commands.add_parser("models", help="list registered models, or show one")
    models.add_argument("model_name", nargs="?")
    history = commands.add_parser("history", help="monitoring history of a model")
    history.add_argument("model_name")
    history.add_argument("--version")
    history.add_argument("--metric-type")
    history.add_argument("--limit", type=int, default=20)
    deploy = commands.add_parser("deploy", help="deploy a model version (deploy_model) and follow it until it serves")
    deploy.add_argument("model_name")
    which = deploy.add_mutually_exclusive_group()
    which.add_argument("--version", help="a version number")
    which.add_argument("--alias", help="an alias (default: champion)")
    deploy.add_argument("--strategy", choices=("replace", "canary", "shadow"), default="replace")
    deploy.add_argument("--percent", type=int, help="the canary's or shadow's share of requests (1-50)")
    deploy.add_argument("--target", choices=("docker", "kubernetes"), default="docker")
    for limit, kind in TRIAL_LIMITS.items():
        flag = f"--{limit.replace('_', '-')}"
        deploy.add_argument(flag, type=kind, help=f"the trial's {limit} (deploy_model's Param of that name)")
    deploy.add_argument(
        "--unpause", action="store_true", help="unpause deploy_model first (promotions then deploy themselves too)"
    )
    deploy.add_argument("--no-follow", action="store_true")
    decisions = []
    for name, help_text in (
        ("approve", "approve the deployment a promotion waits for (deploy_model's approval)"),
        ("reject", "reject the deployment a promotion waits for; serving stays as it is"),
    ):
        decision = commands.add_parser(name, help=help_text)
        decision.add_argument("model_name")
        decision.add_argument("version")
        decision.add_argument("--reason", required=name == "reject", default="", help="recorded on the version")
        decisions.append(decision)
    materialize = commands.add_parser("materialize", help="load feature views into the online store (a window)")
    materialize.add_argument("--feature-view", action="append", dest="feature_views", help="a view (repeatable)")
    materialize.add_argument("--start", help="window start (ISO time; with --end: a backfill)")
    materialize.add_argument("--end", help="window end (ISO time)")
    materialize.add_argument("--no-follow", action="store_true")
    features = commands.add_parser("features", help="feature views: register one")
    features_commands = features.add_subparsers(dest="features_command", required=True)
    register = features_commands.add_parser("register", help="register a feature view (POST /feast/features body)")
    register.add_argument("request", help="a JSON file, or - for standard input")
    register.add_argument("--no-follow", action="store_true")
    gold = commands.add_parser("gold", help="the gold layer: load a CSV or Parquet file into a table, list tables")
    gold_commands = gold.add_subparsers(dest="gold_command", required=True)
    load = gold_commands.add_parser("load", help="load a file as one snapshot of a gold table (created if new)")
    load.add_argument("file", help="a .csv or .parquet file (or a path/s3:// URI under the server's data roots)")
    load.add_argument("--table", required=True)
    load.add_argument("--entity", required=True, help="the entity (join key) column")
    load.add_argument("--timestamp", required=True, help="the event timestamp column")
    load.add_argument("--mode", choices=("append", "replace"), default="append")
    load.add_argument("--format", choices=("csv", "parquet"), help="default: from the file's suffix")
    load.add_argument("--team", help="the team the table is for (default: your only team); only it loads into it")
    gold_commands.add_parser("tables", help="list the gold layer's tables")
    for command in (
        upload, job, models, history, deploy, *decisions, materialize, register, load, gold_commands.choices["tables"],
        *[commands.choices[n] for n in ("train", "score", "monitor")],
    ):  # fmt: skip
        command.add_argument("--url", help="Airflow API server URL (default: ASGARD_API_URL, else this install)")
        command.add_argument("--json", action="store_true", help="print the API's answer as JSON")
