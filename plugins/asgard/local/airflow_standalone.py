"""``airflow standalone`` for the embedded profile, without the log servers.

The scheduler and the triggerer each start a log server that listens on every interface, on fixed
ports (8793, 8794) that two stacks on one machine would share. One machine needs none: the API
server reads the task logs from the same disk. So the scheduler and triggerer run with
``--skip-serve-logs``; everything else is Airflow's own standalone command.
"""

from __future__ import annotations

from airflow.cli.commands import standalone_command

WITH_LOG_SERVERS = ("scheduler", "triggerer")


class _Component(standalone_command.SubCommand):
    def __init__(self, parent, name: str, command: list[str], env: dict[str, str]) -> None:
        if command[:1] and command[0] in WITH_LOG_SERVERS:
            command = [*command, "--skip-serve-logs"]
        super().__init__(parent, name, command, env)


def main() -> None:
    standalone_command.SubCommand = _Component  # what StandaloneCommand.run starts its components with
    standalone_command.StandaloneCommand().run()


if __name__ == "__main__":
    main()
