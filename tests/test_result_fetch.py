"""The queued result fetch, end to end (docs/api.md §1.5, §4, §5, §6): portal, real worker, vendor stub.

Each backend gets one real ``callbacks`` worker for the whole module (the Procfile's line, thread
pool), on the module's database (a SQLite file; a PostgreSQL schema for the few tests marked so)
and a Redis database of its own as broker and result backend (5 for SQLite, 6 for PostgreSQL). The
portal runs in this process (Flask's test client) on the same database and Redis; the vendor is a
``VendorStub`` whose answers each test scripts per result token.

Every test plays a vendor: it starts an attempt as the start page does, fetches the start data
(``/fetch-token/``) to learn ``persnr``, ``exam`` and ``system``, scripts what its result URL
answers, reports the result (``/result/``) and waits -- a bounded poll of the database -- until the
fetch is ``done`` or ``failed``. Tests share the worker and database, so each one makes a client,
tool and user of its own. The worker retries quickly (``TOOLCALL_FETCH_BACKOFF_BASE_SECS``) and
its sweep re-queues at once (``TOOLCALL_REQUEUE_GRACE_SECS=0``); the sweep runs only when a test
sends it (no beat). The harness (``Portal``, ``running_portal``) is in fetch_support.py.

What a vendor's faults come to -- timeouts, connection errors, each class of status, Retry-After,
redirects, oversized bodies, bodies that cannot be attributed or are for another client -- is one
table in test_vendor_faults.py.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fetch_support import (
    BACKOFF_BASE_SECS,
    WAIT,
    Attempt,
    Portal,
    Vendor,
    new_token,
    result_body,
    running_portal,
)
from helpers import CALLBACKS_KEY, HAPPY_LOG, suite_redis_url, wait_until
from portal_support import scratch_postgres_schema
from sqlalchemy import event, select
from vendor_stub import Answer, VendorStub

from webapp import fetches, lifecycle, vendor_client
from webapp.fetches import Claim, claim, decide, reopen
from webapp.lifecycle import Status
from webapp.models import Client, Exam, ResultFetch, ToolCall, utcnow
from webapp.vendor_client import FetchOutcome
from webapp.webhooks import fetch_payload, verify_webhook
from worker.app import make_app

pytestmark = pytest.mark.process

SQLITE_REDIS = suite_redis_url(5)
POSTGRES_REDIS = suite_redis_url(6)


# ---- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module", name="stub")
def stub_fixture() -> Iterator[VendorStub]:
    stub = VendorStub()
    yield stub
    stub.close()


@pytest.fixture(scope="module", name="portal")
def portal_fixture(tmp_path_factory: pytest.TempPathFactory, stub: VendorStub) -> Iterator[Portal]:
    """The portal on a SQLite file, with its callbacks worker."""
    directory = tmp_path_factory.mktemp("result-fetch-sqlite")
    url = f"sqlite:///{directory / 'portal.sqlite3'}"
    yield from running_portal(directory, url, SQLITE_REDIS, stub, "callbacks-sqlite")


@pytest.fixture(scope="module", name="pg_portal")
def pg_portal_fixture(
    tmp_path_factory: pytest.TempPathFactory, stub: VendorStub, postgres_url: str
) -> Iterator[Portal]:
    """The portal on a PostgreSQL schema of its own, with its callbacks worker."""
    directory = tmp_path_factory.mktemp("result-fetch-postgresql")
    with scratch_postgres_schema(postgres_url) as url:
        yield from running_portal(directory, url, POSTGRES_REDIS, stub, "callbacks-pg")


@pytest.fixture(params=["sqlite", "postgresql"], name="any_portal")
def any_portal_fixture(request: pytest.FixtureRequest) -> Portal:
    """The portal on each database in turn (PostgreSQL: for the tests where the two may differ)."""
    return request.getfixturevalue("portal" if request.param == "sqlite" else "pg_portal")


# ---- the happy path ---------------------------------------------------------------------------------


def happy_path(portal: Portal) -> tuple[Vendor, Attempt, str, bytes]:
    vendor = portal.new_vendor()
    attempt = portal.begin(vendor)
    token = new_token()
    body = json.dumps(result_body(attempt, token), indent=1).encode()  # as the vendor formats it
    portal.stub.script(vendor.name, token, Answer(200, body, {"Content-Type": "application/json"}))
    portal.report(vendor, token)
    assert portal.wait_fetch(vendor, token).state == "done"
    return vendor, attempt, token, body


def test_happy_path_logs_exactly_the_specified_sequence(any_portal):
    _, attempt, _, _ = happy_path(any_portal)
    assert any_portal.log(attempt.toolcall_id) == HAPPY_LOG
    toolcall = any_portal.toolcall(attempt.toolcall_id)
    assert toolcall.status == "finished-ok" and toolcall.ended is not None


def test_happy_path_stores_the_body_verbatim_with_its_fields(any_portal):
    _, attempt, token, body = happy_path(any_portal)
    [result] = any_portal.results(attempt.toolcall_id)
    assert result.data == body.decode()  # verbatim: the vendor's formatting too
    start = attempt.start
    fields = (result.token, result.persnr, result.participant_id, result.exam, result.exam_type)
    assert fields == (token, start["persnr"], "P-1017", start["exam"], "start")
    assert (result.passed, result.score, result.late) == (True, 42, False)
    assert result.timestamp.isoformat() == "2025-03-04T05:06:07+00:00"


def test_happy_path_fetches_once_and_records_it_on_the_fetch(portal):
    vendor, attempt, token, _ = happy_path(portal)
    fetch = portal.fetch(vendor, token)
    assert (fetch.state, fetch.attempts, fetch.toolcall_id, fetch.last_error) == (
        "done",
        1,
        attempt.toolcall_id,
        "",
    )
    [request] = portal.requests(vendor)
    assert request.token == token and request.headers["Accept"] == "application/json"


def test_aliases_and_an_integer_participant_id_are_accepted(portal):
    vendor = portal.new_vendor()
    attempt = portal.begin(vendor)
    token = new_token()
    body = result_body(attempt, token, exam=f"{attempt.start['exam']}:expert")
    data = body["data"]
    del data["participant_id"], data["exam_type"]
    data.update(participation_id=981, exam_kind="start", score=None)
    portal.stub.script(vendor.name, token, Answer.json(body))
    portal.report(vendor, token)
    assert portal.wait_fetch(vendor, token).state == "done"
    [result] = portal.results(attempt.toolcall_id)
    assert (result.participant_id, result.exam_type, result.exam, result.score) == (
        "981",
        "start",
        f"{attempt.start['exam']}:expert",
        None,
    )


# ---- retries ----------------------------------------------------------------------------------------


def test_retries_wait_a_growing_backoff(portal):
    vendor = portal.new_vendor()
    attempt = portal.begin(vendor)
    token = new_token()
    failing = Answer(500, b"oops")
    portal.stub.script(
        vendor.name, token, failing, failing, failing, Answer.json(result_body(attempt, token))
    )
    portal.report(vendor, token)
    assert portal.wait_fetch(vendor, token).state == "done"
    times = [request.at for request in portal.requests(vendor, token)]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # After attempt n the ceiling is base * 2^n; with equal jitter the delay is at least half of it.
    assert len(gaps) == 3
    for n, gap in enumerate(gaps, start=1):
        assert gap >= BACKOFF_BASE_SECS * 2**n / 2, gaps


def test_a_retry_records_the_error_and_the_next_due_time_on_the_fetch(portal):
    vendor = portal.new_vendor()
    portal.begin(vendor)
    token = new_token()
    hold = threading.Event()
    portal.stub.script(vendor.name, token, Answer(503, b"busy"), Answer(503, b"still busy", hold=hold))
    portal.report(vendor, token)
    try:
        wait_until(lambda: len(portal.requests(vendor, token)) == 2, timeout=WAIT, what="the second attempt")
        fetch = portal.fetch(vendor, token)  # between the attempts' answers: the first is recorded
        assert (fetch.state, fetch.attempts, fetch.last_error, fetch.body) == ("owed", 2, "HTTP 503", "busy")
        assert fetch.next_attempt_at <= utcnow()
    finally:
        portal.stub.script(vendor.name, token, Answer(400, b"gone"))
        hold.set()
    assert portal.wait_fetch(vendor, token).state == "failed"


@pytest.mark.parametrize("retry_after", ["0", "Wed, 21 Oct 2015 07:28:00 GMT"], ids=["zero", "a-past-date"])
def test_a_retry_after_of_now_waits_the_backoff_all_the_same(portal, retry_after):
    """``Retry-After: 0`` (or a date gone by) once made a fetch ask its vendor a thousand times in
    ten seconds: the vendor's wish never makes a retry come sooner than the backoff would."""
    vendor = portal.new_vendor()
    attempt = portal.begin(vendor)
    token = new_token()
    now = Answer(429, b"slow down", {"Retry-After": retry_after})
    portal.stub.script(vendor.name, token, now, now, now, Answer.json(result_body(attempt, token)))
    portal.report(vendor, token)
    assert portal.wait_fetch(vendor, token).state == "done"
    times = [request.at for request in portal.requests(vendor, token)]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert len(gaps) == 3
    for n, gap in enumerate(gaps, start=1):
        assert gap >= BACKOFF_BASE_SECS * 2**n / 2, gaps  # the backoff's lower bound after attempt n


def test_a_fetch_that_keeps_failing_gives_up_after_the_give_up_time(portal):
    vendor = portal.new_vendor()
    attempt = portal.begin(vendor)
    token = new_token()
    portal.stub.script(vendor.name, token, Answer(503, b"down"))
    portal.report(vendor, token)
    wait_until(lambda: portal.fetch(vendor, token).attempts >= 1, timeout=WAIT, what="the first attempt")
    # TOOLCALL_FETCH_GIVE_UP_SECS (a day) after the report, made to have passed.
    portal.change(ResultFetch, portal.fetch(vendor, token).id, reported_at=utcnow() - timedelta(days=1))
    fetch = portal.wait_fetch(vendor, token)
    assert fetch.state == "failed"
    assert fetch.last_error == f"gave up after {fetch.attempts} attempts; last: HTTP 503"
    assert portal.toolcall(attempt.toolcall_id).status == "start-data-sent"


def test_a_signed_fetch_carries_the_same_webhook_id_on_every_attempt(portal):
    secret = "the vendor's secret"
    vendor = portal.new_vendor(secret=secret)
    attempt = portal.begin(vendor, secret=secret)
    token = new_token()
    portal.stub.script(vendor.name, token, Answer(503, b"busy"), Answer.json(result_body(attempt, token)))
    portal.report(vendor, token)
    fetch = portal.wait_fetch(vendor, token)
    assert fetch.state == "done"
    requests = portal.requests(vendor, token)
    assert len(requests) == 2 and all(
        verify_webhook(secret, r.headers, fetch_payload(token)) for r in requests
    )
    assert {r.headers["webhook-id"] for r in requests} == {str(fetch.id)}


# ---- bodies that fail §4 ----------------------------------------------------------------------------


def test_an_invalid_result_ends_the_attempt_through_result_received_err(portal):
    vendor = portal.new_vendor()
    attempt = portal.begin(vendor)
    token = new_token()
    body = json.dumps(result_body(attempt, token, passed="yes", score=-1)).encode()
    portal.stub.script(vendor.name, token, Answer(200, body))
    portal.report(vendor, token)
    fetch = portal.wait_fetch(vendor, token)
    assert fetch.state == "failed"
    assert (
        fetch.last_error
        == "invalid result: passed is 'yes', not true or false; score is -1, not an integer >= 0"
    )
    assert fetch.body == body.decode() and fetch.toolcall_id == attempt.toolcall_id
    assert portal.log(attempt.toolcall_id) == [
        "initial",
        "start-tk-sent",
        "start-data-sent",
        "result-tk-received",
        "result-received-err",
        "finished-err",
    ]
    assert portal.results(attempt.toolcall_id) == []


def test_a_binary_body_is_kept_for_inspection(any_portal):
    vendor = any_portal.new_vendor()
    attempt = any_portal.begin(vendor)
    token = new_token()
    any_portal.stub.script(vendor.name, token, Answer(200, b"\x00\x01PK\x03\x04\xff"))
    any_portal.report(vendor, token)
    fetch = any_portal.wait_fetch(vendor, token)
    assert fetch.state == "failed" and fetch.last_error.startswith("the result cannot be attributed")
    assert fetch.body == "\ufffd\x01PK\x03\x04\ufffd"  # NUL and non-UTF-8 bytes replaced
    assert any_portal.toolcall(attempt.toolcall_id).status == "start-data-sent"


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("exam_type", "x" * 51, "exam_type is 51 characters long, more than 50"),
        ("participant_id", "P\x00", "participant_id contains a NUL character"),
        ("participant_id", 10**300, "participant_id is 301 characters long, more than 255"),
        ("score", 2**31, "score is 2147483648, more than 2147483647"),
    ],
    ids=["long-exam-type", "nul-participant-id", "huge-participant-id", "huge-score"],
)
def test_a_field_that_does_not_fit_the_table_makes_the_result_invalid(any_portal, field, value, problem):
    vendor = any_portal.new_vendor()
    attempt = any_portal.begin(vendor)
    token = new_token()
    any_portal.stub.script(vendor.name, token, Answer.json(result_body(attempt, token, **{field: value})))
    any_portal.report(vendor, token)
    fetch = any_portal.wait_fetch(vendor, token)
    assert (fetch.state, fetch.attempts, fetch.last_error) == ("failed", 1, f"invalid result: {problem}")
    assert any_portal.log(attempt.toolcall_id)[-2:] == ["result-received-err", "finished-err"]


# ---- once and only once -----------------------------------------------------------------------------


def test_a_result_reported_three_times_is_fetched_and_stored_once(portal):
    vendor = portal.new_vendor()
    attempt = portal.begin(vendor)
    token = new_token()
    portal.stub.script(vendor.name, token, Answer.json(result_body(attempt, token)))
    for _ in range(3):
        portal.report(vendor, token)
    assert portal.wait_fetch(vendor, token).state == "done"
    portal.report(vendor, token)  # and once more after it was stored
    assert len(portal.fetches(vendor)) == 1
    assert len(portal.results(attempt.toolcall_id)) == 1
    assert len(portal.requests(vendor, token)) == 1


def test_a_duplicate_task_message_during_the_fetch_finds_nothing_to_claim(portal):
    vendor = portal.new_vendor()
    attempt = portal.begin(vendor)
    token = new_token()
    hold = threading.Event()  # the vendor answers slowly: until the duplicate has been handled
    portal.stub.script(vendor.name, token, Answer.json(result_body(attempt, token), hold=hold))
    portal.report(vendor, token)
    try:
        wait_until(lambda: portal.requests(vendor, token), timeout=WAIT, what="the fetch to reach the vendor")
        duplicate = portal.send_fetch(portal.fetch(vendor, token).id)
        assert duplicate.get(timeout=WAIT).startswith("nothing to do")
    finally:
        hold.set()
    fetch = portal.wait_fetch(vendor, token)
    assert (fetch.state, fetch.attempts) == ("done", 1)
    assert len(portal.requests(vendor, token)) == 1
    assert len(portal.results(attempt.toolcall_id)) == 1


def test_the_task_sent_twice_stores_the_result_once(portal):
    vendor = portal.new_vendor()
    attempt = portal.begin(vendor)
    token = new_token()
    portal.stub.script(vendor.name, token, Answer.json(result_body(attempt, token)))
    portal.report(vendor, token)
    fetch_id = portal.fetch(vendor, token).id
    outcomes = [portal.send_fetch(fetch_id) for _ in range(2)]
    assert portal.wait_fetch(vendor, token).state == "done"
    assert all(isinstance(outcome.get(timeout=WAIT), str) for outcome in outcomes)
    assert len(portal.results(attempt.toolcall_id)) == 1
    assert len(portal.requests(vendor, token)) == 1
    assert portal.log(attempt.toolcall_id) == HAPPY_LOG


# ---- an attempt that outlived its claim ------------------------------------------------------------
# A worker paused (SIGSTOP, a frozen VM) between its claim and its decision for longer than the
# claim's lease: the fetch is taken over by another attempt, and the paused one, when it resumes,
# must not record anything. The paused attempt is played by this process (``claim``, ``decide``).


def owe(portal: Portal, vendor: Vendor, token: str) -> int:
    """An owed fetch as ``/result/`` records it, without its message (the test sends that itself)."""
    with portal.db.session() as session:
        client = session.scalar(select(Client).where(Client.name == vendor.name))
        fetch = ResultFetch(client_id=client.id, token=token, state="owed", next_attempt_at=utcnow())
        session.add(fetch)
        session.flush()
        return fetch.id


def stalled_attempt(portal: Portal, fetch_id: int) -> Claim:
    """A claim taken by this process, whose lease then ran out."""
    stalled = claim(portal.db, fetch_id)
    assert stalled is not None and stalled.attempts == 1
    portal.change(ResultFetch, fetch_id, claimed_until=utcnow() - timedelta(seconds=1))
    return stalled


def test_an_attempt_that_outlived_its_claim_records_nothing_after_the_next_one_stored(any_portal):
    vendor = any_portal.new_vendor()
    attempt = any_portal.begin(vendor)
    token = new_token()
    body = json.dumps(result_body(attempt, token)).encode()
    any_portal.stub.script(vendor.name, token, Answer(200, body, {"Content-Type": "application/json"}))
    fetch_id = owe(any_portal, vendor, token)
    stalled = stalled_attempt(any_portal, fetch_id)
    assert any_portal.send_fetch(fetch_id).get(timeout=WAIT).startswith("stored")  # the worker took over

    decision = decide(any_portal.db, stalled, FetchOutcome("ok", 200, body), any_portal.app.config)

    assert decision.outcome == "claim-lost"
    assert len(any_portal.results(attempt.toolcall_id)) == 1  # not a second, "late" copy
    fetch = any_portal.fetch(vendor, token)
    assert (fetch.state, fetch.attempts, fetch.last_error) == ("done", 2, "")
    assert any_portal.log(attempt.toolcall_id) == HAPPY_LOG


def test_an_attempt_that_outlived_its_claim_records_nothing_while_the_next_one_runs(any_portal):
    vendor = any_portal.new_vendor()
    attempt = any_portal.begin(vendor)
    token = new_token()
    body = json.dumps(result_body(attempt, token)).encode()
    hold = threading.Event()  # the worker's attempt waits at the vendor until the stalled one decided
    any_portal.stub.script(
        vendor.name, token, Answer(200, body, {"Content-Type": "application/json"}, hold=hold)
    )
    fetch_id = owe(any_portal, vendor, token)
    stalled = stalled_attempt(any_portal, fetch_id)
    try:
        taking_over = any_portal.send_fetch(fetch_id)
        wait_until(lambda: any_portal.requests(vendor, token), timeout=WAIT, what="the next attempt's fetch")

        decision = decide(any_portal.db, stalled, FetchOutcome("ok", 200, body), any_portal.app.config)

        assert decision.outcome == "claim-lost"
        assert any_portal.results(attempt.toolcall_id) == []  # the decision was rolled back whole
        assert any_portal.toolcall(attempt.toolcall_id).status == "start-data-sent"
        fetch = any_portal.fetch(vendor, token)
        assert (fetch.state, fetch.attempts) == ("owed", 2)  # still the next attempt's to record
    finally:
        hold.set()
    assert taking_over.get(timeout=WAIT).startswith("stored")
    assert len(any_portal.results(attempt.toolcall_id)) == 1
    assert any_portal.log(attempt.toolcall_id) == HAPPY_LOG


def test_an_attempt_that_raises_is_recorded_as_a_retry_and_the_give_up_time_applies(
    portal, monkeypatch: pytest.MonkeyPatch
):
    """Whatever an attempt meets that nobody foresaw -- here the fetch client itself raising, a bug
    injected in this process, since every known fault is an outcome -- is recorded on the fetch as
    a retry with the reason. Unrecorded, the claim would lapse, the sweep would queue the fetch
    again, and it would fail the same way for ever, past the give-up time."""
    vendor = portal.new_vendor()
    token = new_token()
    fetch_id = owe(portal, vendor, token)

    def broken_fetch_client(*_args, **_kwargs):
        raise RuntimeError("a bug in the fetch client")

    monkeypatch.setattr(vendor_client, "fetch_result", broken_fetch_client)
    config = portal.app.config
    reason = "the fetch failed unexpectedly: RuntimeError: a bug in the fetch client"

    first = fetches.attempt(portal.db, fetch_id, config)

    assert (first.outcome, first.text) == ("retry", f"retry in {first.retry_in:.3f} s: {reason}")
    fetch = portal.fetch(vendor, token)
    assert (fetch.state, fetch.attempts, fetch.last_error, fetch.claimed_until) == ("owed", 1, reason, None)
    assert fetch.next_attempt_at > utcnow()
    # TOOLCALL_FETCH_GIVE_UP_SECS (a day) after the report, made to have passed; the retry is due.
    portal.change(ResultFetch, fetch_id, reported_at=utcnow() - timedelta(days=1), next_attempt_at=utcnow())

    second = fetches.attempt(portal.db, fetch_id, config)

    assert second.outcome == "failed"
    fetch = portal.fetch(vendor, token)
    assert (fetch.state, fetch.attempts, fetch.last_error) == (
        "failed",
        2,
        f"gave up after 2 attempts; last: {reason}",
    )


def test_a_decision_the_toolcall_keeps_spoiling_is_made_again_a_few_times_then_retried_later(any_portal):
    """A decision whose ToolCall another process moved meanwhile is made again at once, on the new
    state -- but only a few times: a ToolCall that changes under every decision (here: changed
    inside the decision's own transaction, just before its compare-and-set, so the rollback undoes
    it) must not make the fetch ask its vendor again and again without a pause."""
    vendor = any_portal.new_vendor()
    attempt = any_portal.begin(vendor)
    token = new_token()
    body = json.dumps(result_body(attempt, token)).encode()
    fetch_id = owe(any_portal, vendor, token)
    claimed = claim(any_portal.db, fetch_id)
    spoiled: list[str] = []

    def moved_meanwhile(connection, _cursor, statement: str, *_args) -> None:
        if statement.lstrip().upper().startswith("UPDATE TOOLCALL_TOOLCALL"):
            spoiled.append(statement)
            moving = connection.connection.dbapi_connection.cursor()
            moving.execute(
                f"UPDATE toolcall_toolcall SET status = 'finished-err' WHERE id = {attempt.toolcall_id}"
            )
            moving.close()

    event.listen(any_portal.db.engine, "before_cursor_execute", moved_meanwhile)
    try:
        decision = decide(any_portal.db, claimed, FetchOutcome("ok", 200, body), any_portal.app.config)
    finally:
        event.remove(any_portal.db.engine, "before_cursor_execute", moved_meanwhile)

    assert decision.outcome == "retry" and "the attempt changed meanwhile" in decision.text, decision
    # The backoff after attempt 1 (base 5 s in the portal's settings): at least half of 10 s.
    assert decision.retry_in >= 5.0, decision
    assert len(spoiled) == 1 + fetches.REDECIDES
    fetch = any_portal.fetch(vendor, token)
    assert (fetch.state, fetch.attempts) == ("owed", 1)
    assert fetch.last_error.startswith("the attempt changed meanwhile: "), fetch.last_error
    assert any_portal.results(attempt.toolcall_id) == []
    assert any_portal.toolcall(attempt.toolcall_id).status == "start-data-sent"


def test_two_results_for_one_attempt_at_once_finish_it_once_and_store_the_other_late(any_portal):
    vendor = any_portal.new_vendor()
    attempt = any_portal.begin(vendor)
    tokens = [new_token(), new_token()]
    hold = threading.Event()  # both fetches reach the vendor, then both answers come at once
    for token in tokens:
        any_portal.stub.script(
            vendor.name,
            token,
            Answer.json(result_body(attempt, token), hold=hold),
            Answer.json(result_body(attempt, token)),
        )
        any_portal.report(vendor, token)
    try:
        wait_until(lambda: len(any_portal.requests(vendor)) == 2, timeout=WAIT, what="both fetches")
    finally:
        hold.set()
    assert [any_portal.wait_fetch(vendor, token).state for token in tokens] == ["done", "done"]
    assert any_portal.log(attempt.toolcall_id) == HAPPY_LOG
    assert sorted(result.late for result in any_portal.results(attempt.toolcall_id)) == [False, True]


def test_a_report_after_the_fetch_failed_fetches_again_and_stores_the_corrected_result(portal):
    vendor = portal.new_vendor()
    attempt = portal.begin(vendor)
    token = new_token()
    portal.stub.script(vendor.name, token, Answer.json(result_body(attempt, token, passed=None)))
    portal.report(vendor, token)
    assert portal.wait_fetch(vendor, token).state == "failed"
    portal.stub.script(vendor.name, token, Answer.json(result_body(attempt, token)))  # corrected
    portal.report(vendor, token)  # "try again"
    fetch = portal.wait_fetch(vendor, token, states=("done",))
    assert fetch.attempts == 2
    assert portal.log(attempt.toolcall_id)[-8:] == [
        "start-data-sent",
        "result-tk-received",
        "result-received-err",
        "finished-err",
        "result-tk-received",
        "result-received-ok",
        "result-saved",
        "finished-ok",
    ]
    [result] = portal.results(attempt.toolcall_id)
    assert not result.late  # not late: the attempt ended only because this result was wrong


def test_a_report_racing_an_operators_retry_does_not_reopen_the_fetch_it_stored(any_portal):
    """The vendor reports a failed fetch's token again. Between the report's read of the fetch
    (failed) and its write, an operator retries the fetch and the worker stores the corrected
    result. The report must leave the stored fetch alone: re-opening it would fetch and store the
    result a second time (late)."""
    vendor = any_portal.new_vendor()
    attempt = any_portal.begin(vendor)
    token = new_token()
    any_portal.stub.script(vendor.name, token, Answer.json(result_body(attempt, token, passed=None)))
    any_portal.report(vendor, token)
    fetch_id = any_portal.wait_fetch(vendor, token).id
    any_portal.stub.script(vendor.name, token, Answer.json(result_body(attempt, token)))  # corrected
    interleaved: list[str] = []

    def retried_meanwhile(_connection, _cursor, statement: str, *_args) -> None:
        # The report's write to the fetch record is about to run: the retry and its attempt go first.
        if interleaved or not statement.lstrip().upper().startswith("UPDATE TOOLCALL_RESULTFETCH"):
            return
        interleaved.append(statement)
        with any_portal.db.session() as session:
            assert reopen(session, fetch_id, "retried by operator test")
        interleaved.append(any_portal.send_fetch(fetch_id).get(timeout=WAIT))

    event.listen(any_portal.db.engine, "before_cursor_execute", retried_meanwhile)
    try:
        any_portal.report(vendor, token)
    finally:
        event.remove(any_portal.db.engine, "before_cursor_execute", retried_meanwhile)
    assert interleaved[-1].startswith("stored"), interleaved
    fetch = any_portal.fetch(vendor, token)
    assert (fetch.state, fetch.attempts) == ("done", 2), vars(fetch)
    assert any_portal.sweep()["requeued"] == 0
    [result] = any_portal.results(attempt.toolcall_id)
    assert not result.late
    assert len(any_portal.requests(vendor, token)) == 2


# ---- late results -----------------------------------------------------------------------------------


def test_a_late_result_for_a_superseded_attempt_is_stored_late_and_finishes_it(portal):
    vendor = portal.new_vendor()
    attempt = portal.begin(vendor)
    with portal.db.session() as session:  # the user started again before the vendor reported
        toolcall = session.get(ToolCall, attempt.toolcall_id)
        lifecycle.advance(session, toolcall, (Status.FINISHED_ERR, "superseded by attempt 2"))
    token = new_token()
    portal.stub.script(vendor.name, token, Answer.json(result_body(attempt, token)))
    portal.report(vendor, token)
    assert portal.wait_fetch(vendor, token).state == "done"
    assert portal.log(attempt.toolcall_id) == [
        "initial",
        "start-tk-sent",
        "start-data-sent",
        "finished-err",
        "result-tk-received",
        "result-received-ok",
        "result-saved",
        "finished-ok",
    ]
    [result] = portal.results(attempt.toolcall_id)
    assert result.late


def test_a_late_result_finishes_a_superseded_attempt_of_an_exam_that_is_not_restartable_too(portal):
    """Decided (docs/lifecycles.md): *not restartable* governs starting a new attempt, not what a
    result does; a result the vendor reports for a superseded attempt is the candidate's work."""
    vendor = portal.new_vendor()
    portal.change(Exam, vendor.tool_id, restartable=False)
    first = portal.begin(vendor)
    with portal.db.session() as session:  # the user started again before the vendor reported
        toolcall = session.get(ToolCall, first.toolcall_id)
        lifecycle.advance(session, toolcall, (Status.FINISHED_ERR, "superseded by attempt 2"))
    second = portal.begin(vendor)
    for attempt in (second, first):  # the second attempt's result, then the first's, late
        token = new_token()
        portal.stub.script(vendor.name, token, Answer.json(result_body(attempt, token)))
        portal.report(vendor, token)
        assert portal.wait_fetch(vendor, token).state == "done"
    statuses = [portal.toolcall(attempt.toolcall_id).status for attempt in (first, second)]
    assert statuses == ["finished-ok", "finished-ok"]
    assert [result.late for result in portal.results(first.toolcall_id)] == [True]
    assert [result.late for result in portal.results(second.toolcall_id)] == [False]


def test_a_second_result_for_a_finished_attempt_is_stored_late_without_a_state_change(portal):
    vendor, attempt, first, _ = happy_path(portal)
    second = new_token()
    portal.stub.script(vendor.name, second, Answer.json(result_body(attempt, second, score=7)))
    portal.report(vendor, second)
    assert portal.wait_fetch(vendor, second).state == "done"
    assert portal.log(attempt.toolcall_id) == HAPPY_LOG
    assert portal.toolcall(attempt.toolcall_id).status == "finished-ok"
    assert [(r.token, r.score, r.late) for r in portal.results(attempt.toolcall_id)] == [
        (first, 42, False),
        (second, 7, True),
    ]


# ---- the sweep --------------------------------------------------------------------------------------


def test_the_sweep_fetches_a_result_whose_message_the_broker_lost(portal):
    vendor = portal.new_vendor()
    attempt = portal.begin(vendor)
    token = new_token()
    portal.stub.script(vendor.name, token, Answer.json(result_body(attempt, token)))
    control = portal.worker.celery.control
    destination = [portal.worker.name]
    assert control.cancel_consumer("callbacks", destination=destination, reply=True)
    try:
        portal.report(vendor, token)  # while no worker consumes
        # A read the worker had under way when it stopped consuming hands its message back.
        wait_until(lambda: portal.broker.llen(CALLBACKS_KEY) == 1, timeout=WAIT, what="the message queued")
        portal.broker.delete(CALLBACKS_KEY)  # the broker loses every queued message
    finally:
        assert control.add_consumer("callbacks", destination=destination, reply=True)
    assert portal.fetch(vendor, token).state == "owed" and portal.requests(vendor) == []
    assert portal.sweep()["requeued"] >= 1
    assert portal.wait_fetch(vendor, token).state == "done"
    assert portal.log(attempt.toolcall_id) == HAPPY_LOG


def test_a_result_reported_while_the_broker_is_down_is_fetched_by_the_sweep(portal):
    vendor = portal.new_vendor()
    attempt = portal.begin(vendor)
    token = new_token()
    portal.stub.script(vendor.name, token, Answer.json(result_body(attempt, token)))
    celery = portal.app.extensions["celery"]
    down = make_app("broker-down", broker_url="redis://127.0.0.1:1/0", result_backend=SQLITE_REDIS)
    portal.app.extensions["celery"] = down
    try:
        portal.report(vendor, token)  # the vendor still gets its 200
    finally:
        portal.app.extensions["celery"] = celery
        down.close()
    assert portal.fetch(vendor, token).state == "owed"
    assert portal.sweep()["requeued"] >= 1
    assert portal.wait_fetch(vendor, token).state == "done"


def test_the_sweep_expires_a_start_token_left_unused(portal):
    vendor = portal.new_vendor()
    toolcall_id, _ = portal.start_attempt(vendor)
    # Started longer ago than the start token lives (TOOLCALL_TOKEN_TIMEOUT_SECS, 200 s).
    portal.change(ToolCall, toolcall_id, started=utcnow() - timedelta(hours=1))
    assert portal.sweep()["tokens_expired"] >= 1
    assert portal.log(toolcall_id) == ["initial", "start-tk-sent", "start-tk-err", "finished-err"]
    assert portal.toolcall(toolcall_id).ended is not None


def test_the_sweep_keeps_a_start_token_still_alive(portal):
    vendor = portal.new_vendor()
    toolcall_id, _ = portal.start_attempt(vendor)
    portal.sweep()
    assert portal.toolcall(toolcall_id).status == "start-tk-sent"


def test_the_sweep_times_out_an_attempt_past_the_tools_deadline(portal):
    vendor = portal.new_vendor(deadline_minutes=1)
    attempt = portal.begin(vendor)
    portal.change(ToolCall, attempt.toolcall_id, started=utcnow() - timedelta(minutes=2))
    assert portal.sweep()["timed_out"] >= 1
    assert portal.log(attempt.toolcall_id) == [
        "initial",
        "start-tk-sent",
        "start-data-sent",
        "tool-timeout-err",
        "finished-err",
    ]
