"""The sweep: bounded, idempotent, never overlapping; expiry in set-based batches (the life of a
result fetch, phase 5).

The first tests run the sweep's parts in this process on each database (SQLite and PostgreSQL):
which owed fetches a run takes (``fetches.take_due``) and which attempts it ends
(``fetches.expire``), and a whole run (``worker.fetch_tasks.run_sweep``) against the portal tests'
Redis as broker, with no worker consuming, so the queue's messages can be counted. The last one is
the whole system: a backlog of owed fetches whose messages were lost, drained by a real
``callbacks`` worker (Redis database 7) as beat's sweeps queue it, each fetch queued about once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fetch_support import Portal, new_token, result_body, running_portal
from helpers import CALLBACKS_KEY, suite_redis_url, wait_until
from portal_support import REDIS_URL, add_client, add_tool, add_user, scratch_postgres_schema
from sqlalchemy import func, insert, select, update
from vendor_stub import Answer, VendorStub

from webapp import fetches, lifecycle
from webapp.lifecycle import Status
from webapp.models import Client, ResultFetch, ToolCall, ToolCallLog, utcnow
from worker.app import make_app
from worker.fetch_tasks import SWEEP_LOCK, run_sweep

GRACE = 30
CONFIG = {
    "TOOLCALL_REQUEUE_GRACE_SECS": GRACE,
    "TOOLCALL_TOKEN_TIMEOUT_SECS": 200,
    "TOOLCALL_SWEEP_BATCH": 1000,  # the default
}


def owed(database, n: int, overdue=timedelta(hours=1), **values) -> list[int]:
    """``n`` owed fetches of one client, due one second apart, the first ``overdue`` ago; ids in
    that order."""
    with database.session() as session:
        client = session.scalar(select(Client).where(Client.name == "sweep-vendor")) or add_client(
            session, "sweep-vendor"
        )
        first = utcnow() - overdue
        base = (session.scalar(select(func.max(ResultFetch.id))) or 0) + 1
        session.execute(
            insert(ResultFetch),
            [
                {"id": base + i, "client_id": client.id, "token": f"R-{base + i}", "state": "owed",
                 "reported_at": first + timedelta(seconds=i), "next_attempt_at": first + timedelta(seconds=i),
                 "attempts": 0, "last_error": "", "body": "", **values}
                for i in range(n)
            ],
        )  # fmt: skip
    return list(range(base, base + n))


def change(database, fetch_ids, **values) -> None:
    with database.session() as session:
        session.execute(update(ResultFetch).where(ResultFetch.id.in_(fetch_ids)).values(**values))


# ---- what a run takes --------------------------------------------------------------------------------


def test_a_run_takes_at_most_its_batch_oldest_due_first(database):
    ids = owed(database, 25)
    assert fetches.take_due(database, CONFIG, 10) == ids[:10]


def test_a_fetch_taken_is_not_taken_again_while_its_message_may_still_be_waiting(database):
    ids = owed(database, 25)
    first = fetches.take_due(database, CONFIG, 10)
    second = fetches.take_due(database, CONFIG, 100)
    assert second == ids[10:] and not set(first) & set(second)
    assert fetches.take_due(database, CONFIG, 100) == []


def test_a_fetch_still_owed_after_the_grace_is_taken_again_its_message_was_lost(database):
    ids = owed(database, 3)
    assert fetches.take_due(database, CONFIG, 10) == ids
    change(database, ids[:1], queued_at=utcnow() - timedelta(seconds=GRACE + 1))
    assert fetches.take_due(database, CONFIG, 10) == ids[:1]


def test_a_run_records_when_it_queued_each_fetch(database):
    [fetch_id] = owed(database, 1)
    before = utcnow()
    fetches.take_due(database, CONFIG, 10)
    with database.session() as session:
        assert before <= session.get(ResultFetch, fetch_id).queued_at <= utcnow()


def test_a_run_leaves_fetches_not_yet_overdue_claimed_done_or_failed(database):
    fresh = owed(database, 1, overdue=timedelta(seconds=GRACE - 10))  # its report's message may be on its way
    claimed = owed(database, 1, claimed_until=utcnow() + timedelta(minutes=1))
    done = owed(database, 1, state="done")
    failed = owed(database, 1, state="failed")
    expired_claim = owed(database, 1, claimed_until=utcnow() - timedelta(seconds=1))
    assert fetches.take_due(database, CONFIG, 100) == expired_claim
    assert fresh and claimed and done and failed


def test_a_far_retry_is_taken_once_it_is_overdue(database):
    [fetch_id] = owed(database, 1, attempts=3, queued_at=utcnow() - timedelta(hours=2))
    change(database, [fetch_id], next_attempt_at=utcnow() + timedelta(minutes=30))
    assert fetches.take_due(database, CONFIG, 10) == []
    change(database, [fetch_id], next_attempt_at=utcnow() - timedelta(seconds=GRACE + 1))
    assert fetches.take_due(database, CONFIG, 10) == [fetch_id]


def test_runs_at_the_same_time_never_take_the_same_fetch(database):
    ids = owed(database, 200)
    taken: list[list[int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        try:
            barrier.wait(timeout=10)
            while batch := fetches.take_due(database, CONFIG, 30):
                taken.append(batch)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    every = [i for batch in taken for i in batch]
    assert errors == [] and sorted(every) == ids and len(every) == len(set(every))


# ---- what a run expires ------------------------------------------------------------------------------


def attempts(
    database, n: int, *statuses: str, started=None, deadline: int = 240, slug: str = "exam"
) -> list[int]:
    """``n`` attempts of a tool ``slug`` (with ``deadline`` minutes) moved through ``statuses``."""
    with database.session() as session:
        client = session.scalar(select(Client).where(Client.name == "sweep-vendor")) or add_client(
            session, "sweep-vendor"
        )
        tool = add_tool(session, client, slug)
        tool.deadline_minutes = deadline
        ids = []
        for i in range(n):
            toolcall = lifecycle.create(session, tool, add_user(session, f"{slug}-user-{i}"))
            for status in statuses:
                lifecycle.advance(session, toolcall, (status, f"to {status}"))
            if started is not None:
                toolcall.started = started + timedelta(seconds=i)
            ids.append(toolcall.id)
        return ids


def statuses(database, ids) -> dict[int, str]:
    with database.session() as session:
        return dict(session.execute(select(ToolCall.id, ToolCall.status).where(ToolCall.id.in_(ids))).all())


def test_expiry_ends_a_batch_of_unused_start_tokens_oldest_first_each_logged(database):
    old = attempts(database, 7, "start-tk-sent", started=utcnow() - timedelta(hours=1))
    alive = attempts(database, 2, "start-tk-sent", slug="alive")
    assert fetches.expire(database, CONFIG, limit=5) == {"tokens_expired": 5, "timed_out": 0}
    assert [s for i, s in sorted(statuses(database, old).items())] == ["finished-err"] * 5 + [
        "start-tk-sent"
    ] * 2
    with database.session() as session:
        logged = session.scalars(
            select(ToolCallLog.status).where(ToolCallLog.toolcall_id == old[0]).order_by(ToolCallLog.id)
        ).all()
    assert logged == ["initial", "start-tk-sent", "start-tk-err", "finished-err"]
    assert fetches.expire(database, CONFIG, limit=5) == {"tokens_expired": 2, "timed_out": 0}
    assert fetches.expire(database, CONFIG, limit=5) == {"tokens_expired": 0, "timed_out": 0}
    assert set(statuses(database, alive).values()) == {"start-tk-sent"}
    with database.session() as session:
        assert lifecycle.counts(session) == {"finished-err": 7, "start-tk-sent": 2}


def test_expiry_times_out_attempts_by_their_own_tools_deadline(database):
    two_minutes_ago = utcnow() - timedelta(minutes=2)
    quick = attempts(database, 2, "start-tk-sent", "start-data-sent", started=two_minutes_ago, deadline=1,
                     slug="quick")  # fmt: skip
    slow = attempts(database, 2, "start-tk-sent", "start-data-sent", started=two_minutes_ago, deadline=60,
                    slug="slow")  # fmt: skip
    assert fetches.expire(database, CONFIG) == {"tokens_expired": 0, "timed_out": 2}
    assert set(statuses(database, quick).values()) == {"finished-err"}
    assert set(statuses(database, slow).values()) == {"start-data-sent"}
    with database.session() as session:
        details = session.scalars(
            select(ToolCallLog.details).where(
                ToolCallLog.toolcall_id == quick[0], ToolCallLog.status == Status.TOOL_TIMEOUT_ERR
            )
        ).all()
    assert details == ["no result within 1 minutes"]


# ---- a whole run, in this process --------------------------------------------------------------------


@pytest.fixture(name="broker")
def broker_fixture(redis_db):
    """A Celery client app on the portal tests' Redis, where no worker consumes."""
    app = make_app("sweep-test", broker_url=REDIS_URL, result_backend=REDIS_URL)
    yield app
    app.close()


def queued_ids(redis_db) -> list[int]:
    import base64
    import json

    return [
        json.loads(base64.b64decode(json.loads(raw)["body"]))[0][0]
        for raw in redis_db.lrange(CALLBACKS_KEY, 0, -1)
    ]


def test_a_run_queues_only_as_many_as_the_queue_has_room_for(database, broker, redis_db):
    ids = owed(database, 30)
    for other in range(10):
        fetches.queue(broker, 10**6 + other)  # messages still waiting for a worker: not lost
    done = run_sweep(broker, database, redis_db, {**CONFIG, "TOOLCALL_SWEEP_BATCH": 25})
    assert (done["waiting"], done["requeued"]) == (10, 15)
    assert redis_db.llen(CALLBACKS_KEY) == 25 and sorted(queued_ids(redis_db)[:15]) == ids[:15]


def test_a_second_run_right_after_queues_nothing_again(database, broker, redis_db):
    owed(database, 12)
    config = {**CONFIG, "TOOLCALL_SWEEP_BATCH": 50}
    assert run_sweep(broker, database, redis_db, config)["requeued"] == 12
    assert run_sweep(broker, database, redis_db, config)["requeued"] == 0
    assert redis_db.llen(CALLBACKS_KEY) == 12


def test_a_run_does_nothing_while_another_holds_the_lock(database, broker, redis_db):
    owed(database, 5)
    attempts(database, 1, "start-tk-sent", started=utcnow() - timedelta(hours=1))
    redis_db.set(SWEEP_LOCK, "another run", ex=30)
    assert run_sweep(broker, database, redis_db, CONFIG) == {"skipped": "another sweep is running"}
    assert redis_db.llen(CALLBACKS_KEY) == 0
    redis_db.delete(SWEEP_LOCK)
    done = run_sweep(broker, database, redis_db, CONFIG)
    assert (done["requeued"], done["tokens_expired"]) == (5, 1) and not redis_db.exists(SWEEP_LOCK)


def test_with_the_broker_away_a_run_still_expires_and_takes_no_fetch(database, redis_db):
    [fetch_id] = owed(database, 1)
    [toolcall_id] = attempts(database, 1, "start-tk-sent", started=utcnow() - timedelta(hours=1))
    away = make_app("broker-away", broker_url="redis://127.0.0.1:1/0", result_backend=REDIS_URL)
    try:
        done = run_sweep(away, database, redis_db, CONFIG)
    finally:
        away.close()
    assert (done["requeued"], done["waiting"], done["tokens_expired"]) == (0, None, 1)
    with database.session() as session:
        assert session.get(ResultFetch, fetch_id).queued_at is None  # taken once the broker is back
    assert statuses(database, [toolcall_id]) == {toolcall_id: "finished-err"}


# ---- a backlog, drained by a real worker -------------------------------------------------------------

BACKLOG = 200
BATCH = 40


@pytest.fixture(scope="module", name="stub")
def stub_fixture() -> Iterator[VendorStub]:
    stub = VendorStub()
    yield stub
    stub.close()


@pytest.fixture(scope="module", name="drain_portal")
def drain_portal_fixture(tmp_path_factory, stub, postgres_url) -> Iterator[Portal]:
    """The portal on PostgreSQL with a callbacks worker whose sweep takes batches of ``BATCH`` and
    leaves a queued fetch alone for 5 s."""
    directory = tmp_path_factory.mktemp("sweep-drain")
    settings = {"TOOLCALL_SWEEP_BATCH": str(BATCH), "TOOLCALL_REQUEUE_GRACE_SECS": "5"}
    with scratch_postgres_schema(postgres_url) as url:
        yield from running_portal(
            directory, url, suite_redis_url(7), stub, "callbacks-sweep", worker_settings=settings
        )


@pytest.mark.process
def test_a_backlog_of_lost_messages_drains_with_each_fetch_queued_about_once(drain_portal):
    portal = drain_portal
    vendor = portal.new_vendor()
    tokens = []
    for _ in range(BACKLOG):
        attempt = portal.begin(vendor)
        token = new_token()
        portal.stub.script(vendor.name, token, Answer.json(result_body(attempt, token)))
        tokens.append(token)
    # Reported an hour ago while the broker lost every message: owed, and nothing queued.
    with portal.db.session() as session:
        client = session.scalar(select(Client).where(Client.name == vendor.name))
        for token in tokens:
            fetches.owe(session, client, token)
        hour_ago = utcnow() - timedelta(hours=1)
        session.execute(
            update(ResultFetch)
            .where(ResultFetch.client_id == client.id)
            .values(reported_at=hour_ago, next_attempt_at=hour_ago)
        )
    runs: list[dict] = []

    def drained() -> bool:
        runs.append(portal.sweep())
        with portal.db.session() as session:
            left = session.scalar(
                select(func.count())
                .select_from(ResultFetch)
                .where(ResultFetch.client.has(name=vendor.name), ResultFetch.state == "owed")
            )
        return left == 0

    wait_until(drained, timeout=180, what="the backlog drained", interval=0.2)
    requeued = [run.get("requeued", 0) for run in runs]
    assert max(requeued) <= BATCH, runs
    assert BACKLOG <= sum(requeued) <= 2 * BACKLOG, runs  # each fetch queued once, a few twice at most
    done = portal.fetches(vendor)
    assert {f.state for f in done} == {"done"} and {f.attempts for f in done} == {1}
    assert all(len(portal.requests(vendor, token)) == 1 for token in tokens)
    assert portal.sweep()["requeued"] == 0
