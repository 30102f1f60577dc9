"""Organisation defaults shared by every Asgard DAG (one place, each with its reason)."""

from __future__ import annotations

from datetime import timedelta

DEFAULT_ARGS = {
    # Who answers for a failed task in the UI; teams override per DAG when they own one.
    "owner": "asgard",
    # Tasks are idempotent, so one retry absorbs a transient failure (a busy server, a
    # dropped connection) without paging anyone; a second failure is real and should surface.
    "retries": 1,
    "retry_delay": timedelta(seconds=30),
    # A hung task must not hold a worker slot forever; long steps set their own limit.
    "execution_timeout": timedelta(hours=2),
}

# Every Asgard DAG carries this tag so the UI can filter the platform's DAGs from others.
PLATFORM_TAG = "asgard"
