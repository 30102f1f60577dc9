"""Warm the heavy libraries once in the Airflow processes that fork a process per task; settle the API
server's long-lived heap.

The LocalExecutor's workers are forked from the scheduler, and each task process is forked from a
worker (the Celery worker does the same); a fork shares whatever its parent had imported. Feast
alone takes ~4 s to import (typeguard instruments it at import time), MLflow and scikit-learn
another ~2 s: paid once here instead of in every task of every run.

The API server holds ~720,000 objects the garbage collector tracks (Airflow's app, its plugins, what their
routes import), nearly all alive for as long as it runs. A full collection walks every one: 0.6-0.7 s
here, during which no request is answered, set off at moments the requests' own garbage decides (a 1 MB
JSON object of distinct keys brings one on). Once started, the server imports what the plugin's routes
import, then moves everything alive to the collector's permanent generation (``gc.freeze``): later
collections walk only what was made since.
"""

from __future__ import annotations

import gc
import importlib
import logging
import sys
import threading
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
# What the /mlops and /feast routes import on their first calls (imported before the heap is settled).
API_SERVER_LIBRARIES = (
    "mlflow",
    "asgard.hooks.mlflow",
    "asgard.registry.ownership",
    "asgard.monitoring.store",
    "asgard.api.jobs",
    "asgard.api.run_reads",
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


_settling = threading.Lock()
_settled = False


def settle_server_heap() -> None:
    """In a long-running server, once per process: import :data:`API_SERVER_LIBRARIES`, then freeze what is
    alive (see the module's docstring). On a thread of its own: the server answers meanwhile."""
    global _settled
    from asgard.core.settings import get_settings

    with _settling:
        if _settled or not get_settings().preload:
            return
        _settled = True

    def settle() -> None:
        seconds = warm(API_SERVER_LIBRARIES, caches=())
        gc.collect()  # what is garbage now is collected first: frozen, it would stay for good
        gc.freeze()
        log.info("settled the server's heap: %d objects frozen after %.1fs of imports", gc.get_freeze_count(), seconds)

    threading.Thread(target=settle, name="asgard-settle-heap", daemon=True).start()
