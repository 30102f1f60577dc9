"""``airflow standalone`` for the embedded profile, without the log servers, its components supervised.

The scheduler and the triggerer each start a log server that listens on every interface, on fixed
ports (8793, 8794) that two stacks on one machine would share. One machine needs none: the API
server reads the task logs from the same disk. So the scheduler and triggerer run with
``--skip-serve-logs``.

Airflow's standalone starts each component once: a scheduler that exits (an error it does not
survive, such as a metadata database locked for too long) leaves runs queued forever while the API
answers as if all were well. Here a component that exits is started again, as a service manager
would restart it; everything else is Airflow's own standalone command.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time

from airflow.cli.commands import standalone_command

WITH_LOG_SERVERS = ("scheduler", "triggerer")
RESTART_DELAY_SECONDS = 2.0
# How long a component may take to exit once told to stop before its session is killed: a scheduler
# exits in about 3 s, but one whose executor workers were signalled too (a service manager stopping
# the whole tree) and a triggerer waiting on its runner can hang until killed.
STOP_GRACE_SECONDS = 8.0


class _Component(standalone_command.SubCommand):
    def __init__(self, parent, name: str, command: list[str], env: dict[str, str]) -> None:
        if command[:1] and command[0] in WITH_LOG_SERVERS:
            command = [*command, "--skip-serve-logs"]
        super().__init__(parent, name, command, env)
        self.stopping = False

    def run(self) -> None:
        while not self.stopping:
            # A session of its own: when it dies, what it forked (executor workers) goes with it. Its
            # output is streamed by another thread: those forks may hold the pipe open after it exits.
            self.process = subprocess.Popen(
                ["airflow", *self.command],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
            threading.Thread(target=self._stream, args=(self.process.stdout,), daemon=True).start()
            code = self.process.wait()
            if self.stopping:
                return
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            notice = f"exited with code {code}; starting it again in {RESTART_DELAY_SECONDS:.0f} s\n"
            self.parent.output_queue.append((self.name, notice.encode()))
            time.sleep(RESTART_DELAY_SECONDS)

    def _stream(self, output) -> None:
        for line in output:
            self.parent.output_queue.append((self.name, line))

    def stop(self) -> None:
        self.stopping = True
        super().stop()
        if self.process is not None:
            deadline = threading.Timer(STOP_GRACE_SECONDS, self._kill_session, args=(self.process,))
            deadline.daemon = True  # (the standalone waits for each component's exit anyway)
            deadline.start()

    @staticmethod
    def _kill_session(process: subprocess.Popen) -> None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    standalone_command.SubCommand = _Component  # what StandaloneCommand.run starts its components with
    # SIGTERM (how ./asgard stop ends a service) takes standalone's own shutdown path, as Ctrl-C does:
    # each component is told to stop, and none is started again.
    signal.signal(signal.SIGTERM, _interrupt)
    standalone_command.StandaloneCommand().run()


if __name__ == "__main__":
    main()
