"""The memory pool: tasks that hold a large frame take slots of one Airflow pool, a slot per GiB they
may hold, so that side-by-side runs at scale queue for the machine instead of taking it down together
(three frameworks' training sets of millions of rows built at once took a 24 GB machine to 23.4 GB).

The pool holds the installation's task memory budget in GiB: ``ASGARD_TASK_MEMORY_GB``, else half of
this machine's memory (the other half is the services', the serving containers' and the page cache's);
in production, where Celery workers on several machines share the one pool, the operator sets it to
the workers' total. It is never smaller than the largest task's slots: Airflow never schedules a task
that asks for more slots than its pool has, and never schedules one whose pool is missing, so every
stack creates the pool before its scheduler starts (``asgard.local.airflow_teams``) and the main job
reads it back before any DAG runs.

Each task's slots are what it may hold at the platform's scale target (5M customers): a training set
and its copies, a model fit on it, a partition scored, a monitoring window, a materialization chunk. A
sandboxed script takes the most any request may give it (``script_max_memory_mb``): slots are fixed
when the DAG is parsed, the request's own limit is known only when it runs.
"""

from __future__ import annotations

import math
import os
from typing import Any

MEMORY_POOL = "asgard_memory"
DESCRIPTION = "Asgard: tasks that hold large frames take a slot per GiB they may hold (asgard.core.memory_pool)"

TRAINING_SET_GB = 3  # the label rows, the join's answer (2.3 GiB at 5M rows) and DuckDB's capped 512 MB
FIT_GB = 3  # a training set, the model fitting on it and the holdout's predictions: 2.6 GiB at 5M rows
SCORING_GB = 1  # one partition's entities, features and predictions (754 MiB for a million rows)
MONITORING_GB = 6  # a window's rows and the training reference: 5.5 GiB for 5M customers' day and batch
MATERIALIZATION_GB = 5  # one view's newest row per entity: 4.6 GiB at 5M customers


def script_gb(settings: Any) -> int:
    """A sandboxed script's slots: the most memory a request may give it, in GiB (rounded up)."""
    return math.ceil(settings.script_max_memory_mb / 1024)


def largest_task_gb(settings: Any) -> int:
    return max(TRAINING_SET_GB, FIT_GB, SCORING_GB, MONITORING_GB, MATERIALIZATION_GB, script_gb(settings))


def machine_memory_gb() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def pool_slots(settings: Any, machine_gb: float | None = None) -> int:
    """The pool's size: the budget (set, else half the machine's memory), at least the largest task's."""
    budget = settings.task_memory_gb or int((machine_memory_gb() if machine_gb is None else machine_gb) / 2)
    return max(budget, largest_task_gb(settings))


def takes(gb: int) -> dict[str, Any]:
    """A task's arguments for holding up to ``gb`` GiB: ``@task(**takes(FIT_GB))``."""
    return {"pool": MEMORY_POOL, "pool_slots": gb}


def script_task(settings: Any) -> dict[str, Any]:
    """The script-running task's: its slots on a local sandbox; none when the script runs as a pod in a
    cluster (the task only waits; the cluster schedules the pod by its own resource requests)."""
    return takes(script_gb(settings)) if settings.script_runner == "local" else {}
