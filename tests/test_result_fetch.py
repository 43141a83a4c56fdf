"""The queued result fetch, end to end (spec §1.5, §4, §5, §6): portal, real worker, vendor stub.

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
sends it (no beat).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from callbacks_worker import CallbacksWorker
from flask import Flask
from helpers import wait_until
from portal_support import (
    PORTAL_ENVIRONMENT,
    add_client,
    add_tool,
    add_user,
    postgres_url_fixture,  # noqa: F401  (asked for by name)
    unavailable,
)
from sqlalchemy import create_engine, select, update
from sqlalchemy.engine import make_url
from vendor_stub import Answer, VendorStub

from webapp import create_app, lifecycle
from webapp.db import Database
from webapp.lifecycle import Status
from webapp.models import ResultFetch, Tool, ToolCall, ToolCallLog, ToolCallResult, User, utcnow
from webapp.signing import sign_system
from webapp.vendor_client import verify_webhook
from worker.app import make_app

pytestmark = pytest.mark.process

SECRET_KEY = "the result fetch tests' key"
SQLITE_REDIS = "redis://127.0.0.1:6379/5"
POSTGRES_REDIS = "redis://127.0.0.1:6379/6"
#: Retries wait 0.1-0.2 s, 0.2-0.4 s, ... instead of 5-10 s, 10-20 s, ...
BACKOFF_BASE_SECS = 0.1
#: The longest any test waits for the worker.
WAIT = 30.0

HAPPY_LOG = [
    "initial",
    "start-tk-sent",
    "start-data-sent",
    "result-tk-received",
    "result-received-ok",
    "result-saved",
    "finished-ok",
]

_names = itertools.count(1)


@dataclass(frozen=True)
class Vendor:
    name: str
    tool_id: int
    user_id: int


@dataclass(frozen=True)
class Attempt:
    toolcall_id: int
    start: dict  # the start data the vendor fetched: persnr, exam, exam_kind, system, ...


class Portal:
    """The portal's HTTP API and database, its worker, and the vendor stub, as one test sees them."""

    def __init__(self, app: Flask, worker: CallbacksWorker, stub: VendorStub, broker: redis.Redis):
        self.app = app
        self.db: Database = app.extensions["db"]
        self.http = app.test_client()
        self.worker = worker
        self.stub = stub
        self.broker = broker

    # ---- setup, as the operator and the start page do it -------------------------------------------

    def new_vendor(self, secret: str | None = None, deadline_minutes: int = 240) -> Vendor:
        name = f"v{next(_names)}-{secrets.token_hex(3)}"
        with self.db.session() as session:
            client = add_client(session, name)
            client.receive_result_token_url = self.stub.result_url(name)
            client.secret = secret
            tool = add_tool(session, client, f"{name}-exam")
            tool.deadline_minutes = deadline_minutes
            user = add_user(session, f"{name}-user")
            return Vendor(name, tool.id, user.id)

    def start_attempt(self, vendor: Vendor) -> tuple[int, str]:
        """A new attempt whose start token was issued, as the start page makes it: (id, token)."""
        with self.db.session() as session:
            tool, user = session.get(Tool, vendor.tool_id), session.get(User, vendor.user_id)
            toolcall = lifecycle.create(session, tool, user, "attempt started by the test")
            token = self.app.extensions["start_tokens"].issue(toolcall.id)
            lifecycle.advance(session, toolcall, Status.START_TK_SENT, "start token issued")
            return toolcall.id, token

    def begin(self, vendor: Vendor, secret: str | None = None) -> Attempt:
        """An attempt whose start data the vendor has fetched (``start-data-sent``), authenticating
        with ``secret`` if given (spec §3)."""
        toolcall_id, token = self.start_attempt(vendor)
        target = f"/fetch-token/?access_token={token}"
        headers = {}
        if secret is not None:
            stamp = int(time.time())
            message = f"{stamp}\nGET\n{target}".encode()
            digest = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
            headers["X-Toolcall-Auth"] = f"{vendor.name} {stamp} {digest}"
        response = self.http.get(target, headers=headers)
        assert response.status_code == 200, response.data
        return Attempt(toolcall_id, response.json["data"])

    # ---- the vendor's side -------------------------------------------------------------------------

    def report(self, vendor: Vendor, token: str) -> None:
        response = self.http.get("/result/", query_string={"access_token": token, "client": vendor.name})
        assert response.status_code == 200, response.data
        assert response.json == {"type": "ok", "token": token, "data": {}}

    def requests(self, vendor: Vendor, token: str | None = None):
        return self.stub.requests(vendor.name, token)

    # ---- what the portal did -----------------------------------------------------------------------

    def fetch(self, vendor: Vendor, token: str) -> ResultFetch | None:
        with self.db.session() as session:
            query = select(ResultFetch).where(ResultFetch.client.has(name=vendor.name))
            return session.scalar(query.where(ResultFetch.token == token))

    def fetches(self, vendor: Vendor) -> list[ResultFetch]:
        with self.db.session() as session:
            return list(session.scalars(select(ResultFetch).where(ResultFetch.client.has(name=vendor.name))))

    def wait_fetch(self, vendor: Vendor, token: str, states=("done", "failed")) -> ResultFetch:
        """The fetch of (vendor, token) once its state is one of ``states`` (bounded wait)."""
        found: list[ResultFetch] = []

        def settled() -> bool:
            fetch = self.fetch(vendor, token)
            found[:] = [fetch] if fetch is not None else []
            return fetch is not None and fetch.state in states

        try:
            wait_until(settled, timeout=WAIT, what=f"the fetch of {token!r} to be {' or '.join(states)}")
        except AssertionError as e:
            raise AssertionError(
                f"{e}; the fetch: {vars(found[0]) if found else None}\n{self.worker.log()}"
            ) from None
        return found[0]

    def log(self, toolcall_id: int) -> list[str]:
        with self.db.session() as session:
            rows = session.scalars(
                select(ToolCallLog.status)
                .where(ToolCallLog.toolcall_id == toolcall_id)
                .order_by(ToolCallLog.id)
            )
            return list(rows)

    def toolcall(self, toolcall_id: int) -> ToolCall:
        with self.db.session() as session:
            return session.get(ToolCall, toolcall_id)

    def results(self, toolcall_id: int) -> list[ToolCallResult]:
        with self.db.session() as session:
            query = select(ToolCallResult).where(ToolCallResult.toolcall_id == toolcall_id)
            return list(session.scalars(query.order_by(ToolCallResult.id)))

    def change(self, model: type, row_id: int, **values) -> None:
        """Set columns of a row directly (to make it look older than it is)."""
        with self.db.session() as session:
            session.execute(update(model).where(model.id == row_id).values(**values))

    # ---- the worker --------------------------------------------------------------------------------

    def send_fetch(self, fetch_id: int):
        """A ``toolcall.fetch_result`` message, as ``/result/`` sends it; returns its AsyncResult."""
        return self.worker.celery.send_task("toolcall.fetch_result", args=[fetch_id], queue="callbacks")

    def sweep(self) -> dict:
        """Run ``toolcall.sweep`` on the worker, as beat would have it; returns its counts."""
        return self.worker.celery.send_task("toolcall.sweep", queue="callbacks").get(timeout=WAIT)


def result_body(attempt: Attempt, token: str, **data) -> dict:
    """The result a vendor returns for ``attempt`` under its result token (spec §4)."""
    start = attempt.start
    return {
        "token": token,
        "type": "result",
        "timestamp": "2025-03-04T05:06:07+00:00",
        "data": {
            "persnr": start["persnr"],
            "participant_id": "P-1017",
            "exam": start["exam"],
            "passed": True,
            "score": 42,
            "system": start["system"],
            "exam_type": start["exam_kind"],
            **data,
        },
    }


def new_token() -> str:
    return f"R-{secrets.token_hex(8)}"


# ---- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module", name="stub")
def stub_fixture() -> Iterator[VendorStub]:
    stub = VendorStub()
    yield stub
    stub.close()


def _redis(url: str) -> redis.Redis:
    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10)
    try:
        client.ping()
    except redis.ConnectionError as e:
        client.close()
        unavailable(f"Redis is not reachable at {url}: {e}")
    return client


def _running_portal(
    directory: Path, database_url: str, redis_url: str, stub: VendorStub, name: str
) -> Iterator[Portal]:
    """A migrated database, a portal app and a callbacks worker on it; everything stopped after."""
    broker = _redis(redis_url)
    broker.flushdb()
    database = Database(database_url)
    database.upgrade()
    database.dispose()
    instance = directory / "instance"
    settings = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": redis_url,
        "CELERY_RESULT_BACKEND": redis_url,
        "SECRET_KEY": SECRET_KEY,
    }
    with pytest.MonkeyPatch.context() as environment:
        for variable in PORTAL_ENVIRONMENT:
            environment.delenv(variable, raising=False)
        app = create_app(
            {**settings, "TESTING": True, "INSTANCE_PATH": instance, "TOOLCALL_RATELIMIT": False}
        )
    worker = CallbacksWorker(
        name,
        directory / f"{name}.log",
        {
            **settings,
            "TOOLCALL_INSTANCE": str(instance),
            "TOOLCALL_FETCH_BACKOFF_BASE_SECS": str(BACKOFF_BASE_SECS),
            "TOOLCALL_REQUEUE_GRACE_SECS": "0",
        },
    )
    worker.start()
    try:
        worker.wait_ready()
        yield Portal(app, worker, stub, broker)
    finally:
        try:
            worker.stop()
        finally:
            app.extensions["db"].dispose()
            app.extensions["celery"].close()
            broker.flushdb()
            broker.close()


@pytest.fixture(scope="module", name="portal")
def portal_fixture(tmp_path_factory: pytest.TempPathFactory, stub: VendorStub) -> Iterator[Portal]:
    """The portal on a SQLite file, with its callbacks worker."""
    directory = tmp_path_factory.mktemp("result-fetch-sqlite")
    url = f"sqlite:///{directory / 'portal.sqlite3'}"
    yield from _running_portal(directory, url, SQLITE_REDIS, stub, "callbacks-sqlite")


@pytest.fixture(scope="module", name="pg_portal")
def pg_portal_fixture(
    tmp_path_factory: pytest.TempPathFactory, stub: VendorStub, postgres_url: str
) -> Iterator[Portal]:
    """The portal on a PostgreSQL schema of its own, with its callbacks worker."""
    directory = tmp_path_factory.mktemp("result-fetch-postgresql")
    schema = f"t_{secrets.token_hex(6)}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        url = make_url(postgres_url).update_query_dict({"options": f"-csearch_path={schema}"})
        yield from _running_portal(
            directory, url.render_as_string(hide_password=False), POSTGRES_REDIS, stub, "callbacks-pg"
        )
    finally:
        admin.dispose()  # the session's database, schema and all, is dropped by postgres_url


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


def test_a_fetch_answered_503_is_retried_until_it_succeeds(portal):
    vendor = portal.new_vendor()
    attempt = portal.begin(vendor)
    token = new_token()
    down = Answer(503, b"down for maintenance")
    portal.stub.script(vendor.name, token, down, down, down, Answer.json(result_body(attempt, token)))
    portal.report(vendor, token)
    fetch = portal.wait_fetch(vendor, token)
    assert (fetch.state, fetch.attempts) == ("done", 4)
    assert len(portal.requests(vendor, token)) == 4
    assert portal.log(attempt.toolcall_id) == HAPPY_LOG
    assert len(portal.results(attempt.toolcall_id)) == 1


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


def test_429_with_retry_after_is_retried_after_that_many_seconds(portal):
    vendor = portal.new_vendor()
    attempt = portal.begin(vendor)
    token = new_token()
    portal.stub.script(
        vendor.name,
        token,
        Answer(429, b"slow down", {"Retry-After": "1"}),
        Answer.json(result_body(attempt, token)),
    )
    portal.report(vendor, token)
    fetch = portal.wait_fetch(vendor, token)
    assert (fetch.state, fetch.attempts) == ("done", 2)
    first, second = portal.requests(vendor, token)
    # The backoff alone would have come back within 0.2 s.
    assert second.at - first.at >= 0.95


def test_404_within_the_grace_period_is_retried(portal):
    vendor = portal.new_vendor()
    attempt = portal.begin(vendor)
    token = new_token()
    not_yet = Answer(404, b"no such result yet")
    portal.stub.script(vendor.name, token, not_yet, not_yet, Answer.json(result_body(attempt, token)))
    portal.report(vendor, token)
    fetch = portal.wait_fetch(vendor, token)
    assert (fetch.state, fetch.attempts) == ("done", 3)


def test_404_after_the_grace_period_fails_the_fetch(portal):
    vendor = portal.new_vendor()
    attempt = portal.begin(vendor)
    token = new_token()
    portal.stub.script(vendor.name, token, Answer(404, b"no such result"))
    portal.report(vendor, token)
    wait_until(lambda: portal.fetch(vendor, token).attempts >= 1, timeout=WAIT, what="the first attempt")
    # Ten minutes and a bit later (the report made to look that old): the vendor still has nothing.
    portal.change(ResultFetch, portal.fetch(vendor, token).id, reported_at=utcnow() - timedelta(minutes=11))
    fetch = portal.wait_fetch(vendor, token)
    assert (fetch.state, fetch.last_error) == ("failed", "HTTP 404")
    assert portal.toolcall(attempt.toolcall_id).status == "start-data-sent"


def test_400_is_not_retried(portal):
    vendor = portal.new_vendor()
    attempt = portal.begin(vendor)
    token = new_token()
    portal.stub.script(
        vendor.name, token, Answer(400, b"bad request"), Answer.json(result_body(attempt, token))
    )
    portal.report(vendor, token)
    fetch = portal.wait_fetch(vendor, token)
    assert (fetch.state, fetch.attempts, fetch.last_error, fetch.body) == (
        "failed",
        1,
        "HTTP 400",
        "bad request",
    )
    assert len(portal.requests(vendor, token)) == 1
    assert portal.toolcall(attempt.toolcall_id).status == "start-data-sent"


def test_a_redirect_is_not_followed(portal):
    vendor = portal.new_vendor()
    attempt = portal.begin(vendor)
    token, elsewhere = new_token(), new_token()
    target = portal.stub.result_url(vendor.name) + f"?access_token={elsewhere}"
    portal.stub.script(vendor.name, token, Answer(302, b"", {"Location": target}))
    portal.stub.script(vendor.name, elsewhere, Answer.json(result_body(attempt, token)))
    portal.report(vendor, token)
    fetch = portal.wait_fetch(vendor, token)
    assert fetch.state == "failed"
    assert fetch.last_error == f"redirect (HTTP 302) to {target} not followed"
    assert [request.token for request in portal.requests(vendor)] == [token]
    assert portal.results(attempt.toolcall_id) == []


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
    assert len(requests) == 2 and all(verify_webhook(secret, r.headers) for r in requests)
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


def _not_json(portal: Portal, attempt: Attempt, token: str) -> bytes:
    return b"<html><body>Internal error</body></html>"


def _forged_system(portal: Portal, attempt: Attempt, token: str) -> bytes:
    forged = sign_system(attempt.toolcall_id, "not the portal's key")
    return json.dumps(result_body(attempt, token, system=forged)).encode()


def _no_system(portal: Portal, attempt: Attempt, token: str) -> bytes:
    body = result_body(attempt, token)
    del body["data"]["system"]
    return json.dumps(body).encode()


def _another_clients_toolcall(portal: Portal, attempt: Attempt, token: str) -> bytes:
    other = portal.begin(portal.new_vendor())
    return json.dumps(result_body(other, token)).encode()


def _not_utf8(portal: Portal, attempt: Attempt, token: str) -> bytes:
    return json.dumps(result_body(attempt, token)).encode("utf-16")


@pytest.mark.parametrize(
    ("make_body", "reason"),
    [
        (_not_json, "the body is not JSON"),
        (_forged_system, "data.system does not verify"),
        (_no_system, "data.system is missing"),
        (_another_clients_toolcall, "which is not one of client"),
        (_not_utf8, "the body is not UTF-8"),
    ],
    ids=["not-json", "forged-system", "no-system", "another-clients-toolcall", "not-utf8"],
)
def test_a_body_that_cannot_be_attributed_fails_the_fetch_and_leaves_the_attempt(
    portal, make_body: Callable, reason: str
):
    vendor = portal.new_vendor()
    attempt = portal.begin(vendor)
    token = new_token()
    body = make_body(portal, attempt, token)
    portal.stub.script(vendor.name, token, Answer(200, body))
    portal.report(vendor, token)
    fetch = portal.wait_fetch(vendor, token)
    assert fetch.state == "failed" and fetch.attempts == 1
    assert fetch.last_error.startswith("the result cannot be attributed: ") and reason in fetch.last_error
    kept = body.decode("utf-8", "replace").replace("\x00", "\ufffd")  # as a database keeps text
    assert fetch.body == kept and fetch.toolcall_id is None
    assert portal.log(attempt.toolcall_id) == ["initial", "start-tk-sent", "start-data-sent"]


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


# ---- late results -----------------------------------------------------------------------------------


def test_a_late_result_for_a_superseded_attempt_is_stored_late_and_finishes_it(portal):
    vendor = portal.new_vendor()
    attempt = portal.begin(vendor)
    with portal.db.session() as session:  # the user started again before the vendor reported
        toolcall = session.get(ToolCall, attempt.toolcall_id)
        lifecycle.advance(session, toolcall, Status.FINISHED_ERR, "superseded by attempt 2")
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
        wait_until(lambda: portal.broker.llen("callbacks") == 1, timeout=WAIT, what="the message queued")
        portal.broker.delete("callbacks")  # the broker loses every queued message
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
