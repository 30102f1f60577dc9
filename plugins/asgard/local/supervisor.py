"""``python -m asgard.local.supervisor SPEC``: the long-lived keeper of one service.

``./asgard start`` returns once its services are healthy; each runs under a supervisor of its own
that outlives the command. The supervisor starts the service as a process group of its own, and is
the child subreaper of everything the service starts: a descendant orphaned by a crash (an MLflow
uvicorn worker, a Docker engine's container shims) is re-parented to it rather than to init, so it
can always be found and ended, even after leaving the group.

When the service dies unexpectedly, the supervisor ends whatever is left of it (so no orphan holds
its port), runs its ``after_stop``, waits a backoff (doubling from 1 s to 60 s, back to 1 s after a
minute of uptime) and starts it again; once healthy, its ``after_start`` and ``reconcile`` run (the
Docker engine: load the base image, bring back every routed serving container). Every restart is
logged to the service's log. On SIGTERM it stops the service (its stop signal, then escalation) and
every descendant, and exits. Its state (pids, restarts, last exit) is kept in the service's PID file,
which ``./asgard status`` reads.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
# An uptime this long means the last start worked: the next crash is retried after BACKOFF_FIRST again.
STABLE_AFTER = 60.0
PR_SET_CHILD_SUBREAPER = 36
log = logging.getLogger("asgard.supervisor")


class Supervisor:
    """Runs, watches and restarts the service a spec describes (see the module docstring)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.name = spec["name"]
        self.state_file = Path(spec["state_file"])
        self.stopping = threading.Event()
        self.leader: subprocess.Popen | None = None
        self.generation = 0
        self.restarts = 0
        self.last_exit: str | None = None
        self.started = 0.0
        self._hooks: Any = None

    # ----------------------------------------------------------------- main loop
    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda *_: self.stopping.set())
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        if not self._launch(first=True):
            self._record("crashed")
            return 1
        quick_crashes = 0
        while True:
            status = self._wait_for_exit()
            if status is None:  # asked to stop
                self._record("stopping")
                self._stop()
                self._record("stopped")
                return 0
            uptime = time.monotonic() - self.started
            self.last_exit = describe_exit(status)
            self._record("crashed")
            log.warning("%s exited unexpectedly (%s) after %.1fs", self.name, self.last_exit, uptime)
            end_processes(descendants(), grace=5.0)
            self._hook("after_stop")
            quick_crashes = 0 if uptime >= STABLE_AFTER else quick_crashes + 1
            while True:
                delay = min(self.spec.get("backoff_max", BACKOFF_MAX), BACKOFF_FIRST * 2 ** max(0, quick_crashes - 1))
                self._record("restarting", next_start=time.time() + delay)
                log.warning("restarting %s in %.0fs (restart %d)", self.name, delay, self.restarts + 1)
                if self.stopping.wait(delay):
                    end_processes(descendants(), grace=5.0)
                    self._record("stopped")
                    return 0
                self.restarts += 1
                if self._launch(first=False):
                    break
                quick_crashes += 1

    def _launch(self, *, first: bool) -> bool:
        log_path = Path(self.spec["log"])
        try:
            with log_path.open("ab") as log_handle:
                self.leader = subprocess.Popen(
                    self.spec["argv"],
                    env=self.spec["env"],
                    cwd=self.spec["cwd"],
                    stdin=subprocess.DEVNULL,
                    stdout=log_handle,
                    stderr=subprocess.STDOUT,
                    # A process group of its own: the whole service is signalled at once, never us.
                    process_group=0,
                )
        except OSError as error:
            log.error("cannot start %s: %s", self.name, error)
            return False
        self.started = time.monotonic()
        self.generation += 1
        self._record("running")
        log.info("%s started (pid %d)%s", self.name, self.leader.pid, "" if first else f", restart {self.restarts}")
        if self.spec.get("manager"):
            threading.Thread(target=self._watch, args=(self.generation, first), daemon=True).start()
        return True

    def _wait_for_exit(self) -> int | None:
        """The leader's wait status once it exits; None once asked to stop. Reaps adopted orphans meanwhile."""
        while not self.stopping.is_set():
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                if self.leader is not None and pid == self.leader.pid:
                    self.leader.returncode = os.waitstatus_to_exitcode(status)
                    return status
            self.stopping.wait(0.2)
        return None

    def _stop(self) -> None:
        """The service's own stop signal first (it may stop its children itself), then every descendant."""
        if self.leader is not None and self.leader.poll() is None:
            with contextlib.suppress(psutil.NoSuchProcess, RuntimeError):
                stop_tree(
                    psutil.Process(self.leader.pid),
                    self.spec["stop_signal"],
                    grace=self.spec.get("grace", 30.0),
                    whole_tree=not self.spec.get("stops_its_children", False),
                )
        end_processes(descendants(), grace=5.0)

    # ----------------------------------------------------------------- hooks
    def _watch(self, generation: int, first: bool) -> None:
        """Once this start of the service is healthy: its after_start (on a restart; ``start`` runs the
        first), then its reconcile now and every ``reconcile_interval`` while this start lasts."""
        manager, service = self._manager()
        if manager is None:
            return
        deadline = time.monotonic() + service.start_timeout
        while not self._healthy(service):
            if self.stopping.wait(1.0) or generation != self.generation or time.monotonic() > deadline:
                return
        log.info("%s is healthy", self.name)
        if not first:
            self._hook("after_start")
        while not self.stopping.is_set() and generation == self.generation and service.reconcile:
            self._hook("reconcile")
            self.stopping.wait(service.reconcile_interval)

    def _manager(self) -> tuple[Any, Any]:
        if self._hooks is None:
            try:
                from asgard.core.settings import Settings

                module, _, qualname = self.spec["manager"].partition(":")
                factory = importlib.import_module(module)
                for part in qualname.split("."):
                    factory = getattr(factory, part)
                manager = factory(Settings.from_env(), base_env=dict(os.environ))
                self._hooks = (manager, manager.service(self.name))
            except Exception:  # no hooks is still a supervised service
                log.exception("cannot load the hooks of %s", self.name)
                self._hooks = (None, None)
        return self._hooks

    def _healthy(self, service: Any) -> bool:
        from asgard.local.processes import healthy

        try:
            return healthy(service)
        except Exception:
            return False

    def _hook(self, which: str) -> None:
        if not self.spec.get("manager"):
            return
        _, service = self._manager()
        hook = getattr(service, which, None) if service is not None else None
        if hook is None:
            return
        try:
            hook()
        except Exception:  # a failed hook is logged; the service stays supervised
            log.exception("%s of %s failed", which, self.name)

    def _record(self, state: str, **extra: Any) -> None:
        leader = self.leader
        record = {
            "pid": leader.pid if leader else None,
            "started": started_since_boot(leader.pid) if leader else None,
            "pgid": leader.pid if leader else None,
            "supervisor": {"pid": os.getpid(), "started": started_since_boot(os.getpid())},
            "state": state,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "updated": time.time(),
            **extra,
        }
        tmp = self.state_file.with_name(f".{self.state_file.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(record))
        os.replace(tmp, self.state_file)


def started_since_boot(pid: int) -> float | None:
    """When ``pid`` started, in seconds since boot (``/proc/<pid>/stat``'s starttime): with its PID, who it is.

    Not ``create_time()``: that adds the boot time the kernel derives from the wall clock, so a clock
    step (a VM's time sync) moves every process's start at once, and every service looked crashed.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # Field 22; counted after the command name, which may hold spaces and parentheses (split at its last ")").
    return int(stat[stat.rindex(b")") + 2 :].split()[19]) / os.sysconf("SC_CLK_TCK")


def describe_exit(status: int) -> str:
    """``exit code 3`` or ``signal SIGKILL`` for a wait status."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(signum).name}"
        return f"signal {signum}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def descendants(process: psutil.Process | None = None) -> list[psutil.Process]:
    """Every live descendant of ``process`` (this one by default)."""
    try:
        return (process or psutil.Process()).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def group_members(pgid: int) -> list[psutil.Process]:
    """The live processes of process group ``pgid`` (what is left of a service whose keeper is gone)."""
    members = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError, PermissionError):
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process)
    return members


def end_processes(processes: list[psutil.Process], *, grace: float, first_signal: int = signal.SIGTERM) -> None:
    """Signal ``processes``, then SIGKILL those still alive after ``grace`` seconds."""
    for escalation, wait in ((first_signal, grace), (signal.SIGKILL, 10.0)):
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(escalation)
        _, processes = psutil.wait_procs(processes, timeout=wait)
        if not processes:
            return
    if processes:
        raise RuntimeError(f"could not stop pids {[p.pid for p in processes]}")


def stop_tree(process: psutil.Process, first_signal: int, grace: float = 30.0, *, whole_tree: bool = True) -> None:
    """Signal the process group (or, not ``whole_tree``, the process alone), then every descendant still
    alive; escalate to SIGKILL."""
    try:
        family = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    if not whole_tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(first_signal)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, first_signal)
    # Descendants that left the group (task runners start sessions of their own) get it directly.
    for member in family[1:] if whole_tree else []:
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
            if os.getpgid(member.pid) != process.pid:
                member.send_signal(first_signal)
    _, alive = psutil.wait_procs(family, timeout=grace)
    for escalation in (signal.SIGTERM, signal.SIGKILL):
        if not alive:
            return
        # Children that moved to a group of their own (task runners, gunicorn workers) too.
        for straggler in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                straggler.send_signal(escalation)
        _, alive = psutil.wait_procs(alive, timeout=10.0)
    if alive:
        raise RuntimeError(f"could not stop pids {[p.pid for p in alive]}")


def main(argv: list[str]) -> int:
    spec_file = Path(argv[0])
    spec = json.loads(spec_file.read_text())
    spec_file.unlink()  # it holds the service's environment (secrets included): kept in memory only
    logging.basicConfig(
        stream=sys.stdout, level=logging.INFO, format=f"%(asctime)s asgard-supervisor[{spec['name']}] %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per health check drowns the restarts
    return Supervisor(spec).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
