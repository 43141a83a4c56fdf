"""The portal's domain under test: fresh databases (SQLite and PostgreSQL), Redis, apps, rows.

Databases: every test that asks for ``database`` runs twice, on a SQLite file of its own and on a
PostgreSQL schema of its own, each migrated with ``Database.upgrade()``. PostgreSQL gets one
database per test session (``toolcall_test_<random>``, created through the ``test`` database and
dropped at the end) and one schema per test, so runs and tests never meet.

Redis: database 4, flushed before and after each test.

Without PostgreSQL (or Redis) the tests that need it are skipped on a workstation and fail in CI
(``CI=true``), where both are part of the environment.

The fixtures themselves (``database``, ``app``, ``redis_db`` ...) are in ``conftest.py``; this
module holds what they and the tests build with.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator

import pytest
import redis
from helpers import suite_redis_url
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from webapp.models import Client, Exam, User

#: Where the test databases are made: any database of the server (trust auth, or a password in the URL).
POSTGRES_URL = os.environ.get("TOOLCALL_TEST_POSTGRES_URL") or "postgresql+psycopg://postgres@127.0.0.1/test"
#: The Redis database of these tests (the worker tests use 8-15).
REDIS_URL = suite_redis_url(4)
BACKENDS = ["sqlite", "postgresql"]
#: Settings read from the environment that would make a test depend on the shell it runs in.
PORTAL_ENVIRONMENT = [
    "SECRET_KEY",
    "SECRET_KEY_FALLBACKS",
    "TOOLCALL_PRODUCTION",
    "TOOLCALL_INSTANCE",
    "DATABASE_URL",
    "TOOLCALL_TOKEN_TIMEOUT_SECS",
    "TOOLCALL_SWEEP_SECS",
    "TOOLCALL_REQUEUE_GRACE_SECS",
    "TOOLCALL_FETCH_GIVE_UP_SECS",
    "TOOLCALL_FETCH_BACKOFF_BASE_SECS",
    "TOOLCALL_RATELIMIT_NEW_FETCHES",
    "TOOLCALL_MAX_OWED_FETCHES",
    "TOOLCALL_MAX_CONTENT_LENGTH",
    "TOOLCALL_TRUSTED_PROXIES",
    "TOOLCALL_PUBLIC_URL",
    "TOOLCALL_SESSION_LIFETIME_SECS",
    "HOST",
    "TOOLCALL_LTI_KEY_OVERLAP_DAYS",
    "PORT",
]


def unavailable(message: str) -> None:
    """Skip on a workstation; fail in CI, where every service is part of the environment."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: it is required)", pytrace=False)
    pytest.skip(message)


# ---- databases --------------------------------------------------------------------------------------


@contextlib.contextmanager
def scratch_postgres_database(prefix: str) -> Iterator[str]:
    """A new PostgreSQL database (``<prefix>_<random>``) for as long as the block runs; its URL."""
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    name = f"{prefix}_{secrets.token_hex(6)}"
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except OperationalError as e:
        admin.dispose()
        unavailable(f"PostgreSQL is not reachable at {POSTGRES_URL}: {e.orig}")
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@contextlib.contextmanager
def scratch_postgres_schema(server: str) -> Iterator[str]:
    """A new schema (``t_<random>``) in the database at ``server`` for as long as the block runs; the
    URL that makes it the search path."""
    schema = f"t_{secrets.token_hex(6)}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        url = make_url(server).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        admin.dispose()


def count(session: Session, model: type) -> int:
    return session.scalar(select(func.count()).select_from(model))


# ---- rows -------------------------------------------------------------------------------------------


def add_client(session: Session, name: str = "vendor") -> Client:
    client = Client(
        name=name,
        receive_start_token_url=f"https://{name}.example.org/start/",
        receive_result_token_url=f"https://{name}.example.org/result/",
    )
    session.add(client)
    session.flush()
    return client


def add_tool(session: Session, client: Client, slug: str = "excel") -> Exam:
    tool = Exam(client=client, slug=slug, name=slug.title())
    session.add(tool)
    session.flush()
    return tool


def add_user(session: Session, username: str = "candidate", password: str | None = None) -> User:
    """A user; without ``password`` one that cannot log in (hashing takes time the tests need not spend)."""
    user = User(username=username, password_hash="!")
    if password is not None:
        user.set_password(password)
    session.add(user)
    session.flush()
    return user


# ---- Redis ------------------------------------------------------------------------------------------


def redis_client() -> redis.Redis:
    """A client of its own on the tests' Redis database."""
    return redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3, socket_timeout=10)


@contextlib.contextmanager
def empty_redis(url: str) -> Iterator[redis.Redis]:
    """A client on the Redis database at ``url``, flushed before and after the block.

    Unreachable Redis skips the test on a workstation and fails it in CI."""
    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10)
    try:
        client.ping()
    except redis.ConnectionError as e:
        client.close()
        unavailable(f"Redis is not reachable at {url}: {e}")
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


# ---- the app ----------------------------------------------------------------------------------------


# ---- logging in through the forms ---------------------------------------------------------------------


def csrf(html: bytes) -> str:
    """The CSRF token of the (first) form on a page."""
    return re.search(rb'name="csrf_token"[^>]*value="([^"]+)"', html).group(1).decode()


def login(client, username: str, password: str):
    """Post the login form as a browser would; returns the answer."""
    token = csrf(client.get("/accounts/login/").data)
    return client.post(
        "/accounts/login/", data={"username": username, "password": password, "csrf_token": token}
    )


def logged_in(app, username: str, password: str):
    """A test client logged in as ``username``."""
    client = app.test_client()
    assert login(client, username, password).status_code == 302
    return client
