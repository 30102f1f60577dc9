"""The memory pool's size and each task's share (asgard.core.memory_pool)."""

from __future__ import annotations

from pathlib import Path

from asgard.core import memory_pool
from asgard.core.settings import Settings


def test_the_pool_holds_half_the_machine_unless_the_budget_is_set_and_never_less_than_the_largest_task():
    default = Settings()
    assert memory_pool.largest_task_gb(default) == 8  # a script may be given 8192 MB
    assert memory_pool.pool_slots(default, machine_gb=24.0) == 12
    assert memory_pool.pool_slots(default, machine_gb=7.9) == 8  # below the largest task: the largest
    assert memory_pool.pool_slots(Settings(task_memory_gb=40), machine_gb=24.0) == 40  # all workers' memory
    small_scripts = Settings(script_max_memory_mb=1500)
    assert memory_pool.script_gb(small_scripts) == 2  # rounded up
    assert memory_pool.pool_slots(small_scripts, machine_gb=4.0) == memory_pool.MONITORING_GB == 6  # the largest then
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    total_kib = int(next(line for line in meminfo if line.startswith("MemTotal:")).split()[1])
    assert abs(memory_pool.machine_memory_gb() - total_kib / 2**20) < 0.5  # the kernel's own count


def test_a_script_takes_its_most_on_a_local_sandbox_and_nothing_as_a_pod():
    assert memory_pool.script_task(Settings()) == {"pool": memory_pool.MEMORY_POOL, "pool_slots": 8}
    assert memory_pool.script_task(Settings(script_runner="kubernetes")) == {}
