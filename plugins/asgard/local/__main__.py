"""``python -m asgard.local``: the commands behind ``./asgard``.

run, start, stop, status, logs for the embedded services; docs for the documentation site; upload, train,
score, monitor, job, models, history, deploy, materialize, features register and gold load as a client of
the ``/mlops`` and ``/feast`` APIs (``asgard.local.cli``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from asgard.core.settings import PROFILES, Settings
from asgard.hooks.airflow_api import AirflowApiError
from asgard.local import cli
from asgard.local.services import ServiceError, ServiceManager


def build_parser() -> argparse.ArgumentParser:
    """``./asgard``'s commands and their options (the docs' CLI reference is written from it too)."""
    parser = argparse.ArgumentParser(prog="asgard", description="Asgard MLOps on the embedded default or production.")
    commands = parser.add_subparsers(dest="command", required=True)
    profile = argparse.ArgumentParser(add_help=False)
    profile.add_argument(
        "--profile", choices=PROFILES, help="embedded (default) or production (ASGARD_PROFILE); stop/status/logs "
        "need the profile the services were started with"
    )  # fmt: skip
    run = commands.add_parser(
        "run", parents=[profile], help="start the services and run the pipeline through the Airflow REST API"
    )
    run.add_argument("--customers", type=int, default=2000, help="size of the sample gold layer")
    run.add_argument("--days", type=int, default=14, help="days of daily snapshots in the sample gold layer")
    run.add_argument(
        "--approve-in-ui",
        action="store_true",
        help="leave the drift retrain's deployment to a person in the Airflow UI (Required Actions); the job "
        "prints where and waits for the decision, instead of approving it through the REST API",
    )
    start = commands.add_parser("start", parents=[profile], help="start the services (all, or the named ones)")
    start.add_argument("services", nargs="*")
    stop = commands.add_parser("stop", parents=[profile], help="stop the services and everything they started")
    stop.add_argument("services", nargs="*")
    status = commands.add_parser(
        "status", parents=[profile], help="show each service, its PID and URL, and the Airflow login"
    )
    status.add_argument("--show-password", action="store_true", help="print the Airflow admin password too")
    commands.add_parser(
        "trino-catalog", parents=[profile], help="print Trino's iceberg catalog over this profile's gold layer"
    )
    logs = commands.add_parser("logs", parents=[profile], help="print the end of a service's log")
    logs.add_argument("service")
    logs.add_argument("-n", "--lines", type=int, default=80)
    docs = commands.add_parser("docs", help="the documentation site: served on 127.0.0.1, or --build it (strict)")
    docs.add_argument("--build", action="store_true", help="build the site (any warning fails it) instead of serving")
    docs.add_argument("--site", type=Path, help="where --build writes the site (default: .cache/docs-site)")
    docs.add_argument("--port", type=int, default=8000, help="the port the site is served on")
    cli.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "docs":
        return run_docs(args)

    if getattr(args, "profile", None):
        # The services and the main job read the profile from the environment, as every setting.
        os.environ["ASGARD_PROFILE"] = args.profile
    settings = Settings.from_env()
    manager = ServiceManager.for_settings(settings)
    try:
        if args.command in cli.COMMANDS:
            return cli.run(args, cli.client_for(args, settings, manager.admin_credentials))
        if args.command == "run":
            return run_main_job(settings, args)
        elif args.command == "start":
            manager.start(args.services or None)
        elif args.command == "stop":
            manager.stop(args.services or None)
        elif args.command == "status":
            for status in manager.status():
                print(status.describe())
            if manager.passwords_file.exists():
                user, password = manager.admin_credentials()
                shown = password if args.show_password else "(./asgard status --show-password prints it)"
                print(f"Airflow login: {user} / {shown}  (kept in {manager.passwords_file})")
        elif args.command == "trino-catalog":
            from asgard.features.gold import GoldLayerError, trino_catalog

            os.environ.update(manager.platform_env())  # the catalog configuration the platform's processes get
            try:
                print(trino_catalog(settings), end="")
            except GoldLayerError as error:
                print(f"asgard: {error}", file=sys.stderr)
                return 1
        elif args.command == "logs":
            print(manager.tail(args.service, args.lines))
    except (ServiceError, cli.CliError, AirflowApiError) as error:
        print(f"asgard: {error}", file=sys.stderr)
        return 1
    return 0


def run_docs(args: argparse.Namespace) -> int:
    from asgard.local import docs

    if not args.build:
        return docs.serve("127.0.0.1", args.port)
    built = docs.build(args.site)
    print(built.stdout + built.stderr, end="")
    return built.returncode


def run_main_job(settings: Settings, args: argparse.Namespace) -> int:
    # Only the main job imports the platform (and Airflow with it): the client commands start fast.
    from asgard.local.main_job import MainJob
    from asgard.local.stages import MainJobError

    try:
        MainJob(settings, customers=args.customers, days=args.days, approve_in_ui=args.approve_in_ui).run()
    except (MainJobError, ServiceError, AirflowApiError) as error:
        print(f"asgard: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
