"""A script run's view of the production gold layer, and the sweep of views whose run is gone.

In production the gold layer is a catalog in PostgreSQL and a warehouse on S3, which a script reaches through
its run's doors; so the view that hides the gate's held-back labels (:mod:`asgard.training.holdback`) is made
there, for the run, with the platform's login, and removed when the run ends. A worker killed mid-run leaves
it behind: the next run's view sweeps it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from asgard.core.dag_defaults import DEFAULT_ARGS
from asgard.core.settings import Settings, get_settings
from asgard.features import gold
from asgard.training import holdback

if TYPE_CHECKING:
    import sqlalchemy

log = logging.getLogger(__name__)

# Where a run's view lives: a schema of the gold catalog's database, and a prefix of the warehouse.
VIEW_SCHEMA_PREFIX = "script_view_"
VIEW_FOLDER = "script-views"
VIEW_MADE = "asgard script view, made "  # the schema's comment, then when (ISO 8601)
# A leftover view is swept once it is older than any task may run (a run's own lock guards it besides).
SWEEP_AFTER = DEFAULT_ARGS["execution_timeout"] + timedelta(hours=1)
SWEEP_BUDGET = 10.0  # seconds a sweep may take before the run that does it makes its own view
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 60, "keepalives_interval": 10, "keepalives_count": 6}


@dataclass(frozen=True)
class ProductionView:
    """A script run's view of the production gold layer, for its doors: the schema of the gold database its
    PostgreSQL sessions read the catalog from, and what of S3 it may read: its own folder (the cut copy) and
    the files of the tables its catalog registers ("<bucket>/<key>"), nothing else of the warehouse."""

    schema: str
    own: str
    files: frozenset[str]


@contextmanager
def production_script_view(
    run_key: str, reader_role: str, label_table: str, key_columns: Iterable[str], *, settings: Settings | None = None
) -> Iterator[ProductionView]:
    """The gold layer as a script run in production may read it: its catalog (PostgreSQL) and warehouse (S3)
    are services behind the run's doors, so the view is made there, with the platform's login, for the run.

    The run's own schema of the gold database (``script_view_<run_key>``, which the reader may SELECT in)
    holds a catalog of every gold table as it is, except ``label_table``: a copy of it without the
    held-back rows and with no history, under the warehouse's ``script-views/<run_key>/``. The PostgreSQL
    door opens the reader's sessions on that schema; the S3 door opens only the files those tables are made of
    and the copy (:class:`ProductionView`), never the real label table's, which the public schema's catalog
    still names: knowing where the labels are gives nothing. A table holding a file of the label table is left
    out. Both are removed when the run ends; those of a run whose worker was killed, by the next run's sweep
    (:func:`sweep_script_views`): the run holds its view's advisory lock on a session of its own for as long as
    the view lives, and PostgreSQL releases it when that session ends, however the run ends."""
    import sqlalchemy
    from pyiceberg.utils.config import Config

    settings = settings or get_settings()
    location = gold.GoldLocation.for_settings(settings)
    configured = Config().get_catalog_config(location.catalog_name) or {}
    uri = location.catalog_uri or configured.get("uri")
    if location.catalog_type != "sql" or not uri or not uri.startswith("postgresql"):
        raise ValueError("a script's production view is made in a PostgreSQL-backed SQL catalog of the gold layer")
    if not _is_view_key(run_key):
        raise ValueError(f"a view's run key is lower-case letters and digits, not {run_key!r}")
    schema = f"{VIEW_SCHEMA_PREFIX}{run_key}"
    # TCP keepalives: the lock's session idles for as long as the script runs, through whatever drops idle connections.
    engine = sqlalchemy.create_engine(uri, connect_args=KEEPALIVES)
    quoted = engine.dialect.identifier_preparer.quote
    view_uri = sqlalchemy.engine.make_url(uri).update_query_dict({"options": f"-csearch_path={schema}"})
    folder = f"{location.warehouse.rstrip('/')}/{VIEW_FOLDER}/{run_key}"
    view_location = gold.GoldLocation(
        "sql", warehouse=folder, catalog_uri=view_uri.render_as_string(hide_password=False),
        catalog_name=location.catalog_name,
    )  # fmt: skip
    with ExitStack() as cleanup:
        cleanup.callback(engine.dispose)
        # Taken before anything of the view exists and held until it is gone, on a session of its own (kept alive
        # through idle hours): a sweep never removes a view that is being made or used.
        holder = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        cleanup.callback(holder.invalidate)  # closed, not pooled: a pooled session would keep the lock
        holder.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": _view_lock(run_key)})
        try:
            sweep_script_views(engine, location)
        except Exception:  # another run's leftovers are no reason to fail this one
            log.warning("the sweep of finished runs' script views failed; the next run's tries again", exc_info=True)
        cleanup.callback(_remove_view, engine, run_key, location)
        with engine.begin() as connection:
            made = datetime.now(UTC).isoformat(timespec="seconds")
            for statement in (
                "CREATE SCHEMA {schema}",
                f"COMMENT ON SCHEMA {{schema}} IS '{VIEW_MADE}{made}'",
                "GRANT USAGE ON SCHEMA {schema} TO {reader}",
                "ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT ON TABLES TO {reader}",
            ):
                connection.execute(sqlalchemy.text(statement.format(schema=quoted(schema), reader=quoted(reader_role))))
        source = gold.load_catalog(location)
        view = gold.load_catalog(view_location)  # its catalog tables are made in the schema
        view.create_namespace_if_not_exists(gold.GOLD_NAMESPACE)
        tables = {name: source.load_table(f"{gold.GOLD_NAMESPACE}.{name}") for name in gold.list_tables(location)}
        label = tables.get(label_table)
        held_files = holdback.table_files(label) if label is not None else set()
        readable: set[str] = set()
        for name, table in tables.items():
            identifier = f"{gold.GOLD_NAMESPACE}.{name}"
            if name == label_table:
                holdback.write_cut_copy(
                    view, identifier, table, key_columns, holdback.fraction(settings), f"{folder}/{name}"
                )
                continue
            files = holdback.table_files(table)
            if files & held_files or any(_uri_within(file, table.location()) for file in held_files):
                log.warning("gold table %s holds files of %s: left out of the script's view", name, label_table)
                continue
            view.register_table(identifier, table.metadata_location)
            readable |= files
        # What the S3 door opens: the files of the registered tables as they are now (a table changed or made
        # during the run is not seen: its catalog entry here does not move) and the run's own folder. An
        # allow-list: the label table's files are not in it, wherever they lie or come to lie.
        yield ProductionView(schema, own=_s3_key(folder), files=frozenset(_s3_key(file) for file in readable))


def sweep_script_views(
    engine: sqlalchemy.Engine, location: gold.GoldLocation, *, older_than: timedelta = SWEEP_AFTER
) -> list[str]:
    """Remove the views of script runs that are gone (a worker killed mid-run leaves its schema and copy behind)
    and return their keys. A view is gone when it was made longer ago than any task may run and its lock is free
    (its run held the lock on a session of its own from before the view was made until after it was removed):
    either alone could be wrong (a run whose session dropped, a clock). Bounded, as it runs before another run's
    view is made: a schema a reader holds a lock on is left after a second, and the whole sweep stops after
    ``SWEEP_BUDGET`` seconds; a key that fails is logged and the others go on."""
    import sqlalchemy

    with engine.connect() as connection:
        rows = connection.execute(
            sqlalchemy.text(
                "SELECT substr(nspname, :start), obj_description(oid, 'pg_namespace') FROM pg_namespace"
                " WHERE starts_with(nspname, :prefix)"
            ),
            {"start": len(VIEW_SCHEMA_PREFIX) + 1, "prefix": VIEW_SCHEMA_PREFIX},
        ).all()
    now, stop_at = datetime.now(UTC), time.monotonic() + SWEEP_BUDGET
    swept = []
    for key, comment in sorted(rows):
        if not _is_view_key(key) or not _made_before(comment, now - older_than):
            continue
        if time.monotonic() > stop_at:
            log.warning("the sweep of script views stopped after %ss; the next run's goes on", SWEEP_BUDGET)
            break
        with engine.connect() as connection:
            connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            lock = {"key": _view_lock(key)}
            if not connection.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:key)"), lock).scalar():
                continue  # its run is alive
            try:
                log.warning("removing the script view %s: the run that made it is gone", key)
                if _remove_view(engine, key, location, lock_timeout="1s"):
                    swept.append(key)
            except Exception:
                log.warning("the script view %s could not be removed; a later sweep tries again", key, exc_info=True)
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), lock)
    return swept


def _made_before(comment: str | None, moment: datetime) -> bool:
    if not comment or not comment.startswith(VIEW_MADE):
        return False  # not a view this code made: left alone
    try:
        return datetime.fromisoformat(comment.removeprefix(VIEW_MADE)) < moment
    except ValueError:
        return False


def _remove_view(
    engine: sqlalchemy.Engine, key: str, location: gold.GoldLocation, *, lock_timeout: str = "30s"
) -> bool:
    """A view's copy (its S3 folder), then its schema: whether both are gone. The schema stays while its copy does
    (it is what a sweep finds a view by), or while a reader holds a lock on it for longer than ``lock_timeout``."""
    import sqlalchemy

    gold.delete_folder(f"{location.warehouse.rstrip('/')}/{VIEW_FOLDER}/{key}", location)
    try:
        with engine.begin() as connection:
            # Every run's script is the one reader, which may hold a lock on this schema's tables from another run:
            # the drop waits a while, not for ever (a schema left behind opens no file).
            quoted = engine.dialect.identifier_preparer.quote(f"{VIEW_SCHEMA_PREFIX}{key}")
            connection.execute(sqlalchemy.text(f"SET LOCAL lock_timeout = '{lock_timeout}'"))
            connection.execute(sqlalchemy.text(f"DROP SCHEMA IF EXISTS {quoted} CASCADE"))
    except sqlalchemy.exc.OperationalError as error:
        log.warning("the script view %s was left in the gold database for a later sweep: %s", key, error.orig)
        return False
    return True


def _is_view_key(key: str) -> bool:
    return bool(key) and key.isascii() and key.isalnum() and key == key.lower()


def _view_lock(key: str) -> int:
    """The advisory lock (a signed 64-bit number) a view's run holds."""
    return int.from_bytes(
        hashlib.blake2b(f"asgard script view {key}".encode(), digest_size=8).digest(), "big", signed=True
    )


def _s3_key(uri: str) -> str:
    """``s3://bucket/key`` as the S3 door names objects: ``bucket/key``."""
    if not uri.startswith(("s3://", "s3a://")):
        raise ValueError(f"{uri} is not on S3: production's gold warehouse is")
    return uri.split("://", 1)[1]


def _uri_within(uri: str, folder: str) -> bool:
    return uri == folder.rstrip("/") or uri.startswith(folder.rstrip("/") + "/")
