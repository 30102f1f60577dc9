"""Where monitoring results live: one SQLAlchemy schema on SQLite (embedded) or Postgres (production).

A record is the seed's ``POST /mlops/monitoring`` body plus what the platform adds: the window it
covers, whether its metric breached a threshold in that window (``breached``) and whether that
breach has lasted long enough to alert (``alert_triggered``). Records of one DAG run are replaced
as a whole, so a retried task never duplicates them. Retraining requests are kept too: the
cool-down is read from them.
"""

from __future__ import annotations

import functools
import math
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from asgard.core.locks import ensure_tables

METRIC_TYPES = ("prediction_drift", "feature_drift", "data_quality", "model_performance", "custom")

metadata = sa.MetaData()

records_table = sa.Table(
    "asgard_monitoring_records",
    metadata,
    sa.Column("monitoring_id", sa.String(40), primary_key=True),
    sa.Column("model_name", sa.String(256), nullable=False),
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("metric_type", sa.String(32), nullable=False),
    # The feature a drift or data-quality record is about ("" for the whole model).
    sa.Column("subject", sa.String(256), nullable=False, default=""),
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.Column("reference_data", sa.JSON),
    sa.Column("current_data", sa.JSON),
    sa.Column("tags", sa.JSON),
    sa.Column("breached", sa.Boolean, nullable=False, default=False),
    sa.Column("alert_triggered", sa.Boolean, nullable=False, default=False),
    sa.Column("alerts", sa.JSON),
    sa.Column("rows", sa.Integer),
    sa.Column("window_start", sa.DateTime(timezone=True)),
    sa.Column("window_end", sa.DateTime(timezone=True)),
    sa.Column("source_run", sa.String(512)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_asgard_monitoring_model", "model_name", "model_version", "metric_type", "created_at"),
)

retrain_table = sa.Table(
    "asgard_retrain_requests",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model_name", sa.String(256), nullable=False),
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("source_run", sa.String(512)),
    sa.Index("ix_asgard_retrain_model", "model_name", "requested_at"),
)


@dataclass
class Record:
    model_name: str
    model_version: str
    metric_type: str
    metrics: dict[str, float]
    subject: str = ""
    reference_data: dict[str, Any] | None = None
    current_data: dict[str, Any] | None = None
    tags: dict[str, str] = field(default_factory=dict)
    breached: bool = False
    alert_triggered: bool = False
    alerts: list[str] = field(default_factory=list)
    rows: int | None = None
    window_start: datetime | None = None
    window_end: datetime | None = None
    source_run: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    monitoring_id: str = field(default_factory=lambda: f"mon-{uuid.uuid4().hex[:12]}")

    def as_response(self) -> dict[str, Any]:
        """The seed's record shape (``POST /mlops/monitoring``'s response)."""
        return {
            "monitoring_id": self.monitoring_id,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "metric_type": self.metric_type,
            "subject": self.subject or None,
            "metrics": self.metrics,
            "reference_data": self.reference_data,
            "current_data": self.current_data,
            "tags": self.tags,
            "alert_triggered": self.alert_triggered,
            "alerts": self.alerts,
            "rows": self.rows,
            "window": {"start": _iso(self.window_start), "end": _iso(self.window_end)} if self.window_end else None,
            "timestamp": _iso(self.created_at),
        }


class MonitoringStore:
    """Monitoring records and retraining requests in one database."""

    def __init__(self, url: str) -> None:
        self.url = url
        # Kept for the life of a process (``at``): a pooled connection a database restart broke is replaced.
        self.engine = sa.create_engine(url, future=True, pool_pre_ping=True)
        ensure_tables(metadata, self.engine)

    @classmethod
    @functools.cache
    def at(cls, url: str) -> MonitoringStore:
        """The store at ``url``, opened once per process: a long-lived one (the API server) keeps one engine
        and its connection pool, and checks the tables once, instead of on every request."""
        return cls(url)

    def describe(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def replace_run(self, source_run: str, model_name: str, model_version: str, records: Iterable[Record]) -> None:
        """Store one run's records for a model version, replacing what an earlier try of that run stored."""
        rows = []
        for record in records:
            record.source_run = source_run
            rows.append(_row(record))
        with self.engine.begin() as connection:
            connection.execute(
                records_table.delete().where(
                    records_table.c.source_run == source_run,
                    records_table.c.model_name == model_name,
                    records_table.c.model_version == model_version,
                )
            )
            if rows:
                connection.execute(records_table.insert(), rows)

    def add(self, record: Record) -> None:
        with self.engine.begin() as connection:
            connection.execute(records_table.insert(), [_row(record)])

    def recent_breaches(
        self, model_name: str, model_version: str, metric_type: str, subject: str, *, windows: int, before: datetime
    ) -> list[bool]:
        """Whether each of the last ``windows`` windows (ending before ``before``) breached, newest first."""
        query = (
            sa.select(records_table.c.breached)
            .where(
                records_table.c.model_name == model_name,
                records_table.c.model_version == model_version,
                records_table.c.metric_type == metric_type,
                records_table.c.subject == subject,
                records_table.c.window_end < before,
            )
            .order_by(records_table.c.window_end.desc())
            .limit(windows)
        )
        with self.engine.connect() as connection:
            return [bool(row.breached) for row in connection.execute(query)]

    def history(
        self,
        model_name: str,
        *,
        model_version: str | None = None,
        metric_type: str | None = None,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
        limit: int = 100,
    ) -> dict[str, Any]:
        """The seed's ``POST /mlops/monitoring/history`` answer: newest records first, and a summary."""
        conditions = [records_table.c.model_name == model_name]
        if model_version is not None:
            conditions.append(records_table.c.model_version == str(model_version))
        if metric_type is not None:
            conditions.append(records_table.c.metric_type == metric_type)
        if start_date is not None:
            conditions.append(records_table.c.created_at >= start_date)
        if end_date is not None:
            conditions.append(records_table.c.created_at <= end_date)
        where = sa.and_(*conditions)
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(records_table).where(where).order_by(records_table.c.created_at.desc()).limit(limit)
            ).all()
            summary = connection.execute(
                sa.select(
                    sa.func.count(),
                    sa.func.sum(sa.case((records_table.c.alert_triggered, 1), else_=0)),
                    sa.func.min(records_table.c.created_at),
                    sa.func.max(records_table.c.created_at),
                ).where(where)
            ).one()
            types = connection.execute(
                sa.select(records_table.c.metric_type).where(where).distinct().order_by(records_table.c.metric_type)
            ).scalars()
            metric_types = list(types)
        total, alerts, first, last = summary
        return {
            "model_name": model_name,
            "model_version": model_version,
            "total_records": int(total),
            "records": [_record(row).as_response() for row in rows],
            "summary": {
                "total_alerts": int(alerts or 0),
                "metric_types": metric_types,
                "date_range": {"start": _iso(start_date or first), "end": _iso(end_date or last)},
            },
        }

    # ----------------------------------------------------------------------- retraining
    def last_retrain(self, model_name: str) -> datetime | None:
        query = sa.select(sa.func.max(retrain_table.c.requested_at)).where(retrain_table.c.model_name == model_name)
        with self.engine.connect() as connection:
            return _aware(connection.execute(query).scalar())

    def claim_retrain(
        self, model_name: str, model_version: str, *, reason: str, source_run: str, now: datetime, cooldown: timedelta
    ) -> bool:
        """Record a retraining request unless another run made one within the cool-down.

        Returns whether ``source_run`` holds the request: a retried task of the run that made it
        gets True again (and no second row), so what it asks for is asked again, under the same
        names. Two runs racing on the same model do not both retrain it.
        """
        from asgard.core.locks import held

        # The read and the write happen under the model's lock: on SQLite too, where a transaction
        # alone would let two runs both read "no request" before either writes one.
        with held(self.url, f"retrain:{model_name}", source_run, wait=120), self.engine.begin() as connection:
            recent = (
                sa.select(retrain_table.c.source_run)
                .where(
                    retrain_table.c.model_name == model_name,
                    sa.or_(retrain_table.c.requested_at > now - cooldown, retrain_table.c.source_run == source_run),
                )
                .order_by(retrain_table.c.requested_at.desc())
            )
            holders = set(connection.execute(recent).scalars())
            if holders:
                return source_run in holders
            connection.execute(
                retrain_table.insert(),
                [
                    {
                        "model_name": model_name,
                        "model_version": model_version,
                        "requested_at": now,
                        "reason": reason,
                        "source_run": source_run,
                    }
                ],
            )
            return True


def non_finite(value: Any, path: str = "") -> Iterator[tuple[str, float]]:
    """Each infinite or NaN number in ``value`` (a number, or lists and dicts of them), and where it is."""
    if isinstance(value, float):
        if not math.isfinite(value):
            yield path, value
    elif isinstance(value, dict | list | tuple):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            # Scalars are judged here, not in a call of their own: a body's list may hold a million.
            if isinstance(item, float):
                if not math.isfinite(item):
                    yield (f"{path}.{key}" if path else str(key)), item
            elif isinstance(item, dict | list | tuple):
                yield from non_finite(item, f"{path}.{key}" if path else str(key))


def _row(record: Record) -> dict[str, Any]:
    # JSON has no Infinity or NaN: PostgreSQL refuses them, SQLite would keep a token no JSON reader takes.
    values = {name: getattr(record, name) for name in ("metrics", "reference_data", "current_data")}
    odd = [where for where, _ in non_finite(values)]
    if odd:
        raise ValueError(f"{record.metric_type} record of {record.model_name}: {', '.join(odd)} not finite")
    return {name: getattr(record, name) for name in (column.name for column in records_table.c)}


def _record(row: Any) -> Record:
    values = dict(row._mapping)
    for name in ("window_start", "window_end", "created_at"):
        values[name] = _aware(values[name])
    values["tags"] = values["tags"] or {}
    values["alerts"] = values["alerts"] or []
    return Record(**values)


def _aware(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes: everything here is stored in UTC."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None
