"""``python -m asgard.embedded``: the commands behind ``./asgard``.

run, start, stop, status, logs for the embedded services; upload, train, score, monitor, job,
models, history as a client of the ``/mlops`` API (``asgard.cli``).
"""

from __future__ import annotations

import argparse
import sys

from asgard import cli
from asgard.airflow_api import AirflowApiError
from asgard.embedded.main_job import MainJob, MainJobError
from asgard.embedded.services import ServiceError, ServiceManager
from asgard.settings import Settings


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
    commands.add_parser("status", help="show each service, its PID and URL, and the Airflow login")
    logs = commands.add_parser("logs", help="print the end of a service's log")
    logs.add_argument("service")
    logs.add_argument("-n", "--lines", type=int, default=80)
    cli.add_commands(commands)
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    manager = ServiceManager(settings)
    try:
        if args.command in cli.COMMANDS:
            return cli.run(args, cli.client_for(args, settings.airflow_url, manager.admin_credentials))
        if args.command == "run":
            MainJob(settings, customers=args.customers, days=args.days).run()
        elif args.command == "start":
            manager.start(args.services or None)
        elif args.command == "stop":
            manager.stop(args.services or None)
        elif args.command == "status":
            for status in manager.status():
                print(status.describe())
            if manager.passwords_file.exists():
                user, password = manager.admin_credentials()
                print(f"Airflow login: {user} / {password}  (from {manager.passwords_file})")
        elif args.command == "logs":
            print(manager.tail(args.service, args.lines))
    except (ServiceError, MainJobError, cli.CliError, AirflowApiError) as error:
        print(f"asgard: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
