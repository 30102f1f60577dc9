"""PostgreSQL's door lets through exactly the reader, into the feature store's two databases.

A script in a real sandbox speaks PostgreSQL's wire protocol to the door (its loopback port 5432)
with hostile startups — the superuser, the admin login, another database, a replication connection,
``options``, a cancel request, a huge or malformed packet — and each gets the door's own FATAL error
(or a closed connection) without reaching the server; the reader's honest startup reaches the real
server, which asks it for its password, and a psycopg client through the door reads gold as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from asgard.core.sandbox import Limits
from asgard.core.settings import get_settings
from asgard.training.scripts import postgres_door, runner, store_doors
from asgard.training.scripts.store_doors import StoreAccess

PROBE = r"""
import json, os, socket, struct

def startup(params, code=196608, raw=None):
    pairs = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items())
    body = struct.pack("!i", code) + pairs + b"\0"
    packet = raw if raw is not None else struct.pack("!i", len(body) + 4) + body
    s = socket.create_connection(("127.0.0.1", 5432), timeout=20)
    try:
        s.sendall(packet)
        answer = b""
        while len(answer) < 2048:
            chunk = s.recv(2048)
            if not chunk:
                break
            answer += chunk
            if answer[:1] in (b"R", b"N"):
                break
    except OSError as error:
        return ["error", str(error)]
    finally:
        s.close()
    if not answer:
        return ["closed", ""]
    return [answer[:1].decode(), answer[5:].replace(b"\0", b"|").decode(errors="replace")]

cases = json.loads(os.environ["PROBE_CASES"])
results = {}
for name, case in cases.items():
    raw = bytes.fromhex(case["raw"]) if "raw" in case else None
    results[name] = startup(case.get("params", {}), case.get("code", 196608), raw)
print(json.dumps(results))
"""


def cases(profile, reader: str) -> dict[str, dict]:
    gold, airflow = profile.name("gold"), profile.name("airflow")
    cancel = (16).to_bytes(4, "big") + (80877102).to_bytes(4, "big") + bytes(8)
    return {
        "reader into gold": {"params": {"user": reader, "database": gold}},
        "the superuser": {"params": {"user": "postgres", "database": gold}},
        "the admin login": {"params": {"user": "asgard_admin", "database": "postgres"}},
        "the owner": {"params": {"user": profile.role, "database": gold}},
        "reader into airflow's": {"params": {"user": reader, "database": airflow}},
        "reader with no database (its own name)": {"params": {"user": reader}},
        "a replication connection": {"params": {"user": reader, "database": gold, "replication": "database"}},
        "options": {"params": {"user": reader, "database": gold, "options": "-c default_transaction_read_only=off"}},
        "a server setting": {
            "params": {"user": reader, "database": gold, "statement_timeout": "0", "work_mem": "64GB"}
        },
        "a repeated user": {"raw": _packet([("user", "postgres"), ("user", reader), ("database", gold)])},
        "a cancel request": {"raw": cancel.hex()},
        "a huge packet": {"raw": ((1 << 30).to_bytes(4, "big") + bytes(4)).hex()},
        "protocol 2": {"params": {"user": reader, "database": gold}, "code": 131072},
    }


def _packet(pairs: list[tuple[str, str]]) -> str:
    body = (196608).to_bytes(4, "big") + b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in pairs) + b"\0"
    return ((len(body) + 4).to_bytes(4, "big") + body).hex()


def reader_access(profile, passwords: dict[str, str]) -> StoreAccess:
    """The reader's login to the profile's feature store, as the doors are given it (S3 not under test)."""
    return StoreAccess(
        postgres_host="127.0.0.1", postgres_port=5432, user=profile.reader_role,
        password=passwords["reader_password"], registry_database=profile.name("feast"),
        gold_database=profile.name("gold"), s3_endpoint="http://127.0.0.1:1", s3_access_key="-", s3_secret_key="-",
        s3_readable="asgard/gold",
    )  # fmt: skip


def test_only_the_reader_into_the_feature_store_passes_the_door(profile_databases, tmp_path):
    profile, passwords = profile_databases
    reader = profile.reader_role
    access = reader_access(profile, passwords)
    python = Path(get_settings().script_python)
    env = runner.script_environment(python, {name: "x" for name in runner.INJECTED}, {})
    env["PROBE_CASES"] = json.dumps(cases(profile, reader))  # the run's folder is made anew for each run
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="asgard-doors-") as folder:
        sockets = Path(folder)
        sockets.chmod(0o755)
        with store_doors.opened(access, sockets) as doors:
            (sockets / "mlflow.sock").touch()  # the run's MLflow door is not under test here
            outcome = runner.run_script(
                runner.UserScript("probe.py", PROBE), python, tmp_path / "work", env, Limits(timeout_seconds=120),
                sockets=sockets, doors=doors, output=lines.append,
            )  # fmt: skip
            # A client of the platform's own kind, through the same door from this side: it reads gold.
            (sockets / ".s.PGSQL.5432").symlink_to(sockets / "postgres.sock")
            with psycopg.connect(
                host=str(sockets), port=5432, user=reader, password=passwords["reader_password"],
                dbname=profile.name("gold"), connect_timeout=10,
            ) as connection:  # fmt: skip
                assert connection.execute("SELECT current_user").fetchone() == (reader,)
            # A run holds at most MAX_CONNECTIONS through its door; a slot comes back when its connection ends.
            held = [
                psycopg.connect(
                    host=str(sockets),
                    port=5432,
                    user=reader,
                    password=passwords["reader_password"],
                    dbname=profile.name("gold"),
                    connect_timeout=10,
                )
                for _ in range(postgres_door.MAX_CONNECTIONS)
            ]
            try:
                with pytest.raises(psycopg.OperationalError, match="a run may hold 8 connections at once"):
                    psycopg.connect(host=str(sockets), port=5432, user=reader, password=passwords["reader_password"],
                                    dbname=profile.name("gold"), connect_timeout=10)  # fmt: skip
                # The server holds the reader to its statement timeout.
                assert held[0].execute("SHOW statement_timeout").fetchone() == ("10min",)
            finally:
                for connection in held:
                    connection.close()
            deadline = time.monotonic() + 10
            while True:
                try:
                    psycopg.connect(host=str(sockets), port=5432, user=reader, password=passwords["reader_password"],
                                    dbname=profile.name("gold"), connect_timeout=10).close()  # fmt: skip
                    break
                except psycopg.OperationalError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            for user, password in (("postgres", ""), (profile.role, passwords["postgres_password"])):
                try:
                    psycopg.connect(host=str(sockets), port=5432, user=user, password=password,
                                    dbname=profile.name("gold"), connect_timeout=10).close()  # fmt: skip
                except psycopg.OperationalError as error:
                    assert f"asgard door: the feature store's door lets in only {reader}" in str(error)
                else:
                    raise AssertionError(f"{user} passed the door")
    assert outcome.exit_code == 0, lines[-20:]
    answers = json.loads(lines[-1])
    # The reader's startup reached the real server, which asks for the password (R: authentication).
    assert answers["reader into gold"][0] == "R"
    refused = {
        "the superuser": "lets in only",
        "the admin login": "lets in only",
        "the owner": "lets in only",
        "reader into airflow's": "is not one of the feature store's databases",
        "reader with no database (its own name)": "is not one of the feature store's databases",
        "a replication connection": "startup parameters replication are not open",
        "options": "startup parameters options are not open",
        "a server setting": "startup parameters statement_timeout, work_mem are not open",
        "a repeated user": "an empty or repeated parameter",
        "a cancel request": "cancel requests are not relayed",
        "a huge packet": "a startup packet of 1073741824 bytes",
        "protocol 2": "protocol 2.0 is not spoken here",
    }
    for name, reason in refused.items():
        kind, text = answers[name]
        assert kind == "E" and "SFATAL" in text and "C28000" in text and "asgard door: " in text, (name, answers[name])
        assert reason in text, (name, text)


def test_every_role_of_the_production_profile_needs_its_password(profile_databases):
    """The doors let only the reader through, and that login still needs its password: no role of the
    profile (nor the server's superuser or the set-up's admin) logs in over TCP without the right one."""
    from sqlalchemy.engine import make_url

    from asgard.core.settings import Settings
    from asgard.local.postgres import READER_CONNECTIONS

    profile, passwords = profile_databases
    admin = make_url(Settings().postgres_admin_url.get_secret_value())
    roles = {
        profile.role: passwords["postgres_password"],
        profile.reader_role: passwords["reader_password"],
        admin.username: admin.password,
        "postgres": None,
    }
    for role, password in roles.items():
        for attempt in ("", "not-the-password"):
            with pytest.raises(psycopg.OperationalError, match="password"):
                psycopg.connect(host="127.0.0.1", port=5432, user=role, password=attempt,
                                dbname=profile.name("gold"), connect_timeout=10).close()  # fmt: skip
        if password is not None:
            with psycopg.connect(host="127.0.0.1", port=5432, user=role, password=password,
                                 dbname=profile.name("gold"), connect_timeout=10) as connection:  # fmt: skip
                assert connection.execute("SELECT current_user").fetchone() == (role,)
    with psycopg.connect(host="127.0.0.1", port=5432, user=admin.username, password=admin.password,
                         dbname="postgres", connect_timeout=10) as connection:  # fmt: skip
        limit, config = connection.execute(
            "SELECT rolconnlimit, rolconfig FROM pg_roles WHERE rolname = %s", (profile.reader_role,)
        ).fetchone()
    assert limit == READER_CONNECTIONS
    assert sorted(config) == ["idle_in_transaction_session_timeout=60s", "statement_timeout=600s"]


def test_a_scripts_sessions_end_with_its_side_and_with_the_run(profile_databases, tmp_path):
    """A reader may lift its own statement_timeout, and PostgreSQL does not notice a client gone while its
    query runs: the door cancels a session's query when the script's side closes, and every session's
    when the run ends (found by a hostile review: eight pg_sleep(1e9) left behind per run)."""
    import socket
    import threading

    from sqlalchemy.engine import make_url

    from asgard.core.settings import Settings

    profile, passwords = profile_databases
    reader = profile.reader_role
    access = reader_access(profile, passwords)
    admin = make_url(Settings().postgres_admin_url.get_secret_value())
    watcher = psycopg.connect(host="127.0.0.1", port=5432, user=admin.username, password=admin.password,
                              dbname="postgres", autocommit=True)  # fmt: skip

    def running(pid: int) -> bool:
        return watcher.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() is not None

    def sleeping(sockets: Path) -> tuple[psycopg.Connection, threading.Thread]:
        session = psycopg.connect(host=str(sockets), port=5432, user=reader, password=passwords["reader_password"],
                                  dbname=profile.name("gold"), autocommit=True)  # fmt: skip
        session.execute("SET statement_timeout = 0")  # the reader's own session: allowed, and no help

        def run() -> None:
            with contextlib.suppress(psycopg.Error):
                session.execute("SELECT pg_sleep(600)")

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            query = watcher.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (session.info.backend_pid,))
            if "pg_sleep" in (query.fetchone() or [""])[0]:
                return session, thread
            time.sleep(0.1)
        raise AssertionError("the query did not start")

    def gone(pid: int) -> bool:
        deadline = time.monotonic() + 15
        while running(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        return not running(pid)

    with watcher, tempfile.TemporaryDirectory(prefix="asgard-doors-") as folder:
        sockets = Path(folder)
        with store_doors.opened(access, sockets):
            (sockets / ".s.PGSQL.5432").symlink_to(sockets / "postgres.sock")
            # The reader sees no one's queries and signals no backend, its own role's included.
            with psycopg.connect(host=str(sockets), port=5432, user=reader, password=passwords["reader_password"],
                                 dbname=profile.name("gold")) as connection:  # fmt: skip
                for statement in (
                    "SELECT query FROM pg_stat_activity",
                    "SELECT pg_terminate_backend(1)",
                    "SELECT pg_stat_get_backend_activity(i) FROM pg_stat_get_backend_idset() i",
                    # A PL/pgSQL loop could catch the cancel that ends its session: no procedural code.
                    "DO $$BEGIN PERFORM 1; END$$",
                ):
                    with pytest.raises(psycopg.errors.InsufficientPrivilege):
                        connection.execute(statement)
                    connection.rollback()
            left, left_thread = sleeping(sockets)
            # The script's side goes (its process killed): the server's side is cancelled and closed.
            socket.socket(fileno=os.dup(left.pgconn.socket)).shutdown(socket.SHUT_RDWR)
            assert gone(left.info.backend_pid)
            left_thread.join(10)
            held, held_thread = sleeping(sockets)
        # The run ended with a query still running: cancelled too.
        assert gone(held.info.backend_pid)
        held_thread.join(10)
