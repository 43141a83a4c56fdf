"""Fixtures shared by the whole suite (pytest finds them here; tests ask for them by name).

    postgres_url        a PostgreSQL database for this test session, dropped at its end
    database_url        an empty database of the test's own: SQLite file, or PostgreSQL schema (both run)
    database            that database, migrated
    redis_db            the portal tests' Redis database, empty, flushed again afterwards
    portal_environment  the portal's settings with none of them taken from the shell
    app                 a portal on a SQLite file of its own, schema not created yet
    app_on_each_database  the same portal on each database in turn

What they build with (rows, logging in, scratch databases) is in ``portal_support``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from flask import Flask
from portal_support import (
    BACKENDS,
    PORTAL_ENVIRONMENT,
    REDIS_URL,
    empty_redis,
    scratch_postgres_database,
    scratch_postgres_schema,
)

from webapp import create_app
from webapp.db import Database


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The URL of a database made for this test session, dropped at its end."""
    with scratch_postgres_database("toolcall_test") as url:
        yield url


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of the test's own: a SQLite file, or a PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'toolcall.sqlite3'}"
        return
    with scratch_postgres_schema(request.getfixturevalue("postgres_url")) as url:
        yield url


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """A migrated database of the test's own (runs on each backend)."""
    database = Database(database_url)
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture
def redis_db() -> Iterator[redis.Redis]:
    """The tests' Redis database, empty, flushed again afterwards."""
    with empty_redis(REDIS_URL) as client:
        yield client


@pytest.fixture
def portal_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The portal's settings with none of them taken from the shell that runs the tests."""
    for name in PORTAL_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def app(tmp_path: Path, portal_environment: pytest.MonkeyPatch) -> Iterator[Flask]:
    """A portal on a SQLite file of its own, with its own instance folder; schema not created yet."""
    yield from _portal(tmp_path, f"sqlite:///{tmp_path / 'portal.sqlite3'}")


@pytest.fixture
def app_on_each_database(
    database_url: str, tmp_path: Path, portal_environment: pytest.MonkeyPatch
) -> Iterator[Flask]:
    """``app`` once on SQLite and once on PostgreSQL (``database_url``); schema not created yet."""
    yield from _portal(tmp_path, database_url)


def _portal(tmp_path: Path, database_url: str) -> Iterator[Flask]:
    app = create_app(
        {
            "TESTING": True,
            "INSTANCE_PATH": tmp_path / "instance",
            "DATABASE_URL": database_url,
            "REDIS_URL": REDIS_URL,
            "SECRET_KEY": "a test key",
        }
    )
    yield app
    app.extensions["db"].dispose()
