"""Warm the heavy libraries once in the Airflow processes that fork a process per task.

The LocalExecutor's workers are forked from the scheduler, and each task process is forked from a
worker (the Celery worker does the same); a fork shares whatever its parent had imported. Feast
alone takes ~4 s to import (typeguard instruments it at import time), MLflow and scikit-learn
another ~2 s: paid once here instead of in every task of every run.
"""

from __future__ import annotations

import importlib
import logging
import sys
import time

log = logging.getLogger(__name__)

# The Airflow sub-commands whose process forks the task processes.
TASK_FORKING_COMMANDS = ({"scheduler"}, {"celery", "worker"})
LIBRARIES = (
    "numpy",
    "pandas",
    "pyarrow.parquet",
    "sklearn.ensemble",
    "sklearn.linear_model",
    "sklearn.pipeline",
    "mlflow",
    "mlflow.sklearn",
    "feast",
    "feast.infra.offline_stores.duckdb",
    "feast.infra.online_stores.sqlite",
    "pyiceberg.catalog.sql",
    "asgard.features.store",
    "asgard.training.pipeline",
)
# Process-wide caches worth filling once: MLflow maps every installed module to its distribution
# (~1 s) to check a logged model's requirements, and keeps the map for the life of the process.
CACHES = ("mlflow.utils.requirements_utils:_init_modules_to_packages_map",)


def forks_tasks(argv: list[str]) -> bool:
    words = set(argv[1:3])
    return any(command <= words for command in TASK_FORKING_COMMANDS)


def warm(libraries: tuple[str, ...] = LIBRARIES, caches: tuple[str, ...] = CACHES) -> float:
    """Import ``libraries`` and fill ``caches`` (failures are logged, never raised: the process must start)."""
    started = time.perf_counter()
    for name in libraries:
        try:
            importlib.import_module(name)
        except Exception:
            log.warning("could not preload %s", name, exc_info=True)
    for target in caches:
        module, function = target.split(":")
        try:
            getattr(importlib.import_module(module), function)()
        except Exception:
            log.warning("could not fill %s", target, exc_info=True)
    return time.perf_counter() - started


def warm_if_forking_tasks() -> None:
    """Called from ``airflow_local_settings``: warm up only the scheduler and Celery workers."""
    from asgard.core.settings import get_settings

    if not get_settings().preload or not forks_tasks(sys.argv):
        return
    seconds = warm()
    log.info("preloaded %d libraries for forked tasks in %.1fs", len(LIBRARIES), seconds)
