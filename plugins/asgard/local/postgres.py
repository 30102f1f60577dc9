"""The production profile's roles and databases in a PostgreSQL server, created idempotently.

An owner role (``ASGARD_DATABASE_PREFIX``) owns one database per store, which no other role may
connect to (PostgreSQL's default lets every role in); a reader role (``<prefix>_reader``) may
connect to the feature store's two (Feast's registry and the gold catalog) and only SELECT there, in
the tables there now and in those the owner creates later. Their passwords are the
caller's (kept in the profile's state folder).
"""

from __future__ import annotations

from collections.abc import Callable

from asgard.core.settings import Settings
from asgard.local.processes import ServiceError

DATABASES = ("airflow", "mlflow", "feast", "gold", "monitoring")
# The reader role's server-side limits (a run's door holds at most 8 connections of it at once, and
# ends them with the run: a script may change its own session's settings).
READER_CONNECTIONS = 32
READER_SETTINGS = {"statement_timeout": "600s", "idle_in_transaction_session_timeout": "60s"}
# What a user script reading the feature store may read, as the reader role.
READER_DATABASES = ("feast", "gold")


class ProfileDatabases:
    """The roles and databases of one installation's settings; ``passwords`` gives the roles' passwords
    (keys ``postgres_password`` and ``reader_password``)."""

    def __init__(self, settings: Settings, passwords: Callable[[], dict[str, str]]) -> None:
        self.settings = settings
        self.passwords = passwords

    @property
    def role(self) -> str:
        return self.settings.database_prefix

    @property
    def reader_role(self) -> str:
        return f"{self.settings.database_prefix}_reader"

    def name(self, purpose: str) -> str:
        return f"{self.settings.database_prefix}_{purpose}"

    def url(self, purpose: str, driver: str = "postgresql+psycopg2") -> str:
        """The SQLAlchemy URL of one of the databases, with the owner's login."""
        from sqlalchemy.engine import make_url

        server = make_url(self.admin_url())
        url = server.set(
            drivername=driver, username=self.role, password=self.passwords()["postgres_password"],
            database=self.name(purpose),
        )  # fmt: skip
        return url.render_as_string(hide_password=False)

    def admin_url(self) -> str:
        """The admin login as libpq takes it (an SQLAlchemy driver suffix, if given, dropped)."""
        from sqlalchemy.engine import make_url

        url = make_url(self.settings.postgres_admin_url.get_secret_value()).set(drivername="postgresql")
        return url.render_as_string(hide_password=False)

    def prepare(self, *, log: Callable[[str], None] = print) -> None:
        """The roles and databases (created when missing; the passwords set to the caller's)."""
        import psycopg
        from psycopg import sql

        try:
            connection = psycopg.connect(self.admin_url(), autocommit=True)
        except psycopg.OperationalError as error:
            raise ServiceError(
                f"postgres: cannot connect with ASGARD_POSTGRES_ADMIN_URL ({error}); is PostgreSQL running?"
            ) from None
        passwords = self.passwords()
        with connection:
            # One installation's set-up at a time (two ./asgard start commands at once): concurrent
            # ALTER ROLE or GRANT on the same catalog rows fail with "tuple concurrently updated".
            # The lock goes with the connection, after the grants below.
            connection.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"asgard-prepare:{self.role}",))
            # A password follows the state folder: a role whose password file was lost is given the new one.
            for role, password in ((self.role, "postgres_password"), (self.reader_role, "reader_password")):
                exists = connection.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
                statement = ("ALTER" if exists else "CREATE") + " ROLE {} LOGIN PASSWORD {}"
                connection.execute(sql.SQL(statement).format(sql.Identifier(role), sql.Literal(passwords[password])))
            reader = sql.Identifier(self.reader_role)
            # Scripts share the reader: together they may not take the server's connections (Airflow's,
            # MLflow's) nor hold one with a statement or an open transaction for ever.
            connection.execute(
                sql.SQL("ALTER ROLE {} CONNECTION LIMIT {}").format(reader, sql.Literal(READER_CONNECTIONS))
            )
            for name, value in READER_SETTINGS.items():
                connection.execute(
                    sql.SQL("ALTER ROLE {} SET {} = {}").format(reader, sql.SQL(name), sql.Literal(value))
                )
            created = []
            for purpose in DATABASES:
                name = self.name(purpose)
                if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                    continue
                owner = sql.Identifier(self.role)
                connection.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), owner))
                created.append(name)
            for purpose in DATABASES:  # PostgreSQL lets every role connect and make temp tables: not here
                connection.execute(
                    sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(self.name(purpose)))
                )
            for purpose in READER_DATABASES:
                self._grant_reading(purpose)
        log(f"postgres: role {self.role}, databases {', '.join(self.name(p) for p in DATABASES)}"
            + (f" (created {', '.join(created)})" if created else ""))  # fmt: skip

    def _grant_reading(self, purpose: str) -> None:
        """The reader may SELECT in one database: in the tables there and in those its owner creates later."""
        import psycopg
        from psycopg import sql
        from sqlalchemy.engine import make_url

        url = make_url(self.admin_url()).set(database=self.name(purpose)).render_as_string(hide_password=False)
        names = {
            "database": sql.Identifier(self.name(purpose)),
            "owner": sql.Identifier(self.role),
            "reader": sql.Identifier(self.reader_role),
        }
        with psycopg.connect(url, autocommit=True) as connection:
            for statement in (
                "GRANT CONNECT ON DATABASE {database} TO {reader}",
                "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
                "GRANT USAGE ON SCHEMA public TO {reader}",
                "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {reader}",
                "ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA public GRANT SELECT ON TABLES TO {reader}",
                # Every run's script is the reader: none may see another's queries or cancel or end its
                # sessions (PostgreSQL lets a role signal its own backends). Here, where only the reader
                # and the owner connect; superusers are not held by it.
                "REVOKE EXECUTE ON FUNCTION pg_catalog.pg_cancel_backend(integer),"
                " pg_catalog.pg_terminate_backend(integer, bigint), pg_catalog.pg_stat_get_activity(integer),"
                " pg_catalog.pg_stat_get_backend_idset(), pg_catalog.pg_stat_get_backend_activity(integer),"
                " pg_catalog.pg_stat_get_backend_pid(integer), pg_catalog.pg_stat_get_backend_userid(integer)"
                " FROM PUBLIC",
                "REVOKE SELECT ON pg_catalog.pg_stat_activity FROM PUBLIC",
                # No procedural code: a PL/pgSQL loop can catch the cancel that ends a script's session
                # (and its own statement timeout) and outlive the run.
                "REVOKE USAGE ON LANGUAGE plpgsql FROM PUBLIC",
            ):
                connection.execute(sql.SQL(statement).format(**names))

    def drop(self) -> None:
        """Remove the databases and roles (``./asgard`` never does; tests clean up with it)."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.admin_url(), autocommit=True) as connection:
            for purpose in DATABASES:
                name = sql.Identifier(self.name(purpose))
                connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
            for role in (self.reader_role, self.role):
                connection.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
