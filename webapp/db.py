"""Database engine and sessions, with or without a Flask app; schema migrations (Alembic).

``Database(url)`` owns an engine and a session factory. The web app keeps one in
``app.extensions["db"]`` and hands each request its own session (``get_session``); Celery tasks
build theirs from the same settings.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from flask import current_app, g
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: Idle connections a process keeps to its database (see ``Database``); at most 10 more are opened
#: beyond it at busy moments (SQLAlchemy's max_overflow), and closed when handed back.
POOL_SIZE = 32


class Database:
    def __init__(self, url: str):
        self.url = url
        # Keep as many idle connections as the busiest process uses at once: the callbacks worker
        # runs 32 threads (Procfile). With SQLAlchemy's default of 5, every connection handed back
        # while 5 are idle is closed: a busy worker opened a new PostgreSQL connection (a new
        # server backend) for about one fetch in four (bench/result_storm.py), and on SQLite a new
        # file handle with its pragmas. Connections are only opened when needed: a web process
        # with 4 threads still holds about 4.
        options: dict = {"future": True, "pool_size": POOL_SIZE}
        if url.startswith("sqlite"):
            # Several processes (web, workers) share the file: wait for locks instead of failing.
            options["connect_args"] = {"timeout": 30, "check_same_thread": False}
        else:
            options["pool_pre_ping"] = True  # a database restart must not break the next request
        self.engine: Engine = create_engine(url, **options)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits when the block succeeds and rolls back when it raises."""
        session = self.sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def begin(self) -> AbstractContextManager[Connection]:
        """A Core connection in a transaction that commits when the block succeeds and rolls back
        when it raises: for hot paths that need no ORM objects (a result fetch)."""
        return self.engine.begin()

    def upgrade(self) -> None:
        """Create or upgrade the schema to the newest migration (safe to run twice)."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
    # synchronous stays FULL (SQLite's default): with NORMAL, a commit the portal has answered for
    # (a report's owed fetch, a stored result) could be lost to a power cut, and the result storm
    # showed no gain from it (docs/portal-performance.md).
    cursor.close()


def get_session() -> Session:
    """The current request's session (closed when the request ends)."""
    if "db_session" not in g:
        g.db_session = current_app.extensions["db"].sessions()
    return g.db_session


def close_session(_exc: BaseException | None = None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.close()
