"""Named locks every worker shares, in the platform's database (SQLite embedded, Postgres in production).

A lock is a row keyed by its name: taking it is one insert, which the database makes atomic (the
primary key), so two workers on two hosts cannot both hold it. A row past its expiry belongs to a
holder that died; the next taker removes it. The same holder taking a lock it holds (a retried
task) gets it again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import cache

import sqlalchemy as sa

metadata = sa.MetaData()
locks_table = sa.Table(
    "asgard_locks",
    metadata,
    sa.Column("name", sa.String(256), primary_key=True),
    sa.Column("holder", sa.String(512), nullable=False),
    sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)


class LockTimeoutError(RuntimeError):
    """A lock stayed held by someone else for longer than the caller would wait."""


@cache
def _engine(url: str) -> sa.Engine:
    engine = sa.create_engine(url, pool_pre_ping=True)
    ensure_tables(metadata, engine)
    return engine


def ensure_tables(tables: sa.MetaData, engine: sa.Engine, attempts: int = 5) -> None:
    """Create ``tables`` where missing, when several workers may do it at the same moment (Postgres
    refuses the second of two concurrent CREATE TABLEs even when both checked first: try again)."""
    for attempt in range(attempts):
        try:
            tables.create_all(engine, checkfirst=True)
            return
        except (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.OperationalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def try_take(url: str, name: str, holder: str, *, ttl: timedelta) -> str | None:
    """Take ``name`` for ``holder`` if free (or already ``holder``'s); else who holds it."""
    engine, now = _engine(url), datetime.now(UTC)
    with engine.begin() as connection:
        connection.execute(locks_table.delete().where(locks_table.c.name == name, locks_table.c.expires_at < now))
    try:
        with engine.begin() as connection:
            connection.execute(
                locks_table.insert().values(name=name, holder=holder, taken_at=now, expires_at=now + ttl)
            )
        return None
    except sa.exc.IntegrityError:
        with engine.connect() as connection:
            current = connection.execute(sa.select(locks_table.c.holder).where(locks_table.c.name == name)).scalar()
        return None if current == holder else current or "someone who just released it"


def release(url: str, name: str, holder: str) -> None:
    with _engine(url).begin() as connection:
        connection.execute(locks_table.delete().where(locks_table.c.name == name, locks_table.c.holder == holder))


@contextlib.contextmanager
def held(
    url: str, name: str, holder: str, *, wait: float = 1800.0, ttl: timedelta = timedelta(hours=2), poll: float = 1.0
) -> Iterator[None]:
    """``name`` held by ``holder`` for the block: waits up to ``wait`` seconds for another holder."""
    deadline = time.monotonic() + wait
    while (other := try_take(url, name, holder, ttl=ttl)) is not None:
        if time.monotonic() > deadline:
            raise LockTimeoutError(f"{name} is still held by {other} after {wait:.0f}s")
        time.sleep(poll)
    try:
        yield
    finally:
        release(url, name, holder)
