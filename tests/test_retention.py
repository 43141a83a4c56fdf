"""Retention (webapp/retention.py, ``flask --app webapp prune``): what is pruned, what is kept, in
batches, again and again, and while the system runs. On SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from portal_support import add_client, add_tool, add_user
from sqlalchemy import func, select, update

from webapp import lifecycle, retention
from webapp.lifecycle import Status
from webapp.models import Client, Exam, ResultFetch, ToolCall, ToolCallLog, ToolCallResult, User, utcnow

YEAR = timedelta(days=365)
HAPPY = [Status.START_TK_SENT, Status.START_DATA_SENT, Status.RESULT_TK_RECEIVED, Status.RESULT_RECEIVED_OK,
         Status.RESULT_SAVED, Status.FINISHED_OK]  # fmt: skip


@pytest.fixture(name="db")
def db_fixture(database):
    with database.session() as session:
        add_tool(session, add_client(session, "vendor"), "excel")
        add_user(session, "candidate")
    return database


def attempt(db, statuses=HAPPY, age: timedelta = timedelta(0), result: bool = True) -> int:
    """An attempt moved through ``statuses`` whose every time (start, log, end, result) lies ``age``
    in the past; its id."""
    with db.session() as session:
        tool = session.scalar(select(Exam))
        toolcall = lifecycle.create(session, tool, session.scalar(select(User)))
        for status in statuses:
            lifecycle.advance(session, toolcall, (status, f"to {status}"))
        if result:
            session.add(ToolCallResult(toolcall_id=toolcall.id, data="{}", token=f"R{toolcall.id}", persnr="N1",
                                       exam="excel", passed=True))  # fmt: skip
        session.flush()
        then = utcnow() - age
        session.execute(
            update(ToolCallLog).where(ToolCallLog.toolcall_id == toolcall.id).values(timestamp=then)
        )
        session.execute(
            update(ToolCall)
            .where(ToolCall.id == toolcall.id)
            .values(started=then, ended=then if toolcall.ended else None)
        )
        return toolcall.id


def fetch(db, state: str, age: timedelta = timedelta(0), body: str = "a body", toolcall_id=None) -> int:
    with db.session() as session:
        row = ResultFetch(
            client_id=session.scalar(select(Client.id)), token=f"R-{state}-{age}-{utcnow().timestamp()}",
            state=state, reported_at=utcnow() - age, body=body, toolcall_id=toolcall_id,
        )  # fmt: skip
        session.add(row)
        session.flush()
        return row.id


def log_count(db, toolcall_id: int) -> int:
    with db.session() as session:
        return session.scalar(
            select(func.count()).select_from(ToolCallLog).where(ToolCallLog.toolcall_id == toolcall_id)
        )


def fetch_ids(db) -> set[int]:
    with db.session() as session:
        return set(session.scalars(select(ResultFetch.id)))


def test_the_logs_of_attempts_ended_before_the_cutoff_are_pruned_their_attempts_and_results_kept(db):
    old = attempt(db, age=YEAR + timedelta(days=1))
    recent = attempt(db, age=YEAR - timedelta(days=1))
    done = retention.prune(db, YEAR)
    assert done.log_rows == 7 and log_count(db, old) == 0 and log_count(db, recent) == 7
    with db.session() as session:
        assert session.get(ToolCall, old).status == "finished-ok"
        assert session.scalar(select(func.count()).select_from(ToolCallResult)) == 2


def test_an_old_attempt_that_has_not_ended_keeps_its_log(db):
    still_open = attempt(db, [Status.START_TK_SENT, Status.START_DATA_SENT], age=2 * YEAR, result=False)
    retention.prune(db, YEAR)
    assert log_count(db, still_open) == 3


def test_an_old_attempt_a_late_result_ended_again_lately_keeps_its_whole_log(db):
    revived = attempt(db, [Status.START_TK_SENT, Status.FINISHED_ERR], age=2 * YEAR, result=False)
    with db.session() as session:
        session.execute(update(ToolCall).where(ToolCall.id == revived).values(ended=utcnow()))
    retention.prune(db, YEAR)
    assert log_count(db, revived) == 3


def test_finished_fetches_reported_before_the_cutoff_are_deleted_owed_ones_never(db):
    old_done, old_failed = fetch(db, "done", 2 * YEAR), fetch(db, "failed", 2 * YEAR)
    old_owed = fetch(db, "owed", 2 * YEAR)
    recent = {fetch(db, "done", YEAR - timedelta(days=1)), fetch(db, "failed", timedelta(days=3))}
    done = retention.prune(db, YEAR)
    assert done.fetches == 2 and fetch_ids(db) == recent | {old_owed}
    assert old_done not in fetch_ids(db) and old_failed not in fetch_ids(db)


def test_kept_bodies_of_done_fetches_may_go_sooner(db):
    month_old = fetch(db, "done", timedelta(days=40))
    fresh = fetch(db, "done", timedelta(days=2))
    failed = fetch(db, "failed", timedelta(days=40))
    done = retention.prune(db, YEAR, bodies_older_than=timedelta(days=30))
    with db.session() as session:
        bodies = {i: session.get(ResultFetch, i).body for i in (month_old, fresh, failed)}
    assert done.bodies == 1 and bodies == {month_old: "", fresh: "a body", failed: "a body"}


def test_pruning_goes_in_batches_and_a_second_run_finds_nothing(db):
    old = [attempt(db, age=2 * YEAR) for _ in range(5)]
    for _ in range(7):
        fetch(db, "done", 2 * YEAR)
    done = retention.prune(db, YEAR, batch=4)
    assert (done.log_rows, done.fetches) == (35, 7)
    assert done.batches >= 35 // 4 + 7 // 4
    assert all(log_count(db, i) == 0 for i in old)
    again = retention.prune(db, YEAR, batch=4)
    assert (again.log_rows, again.fetches, again.bodies) == (0, 0, 0)


def test_a_dry_run_counts_the_same_and_changes_nothing(db):
    old = attempt(db, age=2 * YEAR)
    fetch(db, "failed", 2 * YEAR)
    fetch(db, "done", timedelta(days=60))
    dry = retention.prune(db, YEAR, bodies_older_than=timedelta(days=30), batch=3, dry_run=True)
    assert (dry.log_rows, dry.fetches, dry.bodies) == (7, 1, 1)
    assert log_count(db, old) == 7 and len(fetch_ids(db)) == 2
    real = retention.prune(db, YEAR, bodies_older_than=timedelta(days=30), batch=3)
    assert (real.log_rows, real.fetches, real.bodies) == (7, 1, 1)


def test_a_cutoff_shorter_than_a_day_is_refused(db):
    with pytest.raises(ValueError, match="at least 1 day"):
        retention.prune(db, timedelta(hours=23))


def test_pruning_while_attempts_start_and_finish_loses_nothing_new(db):
    old = [attempt(db, age=2 * YEAR) for _ in range(10)]
    stop, errors, made = threading.Event(), [], []

    def work() -> None:
        try:
            while not stop.is_set():
                made.append(attempt(db))
        except BaseException as e:  # reported below
            errors.append(e)

    worker = threading.Thread(target=work)
    worker.start()
    try:
        done = retention.prune(db, YEAR, batch=5)
    finally:
        stop.set()
        worker.join(timeout=60)
    assert errors == [] and done.log_rows == 70 and made
    assert all(log_count(db, i) == 0 for i in old) and all(log_count(db, i) == 7 for i in made)


@pytest.mark.parametrize(
    ("text", "days"), [("365d", 365), ("52w", 364), ("36h", 1.5), ("2880m", 2), (" 30D ", 30)]
)
def test_ages_are_read_in_weeks_days_hours_or_minutes(text, days):
    assert retention.parse_age(text) == timedelta(days=days)


@pytest.mark.parametrize("text", ["365", "d", "1y", "-3d", "3.5d", ""])
def test_an_age_that_is_not_one_says_how_to_write_it(text):
    with pytest.raises(ValueError, match="write e.g. 365d"):
        retention.parse_age(text)


# ---- the command --------------------------------------------------------------------------------------


@pytest.fixture(name="cli_app")
def cli_app_fixture(app, redis_db):
    app.extensions["db"].upgrade()
    with app.extensions["db"].session() as session:
        add_tool(session, add_client(session, "vendor"), "excel")
        add_user(session, "candidate")
    return app


def test_the_prune_command_says_what_it_pruned(cli_app):
    db = cli_app.extensions["db"]
    attempt(db, age=2 * YEAR)
    fetch(db, "done", 2 * YEAR)
    result = cli_app.test_cli_runner().invoke(args=["prune", "--older-than", "365d", "--batch", "2"])
    assert result.exit_code == 0, result.output
    assert (
        "pruned 7 log rows, 1 finished result fetches and 0 kept bodies older than 365 days" in result.output
    )


@pytest.mark.parametrize(
    ("age", "words"), [("36h", "36 hours"), ("2w", "14 days"), ("1d", "1 day"), ("1500m", "25 hours")]
)
def test_the_prune_command_says_the_cutoff_in_the_units_it_was_given_in(cli_app, age, words):
    result = cli_app.test_cli_runner().invoke(args=["prune", "--older-than", age, "--dry-run"])
    assert result.exit_code == 0 and f"older than {words} (" in result.output, result.output


def test_the_prune_command_dry_run_changes_nothing(cli_app):
    db = cli_app.extensions["db"]
    old = attempt(db, age=2 * YEAR)
    result = cli_app.test_cli_runner().invoke(args=["prune", "--older-than", "365d", "--dry-run"])
    assert result.exit_code == 0 and "would prune 7 log rows" in result.output
    assert log_count(db, old) == 7


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prune"], "Missing option '--older-than'"),
        (["prune", "--older-than", "365"], "write e.g. 365d"),
        (["prune", "--older-than", "12h"], "at least 1 day"),
        (["prune", "--older-than", "365d", "--bodies-older-than", "1h"], "at least 1 day"),
        (["prune", "--older-than", "365d", "--batch", "0"], "--batch"),
    ],
)
def test_the_prune_command_refuses_bad_arguments_with_a_usage_error(cli_app, args, message):
    result = cli_app.test_cli_runner().invoke(args=args)
    assert result.exit_code == 2 and message in result.output
