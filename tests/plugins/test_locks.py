"""Serialization between workers: named locks in the platform's database (SQLite and a real Postgres),
the retraining claim, and the route table's read-modify-write."""

from __future__ import annotations

import multiprocessing
import time
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from asgard.core import locks
from asgard.deploy.routes import RouteTable
from asgard.monitoring.store import MonitoringStore
from conftest import postgres_url

POSTGRES = postgres_url()


@pytest.fixture(params=["sqlite", "postgres"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'platform.db'}"
    engine = sa.create_engine(POSTGRES)
    with engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE IF EXISTS asgard_locks"))
        connection.execute(sa.text("DROP TABLE IF EXISTS asgard_retrain_requests"))
    return POSTGRES


def hold(url: str, name: str, holder: str, seconds: float, log) -> None:
    with locks.held(url, name, holder, wait=60, poll=0.05):
        log.put((holder, "in", time.monotonic()))
        time.sleep(seconds)
        log.put((holder, "out", time.monotonic()))


def test_two_processes_never_hold_one_lock_at_once(url):
    log = multiprocessing.get_context("spawn").Queue()
    workers = [
        multiprocessing.get_context("spawn").Process(
            target=hold, args=(url, "deploy:docker:churn", f"run-{i}", 0.5, log)
        )
        for i in range(3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    events = sorted((log.get(timeout=5) for _ in range(6)), key=lambda event: event[2])
    # Every holder leaves before the next one enters.
    assert [kind for _, kind, _ in events] == ["in", "out"] * 3
    assert [holder for holder, _, _ in events[0::2]] == [holder for holder, _, _ in events[1::2]]


def test_a_dead_holders_lock_expires_and_a_retried_holder_gets_its_own_again(url):
    assert locks.try_take(url, "deploy:docker:m", "run-1", ttl=timedelta(seconds=1)) is None
    assert locks.try_take(url, "deploy:docker:m", "run-1", ttl=timedelta(seconds=1)) is None  # a retry
    assert locks.try_take(url, "deploy:docker:m", "run-2", ttl=timedelta(hours=1)) == "run-1"
    waiting = locks.held(url, "deploy:docker:m", "run-2", wait=0.2, poll=0.05)
    with pytest.raises(locks.LockTimeoutError, match="deploy:docker:m is still held by run-1"), waiting:
        pass
    time.sleep(1.2)  # run-1 died without releasing: its lock expires
    assert locks.try_take(url, "deploy:docker:m", "run-2", ttl=timedelta(hours=1)) is None


def claim(url: str, source_run: str, out) -> None:
    store = MonitoringStore(url)
    now = datetime.now(UTC)
    out.put(
        store.claim_retrain("churn", "3", reason="drift", source_run=source_run, now=now, cooldown=timedelta(hours=1))
    )


def test_racing_monitoring_runs_claim_one_retraining(url):
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    MonitoringStore(url)  # the tables exist before the race
    workers = [context.Process(target=claim, args=(url, f"monitor/run-{i}", out)) for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    claims = [out.get(timeout=5) for _ in workers]
    assert sorted(claims) == [False, False, False, True]
    with sa.create_engine(url).connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM asgard_retrain_requests")).scalar() == 1


def set_routes(path: str, names: list[str]) -> None:
    table = RouteTable(__import__("pathlib").Path(path))
    for name in names:
        table.set(name, {"upstream": f"http://127.0.0.1:1/{name}", "version": "1"})


def test_concurrent_route_changes_all_land(tmp_path):
    path = tmp_path / "routes.json"
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=set_routes, args=(str(path), [f"model_{worker}_{i}" for i in range(20)]))
        for worker in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert len(RouteTable(path).routes()) == 80
