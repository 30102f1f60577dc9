"""``python -m asgard.local``: the commands behind ``./asgard``.

run, start, stop, status, logs for the embedded services; upload, train, score, monitor, job,
models, history as a client of the ``/mlops`` API (``asgard.local.cli``).
"""

from __future__ import annotations

import argparse
import sys

from asgard.core.settings import Settings
from asgard.hooks.airflow_api import AirflowApiError
from asgard.local import cli
from asgard.local.services import ServiceError, ServiceManager


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="asgard", description="Asgard MLOps on the embedded default.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="start the services and run the pipeline through the Airflow REST API")
    run.add_argument("--customers", type=int, default=2000, help="size of the sample gold layer")
    run.add_argument("--days", type=int, default=14, help="days of daily snapshots in the sample gold layer")
    start = commands.add_parser("start", help="start the embedded services (all, or the named ones)")
    start.add_argument("services", nargs="*")
    stop = commands.add_parser("stop", help="stop the embedded services and everything they started")
    stop.add_argument("services", nargs="*")
    status = commands.add_parser("status", help="show each service, its PID and URL, and the Airflow login")
    status.add_argument("--show-password", action="store_true", help="print the Airflow admin password too")
    logs = commands.add_parser("logs", help="print the end of a service's log")
    logs.add_argument("service")
    logs.add_argument("-n", "--lines", type=int, default=80)
    cli.add_commands(commands)
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    manager = ServiceManager(settings)
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
        elif args.command == "logs":
            print(manager.tail(args.service, args.lines))
    except (ServiceError, cli.CliError, AirflowApiError) as error:
        print(f"asgard: {error}", file=sys.stderr)
        return 1
    return 0


def run_main_job(settings: Settings, args: argparse.Namespace) -> int:
    # Only the main job imports the platform (and Airflow with it): the client commands start fast.
    from asgard.local.main_job import MainJob, MainJobError

    try:
        MainJob(settings, customers=args.customers, days=args.days).run()
    except (MainJobError, ServiceError, AirflowApiError) as error:
        print(f"asgard: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
