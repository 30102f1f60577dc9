"""The main job's stage clock: a failure names its stage and its cause; every stage is timed, and the memory its
tasks took is taken from the machine's real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from asgard.hooks.airflow_api import AirflowApiError
from asgard.local.stages import MainJobError, StageClock
from asgard.local.task_memory import TaskMemory


def test_a_failure_names_the_stage_and_a_foreign_error_by_its_type(capsys):
    clock = StageClock()
    with clock.stage("train"):
        pass
    foreign = r"^stage 'read the decision' failed: KeyError: 'score'$"
    with pytest.raises(MainJobError, match=foreign), clock.stage("read the decision"):
        {}["score"]
    ours = r"^stage 'wait' failed: run train_model/r1 still running after 9s$"
    with pytest.raises(MainJobError, match=ours), clock.stage("wait"):
        raise AirflowApiError("run train_model/r1 still running after 9s")
    assert [name for name, _ in clock.timings] == ["train", "read the decision", "wait"]
    out = capsys.readouterr().out
    assert out.count("==> ") == 3 and out.count("done in") == 1  # only the stage that ended well is done


# A process titled as the Task SDK titles a running task, holding 300 MiB in a child of its own (as a task holds
# a sandboxed script's), until its stdin closes.
TASK = """
import subprocess, sys
from setproctitle import setproctitle
setproctitle("airflow worker -- " + sys.argv[1])
HOLD = "import sys; held = b'x' * (300 * 2**20); print('held', flush=True); sys.stdin.read()"  # written: resident
child = subprocess.Popen([sys.executable, "-c", HOLD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
child.stdout.readline()
print("running", flush=True)
sys.stdin.read()
child.stdin.close(); child.wait()
"""


def test_a_stage_records_the_memory_its_tasks_held_and_the_next_stage_does_not(tmp_path, capsys):
    memory = TaskMemory(lambda: {os.getpid()}, interval=0.05)  # this test is the tasks' service
    clock = StageClock(memory)
    try:
        with clock.stage("holds a task"):
            task = subprocess.Popen(
                [sys.executable, "-c", TASK, str(uuid.uuid4())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert task.stdout.readline() == "running\n"
            memory.record()  # while it holds it: the thread's samples need not fall in so short a stage
            task.stdin.close()  # it ends with the stage
            task.wait(timeout=30)
        with clock.stage("after it"):
            pass
    finally:
        clock.close()
    holding, after = clock.memory
    assert holding.largest_task_mb >= 300 and holding.all_tasks_mb >= holding.largest_task_mb
    assert holding.machine_used_mb > holding.largest_task_mb
    assert after.largest_task_mb == 0  # the task and its child are gone; another installation's never counted
    clock.print_timings(None)
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("    holds a task"))
    assert f"{holding.largest_task_mb:.0f} MiB" in row
    recorded = json.loads(clock.write(tmp_path, customers=1).read_text())["stages"][0]
    assert recorded["name"] == "holds a task" and recorded["peak_task_rss_mb"] == round(holding.largest_task_mb)
