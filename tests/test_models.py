"""The data model (docs/api.md §7, §3): the migrations make the API's tables, result fetches are unique
per (client, token), users get a pseudonymous persnr and hashed passwords. On SQLite and PostgreSQL."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from portal_support import (
    add_client,
    add_user,
    count,
)
from sqlalchemy import func, inspect, select
from sqlalchemy.exc import IntegrityError

from webapp.db import MIGRATIONS, Database
from webapp.models import Base, ResultFetch, ToolCall, User, utcnow

#: The tables of §7 with the columns the API names (more are allowed), and the users table.
SPEC_TABLES = {
    "toolcall_client": {"name", "receive_start_token_url", "receive_result_token_url", "secret"},
    "toolcall_tool": {"client_id", "slug", "name", "description", "icon", "restartable", "deadline_minutes"},
    "toolcall_toolcall": {"id", "tool_id", "user_id", "started", "ended", "status", "attempt"},
    "toolcall_toolcalllog": {"id", "toolcall_id", "timestamp", "status", "details"},
    "toolcall_toolcallresult": {"toolcall_id", "data", "late"},
    "toolcall_resultfetch": {
        "client_id",
        "token",
        "state",
        "attempts",
        "next_attempt_at",
        "last_error",
        "body",
        "toolcall_id",
        "reported_at",
    },
    "toolcall_user": {"username", "password_hash", "persnr", "extra_time"},
}
PERSNR = re.compile(r"N[0-9]{32}")


def head_revision() -> str:
    config_dir = ScriptDirectory(str(MIGRATIONS))
    return config_dir.get_current_head()


def current_revision(database: Database) -> str | None:
    with database.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


# ---- migrations -------------------------------------------------------------------------------------


def test_the_migrations_create_every_table_of_the_spec_with_its_fixed_name(database):
    tables = set(inspect(database.engine).get_table_names())
    assert set(SPEC_TABLES) <= tables


@pytest.mark.parametrize("table", sorted(SPEC_TABLES))
def test_each_table_has_the_columns_the_spec_names(database, table):
    columns = {column["name"] for column in inspect(database.engine).get_columns(table)}
    assert SPEC_TABLES[table] <= columns, f"{table} lacks {SPEC_TABLES[table] - columns}"


def test_the_migrations_build_exactly_the_models_tables(database):
    with database.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_upgrading_twice_is_safe_and_keeps_the_data(database_url):
    database = Database(database_url)
    try:
        database.upgrade()
        with database.session() as session:
            add_user(session, "ada")
        database.upgrade()
        assert current_revision(database) == head_revision()
        with database.session() as session:
            assert count(session, User) == 1
    finally:
        database.dispose()


def upgrade_to(database: Database, revision: str) -> None:
    """Migrate ``database`` to ``revision`` (``Database.upgrade`` goes to the newest one)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with database.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def test_attempt_numbers_taken_twice_are_moved_past_the_highest_when_they_become_unique(database_url):
    """Before attempt numbers were unique, two starts at once could both take the same number; the
    migration that makes them unique renumbers what the race left, in the order it was made."""
    database = Database(database_url)
    try:
        upgrade_to(database, "0001")
        # The rows are written as the tables were then: the models know columns added since.
        with database.engine.begin() as connection:
            insert = connection.exec_driver_sql
            insert(
                "INSERT INTO toolcall_client (id, name, receive_start_token_url, receive_result_token_url) "
                "VALUES (1, 'vendor', 'https://v.example.org/s/', 'https://v.example.org/r/')"
            )
            for exam_id, slug in [(1, "excel"), (2, "word")]:
                insert(
                    "INSERT INTO toolcall_tool (id, client_id, slug, name, description, icon, restartable, "
                    f"deadline_minutes) VALUES ({exam_id}, 1, '{slug}', '{slug}', '', '', true, 240)"
                )
            insert(
                "INSERT INTO toolcall_user (id, username, password_hash, first_name, last_name, email, is_admin, "
                "extra_time, persnr, created) VALUES (1, 'candidate', '!', '', '', '', false, false, 'N1', "
                "CURRENT_TIMESTAMP)"
            )
            for exam_id, number in [(1, 1), (1, 1), (1, 2), (2, 1), (1, 2), (1, 1)]:
                insert(
                    "INSERT INTO toolcall_toolcall (tool_id, user_id, started, status, attempt) "
                    f"VALUES ({exam_id}, 1, CURRENT_TIMESTAMP, 'finished-err', {number})"
                )
        database.upgrade()
        with database.session() as session:
            rows = session.execute(select(ToolCall.tool_id, ToolCall.attempt).order_by(ToolCall.id)).all()
        assert [number for _, number in rows] == [1, 3, 2, 1, 4, 5]
        with pytest.raises(IntegrityError), database.session() as session:
            session.add(ToolCall(tool_id=rows[0].tool_id, user_id=1, status="initial", attempt=5))
            session.flush()
    finally:
        database.dispose()


# ---- result fetches ---------------------------------------------------------------------------------


def test_a_result_token_is_owed_once_per_client(database):
    with pytest.raises(IntegrityError), database.session() as session:
        client = add_client(session)
        session.add_all([ResultFetch(client=client, token="R-1"), ResultFetch(client=client, token="R-1")])
        session.flush()


def test_two_clients_may_use_the_same_result_token(database):
    with database.session() as session:
        for name in ("vendor-a", "vendor-b"):
            session.add(ResultFetch(client=add_client(session, name), token="R-1"))
    with database.session() as session:
        assert count(session, ResultFetch) == 2


# ---- users ------------------------------------------------------------------------------------------


def test_a_user_gets_a_persnr_of_n_and_32_digits(database):
    with database.session() as session:
        persnr = add_user(session).persnr
    assert PERSNR.fullmatch(persnr), persnr


def test_a_persnr_stays_with_its_user(database):
    with database.session() as session:
        user = add_user(session)
        user_id, persnr = user.id, user.persnr
    with database.session() as session:
        assert session.get(User, user_id).persnr == persnr


def test_two_users_cannot_share_a_persnr(database):
    with pytest.raises(IntegrityError), database.session() as session:
        first = add_user(session, "ada")
        second = User(username="bob", password_hash="x", persnr=first.persnr)
        session.add(second)
        session.flush()


def test_the_persnr_is_not_derived_from_the_database_id(database):
    with database.session() as session:
        users = [add_user(session, f"user{n}") for n in range(12)]
        pairs = [(user.id, int(user.persnr[1:])) for user in users]
    assert len({persnr for _, persnr in pairs}) == len(pairs)
    # The original's persnr was the id XOR a constant; neither XOR nor difference is constant here.
    assert len({user_id ^ persnr for user_id, persnr in pairs}) == len(pairs)
    assert len({persnr - user_id for user_id, persnr in pairs}) == len(pairs)


def test_passwords_are_stored_hashed_and_salted(database):
    password = "correct horse battery staple"
    with database.session() as session:
        add_user(session, "ada", password)
        add_user(session, "bob", password)
    with database.session() as session:
        hashes = [user.password_hash for user in session.query(User).order_by(User.username)]
    assert all(password not in stored for stored in hashes)
    assert hashes[0] != hashes[1]


def test_a_password_checks_against_its_hash(database):
    with database.session() as session:
        add_user(session, "ada", "correct horse")
    with database.session() as session:
        user = session.query(User).one()
        assert user.check_password("correct horse")
        assert not user.check_password("correct horse ")
        assert not user.check_password("")


# ---- times ------------------------------------------------------------------------------------------


def test_times_come_back_timezone_aware_in_utc(database):
    with database.session() as session:
        user_id = add_user(session).id
    with database.session() as session:
        created = session.get(User, user_id).created
    assert created.utcoffset() == timedelta(0)
    assert abs(utcnow() - created) < timedelta(minutes=5)  # comparable with utcnow() on every backend


def test_a_time_with_another_offset_is_stored_as_the_same_moment(database):
    moment = datetime(2026, 11, 23, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    with database.session() as session:
        fetch = ResultFetch(client=add_client(session), token="R-1", next_attempt_at=moment)
        session.add(fetch)
        session.flush()
        fetch_id = fetch.id
    with database.session() as session:
        assert session.get(ResultFetch, fetch_id).next_attempt_at == datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
        due = session.scalar(select(func.count()).where(ResultFetch.next_attempt_at <= moment))
        assert due == 1
