"""What a result fetch comes to when the vendor misbehaves (docs/api.md §4, §5): one table, ``FAULTS``.

Each row is a vendor fault: what the vendor's result URL does, request by request (the last answer
repeats), and what docs/api.md says follows -- the fetch's final state, the ToolCall's final status,
how many attempts the fetch makes (each one recorded on the fetch record and seen by the vendor),
and the reason recorded for it. Retryable faults are followed by a valid result, so a row shows
both that the fault was retried and that the retry was then the last one; faults below HTTP
(connection refused, a connect that times out) are retried until the fetch gives up.

Everything is real: the portal (Flask's test client) and one ``callbacks`` worker process on a
SQLite file and Redis database 1 of the tests' Redis (``TOOLCALL_TEST_REDIS``; the other test modules use
3-6 and 8-15, the benchmarks 2 and 7), and a ``BadVendor`` on 127.0.0.1 (tests/bad_vendor.py).
The portal's timeouts are the API's (docs/api.md §5) (5 s to connect, 15 s for a whole response): they are not
settings, so the rows that wait for them run side by side -- every selected row starts when the
module does, on a pool of threads, and each test waits for its own row. The whole table takes
about as long as its slowest row.

The vendor closes every connection after its answer, so each attempt is one connection and one
request (the portal's kept connections, and the one immediate re-send when a kept connection turns
out closed, belong to the vendor client and are not what this table counts).

How each row is checked, beyond its columns: the vendor sees exactly one request per attempt and
never one for another token (nothing is followed); at each request the fetch record already shows
that attempt counted and the previous attempt's reason (``BadVendor``'s ``observe``); the worker's
log names the fetch and the reason; at most 64 KiB of a body is kept; a result is stored only when
the fetch is done; the ToolCall's log is exactly the one its final status implies.

Other fetch behaviour (the happy path, backoff growth, give-up time, signatures, results that fail
validation, once-only, late results, the sweep) is in test_result_fetch.py.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from bad_vendor import (
    BadVendor,
    Misbehaviour,
    SilentListener,
    drip_body,
    drip_headers,
    gzip_bomb,
    hang_up,
    huge_body,
    not_http,
    refusing_url,
    reset,
    retry_after_date,
    silence,
    truncated,
)
from fetch_support import (
    SECRET_KEY,
    Attempt,
    Portal,
    Vendor,
    new_token,
    result_body,
    running_portal,
)
from helpers import HAPPY_LOG, forge_signature, suite_redis_url, wait_until
from sqlalchemy import select
from vendor_stub import Answer

from webapp.models import Client, ResultFetch, utcnow
from webapp.signing import sign_system

pytestmark = pytest.mark.process

REDIS_URL = suite_redis_url(1)
#: The longest any row may take: three 5 s connect timeouts, or a 15 s timeout and its retry.
ROW_TIMEOUT = 90.0
#: Rows run at once: enough for every slow row, few enough not to swamp two cores.
PARALLEL_ROWS = 12
#: At most this much of a body is kept on the fetch record (webapp/fetches.py, KEPT_BODY).
KEPT_BODY = 64 * 1024

#: The ToolCall's log for each final status a fault can leave it in.
LOGS = {
    "start-data-sent": ["initial", "start-tk-sent", "start-data-sent"],
    "finished-ok": HAPPY_LOG,
    "finished-err": [
        "initial",
        "start-tk-sent",
        "start-data-sent",
        "result-tk-received",
        "result-received-err",
        "finished-err",
    ],
}


# ---- the scene of one row ---------------------------------------------------------------------------


@dataclass
class Scene:
    """One row's vendor, attempt and result token, and what its answers refer to."""

    portal: Portal
    vendor: Vendor
    attempt: Attempt
    token: str
    facts: dict[str, object] = field(default_factory=dict)  # filled in by the answers, for the reason

    def ok(self) -> Answer:
        """The valid result for the attempt."""
        return Answer.json(result_body(self.attempt, self.token))

    def result(self, **data) -> Answer:
        return Answer.json(result_body(self.attempt, self.token, **data))

    def body(self, document: dict) -> Answer:
        return Answer.json(document)

    def redirect(self, status: int) -> Answer:
        """A redirect to the URL where the vendor keeps a valid result under another token."""
        elsewhere = new_token()
        self.portal.stub.script(self.vendor.name, elsewhere, self.ok())
        target = f"{self.portal.stub.result_url(self.vendor.name)}?access_token={elsewhere}"
        self.facts["target"] = target
        return Answer(status, b"", {"Location": target})

    def system_of_another_client(self) -> str:
        other = self.portal.begin(self.portal.new_vendor())
        self.facts["other"] = other.toolcall_id
        return other.start["system"]


# ---- the table --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prefix:
    """A recorded reason that must start with ``text`` (the rest quotes a library's error)."""

    text: str


@dataclass(frozen=True)
class Fault:
    vendor: Callable[[Scene], list[Answer | Misbehaviour]]  # answers, request by request
    state: str  # the fetch's final state
    toolcall: str  # the ToolCall's final status
    attempts: int  # exactly; 0: at least 2, until the fetch gives up
    reason: str | Prefix  # recorded for the fault: {placeholders} from Scene.facts and the fetch
    url: str | None = None  # "refusing", "silent" (no HTTP server there) or the client's result URL itself
    reported_ago: timedelta | None = None  # the report is older: the fetch record is made so
    gap: tuple[float, float] | None = None  # bounds of the seconds between the first two requests
    settled: str = "done or failed"  # or "parked": owed, its next attempt left to the sweep

    @property
    def until_give_up(self) -> bool:
        return self.attempts == 0


def retried(first: Answer | Misbehaviour, times: int = 1) -> Callable[[Scene], list]:
    """The fault ``times`` over, then the valid result."""
    return lambda s: [first] * times + [s.ok()]


UNATTRIBUTABLE = "the result cannot be attributed: "
GIVE_UP = "gave up after {attempts} attempts; last: "
BROKEN = "connection broken while reading the body: "

FAULTS = [
    # -- no answer in time (§5: 5 s to connect, 15 s for the whole response) ----------------------
    pytest.param(Fault(lambda s: [], "failed", "start-data-sent", 0, GIVE_UP + "connect timed out after 5 s",
                       url="silent"), id="connect-timeout"),
    pytest.param(Fault(retried(silence()), "done", "finished-ok", 2, "timed out after 15 s"),
                 id="no-answer"),
    pytest.param(Fault(retried(drip_body()), "done", "finished-ok", 2, "timed out after 15 s"),
                 id="slow-drip-body"),
    pytest.param(Fault(retried(drip_headers()), "done", "finished-ok", 2, "timed out after 15 s"),
                 id="slow-drip-headers"),
    # -- the connection fails ----------------------------------------------------------------------
    pytest.param(Fault(lambda s: [], "failed", "start-data-sent", 0, GIVE_UP + "connection refused",
                       url="refusing"), id="connection-refused"),
    pytest.param(Fault(retried(hang_up()), "done", "finished-ok", 2, "connection reset by the vendor"),
                 id="hang-up-without-answer"),
    pytest.param(Fault(retried(reset()), "done", "finished-ok", 2, "connection reset by the vendor"),
                 id="tcp-reset"),
    pytest.param(Fault(retried(not_http()), "done", "finished-ok", 2,
                       Prefix("connection failed: ('Connection aborted.', BadStatusLine(")),
                 id="not-http"),
    pytest.param(Fault(retried(truncated(b'{"token": ', 1000)), "done", "finished-ok", 2,
                       Prefix(BROKEN + "('Connection broken: IncompleteRead(10 bytes read, 990 more expected)'")),
                 id="body-cut-short"),
    # -- server errors and rate limits: retried, Retry-After honoured on 429 and 503 only ------------
    pytest.param(Fault(retried(Answer(500, b"oops")), "done", "finished-ok", 2, "HTTP 500"), id="500"),
    pytest.param(Fault(retried(Answer(502, b"bad gateway")), "done", "finished-ok", 2, "HTTP 502"), id="502"),
    pytest.param(Fault(retried(Answer(503, b"down for maintenance"), 3), "done", "finished-ok", 4, "HTTP 503"),
                 id="503-three-times"),
    pytest.param(Fault(retried(Answer(504, b"gateway timeout")), "done", "finished-ok", 2, "HTTP 504"), id="504"),
    pytest.param(Fault(retried(Answer(429, b"slow down", {"Retry-After": "1"})), "done", "finished-ok", 2,
                       "HTTP 429", gap=(0.95, 10)), id="429-retry-after-seconds"),
    pytest.param(Fault(retried(retry_after_date(503, 2)), "done", "finished-ok", 2, "HTTP 503",
                       gap=(0.9, 10)), id="503-retry-after-http-date"),
    pytest.param(Fault(retried(Answer(429, b"slow down")), "done", "finished-ok", 2, "HTTP 429",
                       gap=(0, 5)), id="429-without-retry-after"),
    pytest.param(Fault(retried(Answer(500, b"oops", {"Retry-After": "3600"})), "done", "finished-ok", 2,
                       "HTTP 500", gap=(0, 5)), id="500-retry-after-ignored"),
    pytest.param(Fault(lambda s: [Answer(429, b"", {"Retry-After": "99999"}), s.ok()], "owed", "start-data-sent",
                       1, "HTTP 429", settled="parked"), id="429-retry-after-capped-at-an-hour"),
    # -- "not there yet": retried during the first 10 minutes after the report only ----------------
    pytest.param(Fault(retried(Answer(404, b"no such result yet"), 2), "done", "finished-ok", 3, "HTTP 404"),
                 id="404-within-grace"),
    pytest.param(Fault(retried(Answer(409, b"conflict")), "done", "finished-ok", 2, "HTTP 409"),
                 id="409-within-grace"),
    pytest.param(Fault(retried(Answer(425, b"too early")), "done", "finished-ok", 2, "HTTP 425"),
                 id="425-within-grace"),
    pytest.param(Fault(retried(Answer(404, b"no such result")), "failed", "start-data-sent", 1, "HTTP 404",
                       reported_ago=timedelta(minutes=11)), id="404-after-grace"),
    # -- other client errors: not retried -----------------------------------------------------------
    pytest.param(Fault(retried(Answer(400, b"bad request")), "failed", "start-data-sent", 1, "HTTP 400"),
                 id="400"),
    pytest.param(Fault(retried(Answer(401, b"signature-invalid")), "failed", "start-data-sent", 1, "HTTP 401"),
                 id="401"),
    pytest.param(Fault(retried(Answer(403, b"forbidden")), "failed", "start-data-sent", 1, "HTTP 403"),
                 id="403"),
    pytest.param(Fault(retried(Answer(410, b"gone")), "failed", "start-data-sent", 1, "HTTP 410"), id="410"),
    # -- redirects: never followed --------------------------------------------------------------------
    *[
        pytest.param(Fault(lambda s, status=status: [s.redirect(status)], "failed", "start-data-sent", 1,
                           f"redirect (HTTP {status}) to {{target}} not followed"), id=f"{status}-redirect")
        for status in (301, 302, 303, 307, 308)
    ],
    pytest.param(Fault(lambda s: [Answer(302, b"")], "failed", "start-data-sent", 1,
                       "redirect (HTTP 302) not followed"), id="redirect-without-location"),
    pytest.param(Fault(lambda s: [Answer(302, b"", {"Location": "http://[::1/x"})], "failed", "start-data-sent", 1,
                       "redirect (HTTP 302) to an invalid location 'http://[::1/x' not followed"),
                 id="redirect-to-a-malformed-location"),
    # -- result URLs no request can be made to (registered before the URL checks) ----------------------
    pytest.param(Fault(lambda s: [], "failed", "start-data-sent", 1, "invalid vendor URL: host name "
                       "'vendor..example.org' has an empty label or a label longer than 63 characters",
                       url="https://vendor..example.org/result/"), id="url-with-an-empty-label"),
    pytest.param(Fault(lambda s: [], "failed", "start-data-sent", 1, "invalid vendor URL: Invalid IPv6 URL",
                       url="http://[::1"), id="url-with-an-unclosed-bracket"),
    # -- bodies that are too large (§4: at most 1 MiB), read no further than that ---------------------
    pytest.param(Fault(lambda s: [huge_body()], "failed", "start-data-sent", 1, "body larger than 1 MiB"),
                 id="10-mb-with-length"),
    pytest.param(Fault(lambda s: [huge_body(declare_length=False)], "failed", "start-data-sent", 1,
                       "body larger than 1 MiB"), id="10-mb-until-close"),
    pytest.param(Fault(lambda s: [gzip_bomb()], "failed", "start-data-sent", 1, "body larger than 1 MiB"),
                 id="10-mb-gzip-bomb"),
    # -- bodies that cannot be attributed: the fetch fails, the attempt is left as it was -------------
    pytest.param(Fault(lambda s: [Answer(200, b"<html><body>Internal error</body></html>")], "failed",
                       "start-data-sent", 1, UNATTRIBUTABLE + "the body is not JSON (Expecting value: "
                       "line 1 column 1 (char 0))"), id="not-json"),
    pytest.param(Fault(lambda s: [Answer(200, b"")], "failed", "start-data-sent", 1,
                       UNATTRIBUTABLE + "the body is not JSON (Expecting value: line 1 column 1 (char 0))"),
                 id="empty-body"),
    pytest.param(Fault(lambda s: [Answer(200, json.dumps(result_body(s.attempt, s.token)).encode("utf-16"))],
                       "failed", "start-data-sent", 1,
                       UNATTRIBUTABLE + "the body is not UTF-8 (invalid start byte at byte 0)"), id="not-utf8"),
    pytest.param(Fault(lambda s: [Answer(200, b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")], "failed",
                       "start-data-sent", 1, UNATTRIBUTABLE + "the body is JSON nested too deeply to be read"),
                 id="json-nested-too-deeply"),
    pytest.param(Fault(lambda s: [Answer.json([result_body(s.attempt, s.token)])], "failed", "start-data-sent", 1,
                       UNATTRIBUTABLE + "the body is not a JSON object with a data object"), id="json-array"),
    pytest.param(Fault(lambda s: [s.body({**result_body(s.attempt, s.token), "data": {}})], "failed",
                       "start-data-sent", 1, UNATTRIBUTABLE + "data.system is missing"), id="no-system"),
    pytest.param(Fault(lambda s: [s.result(system=forge_signature(s.attempt.start["system"]))], "failed",
                       "start-data-sent", 1,
                       UNATTRIBUTABLE + "data.system does not verify: it was not issued by this portal"),
                 id="forged-system"),
    pytest.param(Fault(lambda s: [s.result(system=sign_system(s.attempt.toolcall_id, "another portal's key"))],
                       "failed", "start-data-sent", 1,
                       UNATTRIBUTABLE + "data.system does not verify: it was not issued by this portal"),
                 id="foreign-system"),
    pytest.param(Fault(lambda s: [s.result(system=s.attempt.toolcall_id)], "failed", "start-data-sent", 1,
                       UNATTRIBUTABLE + "data.system does not verify: it was not issued by this portal"),
                 id="system-not-a-string"),
    pytest.param(Fault(lambda s: [s.result(system=sign_system(10**9, SECRET_KEY))], "failed",
                       "start-data-sent", 1,
                       UNATTRIBUTABLE + "data.system names ToolCall 1000000000, which does not exist"),
                 id="system-of-no-toolcall"),
    pytest.param(Fault(lambda s: [s.result(system=s.system_of_another_client())], "failed", "start-data-sent", 1,
                       UNATTRIBUTABLE + "data.system names ToolCall {other}, which is not one of client "
                       "{vendor}'s"), id="another-clients-toolcall"),
    # -- attributed but invalid: the ToolCall ends through result-received-err -----------------------
    pytest.param(Fault(lambda s: [s.body({**result_body(s.attempt, s.token), "token": "R-not-mine"})], "failed",
                       "finished-err", 1, "invalid result: token is 'R-not-mine', not the result token '{token}'"),
                 id="wrong-token"),
    pytest.param(Fault(lambda s: [s.result(persnr="N" + "0" * 32)], "failed", "finished-err", 1,
                       "invalid result: persnr is not the persnr of the attempt's user"), id="wrong-persnr"),
]  # fmt: skip


# ---- running a row ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """The fetch record as the vendor's request found it."""

    attempts: int
    state: str
    last_error: str


@dataclass(frozen=True)
class Outcome:
    """Everything a row is checked against."""

    scene: Scene
    fetch: ResultFetch
    toolcall_status: str
    toolcall_log: list[str]
    results: int
    visits: list  # bad_vendor.Visit, each with the Seen of its arrival
    last_answer: Answer | Misbehaviour | None
    worker_log: list[str]  # the worker's lines about this fetch


def observe(portal_box: list[Portal]) -> Callable[[str, str | None], Seen | None]:
    def seen(client: str, token: str | None) -> Seen | None:
        with portal_box[0].db.session() as session:
            query = select(ResultFetch).where(ResultFetch.client.has(name=client), ResultFetch.token == token)
            fetch = session.scalar(query)
            return None if fetch is None else Seen(fetch.attempts, fetch.state, fetch.last_error)

    return seen


def report_long_ago(portal: Portal, vendor: Vendor, token: str, ago: timedelta) -> None:
    """The fetch record as ``/result/`` writes it, but reported ``ago``; then its task message."""
    with portal.db.session() as session:
        client = session.scalar(select(Client).where(Client.name == vendor.name))
        fetch = ResultFetch(
            client_id=client.id,
            token=token,
            state="owed",
            reported_at=utcnow() - ago,
        )
        session.add(fetch)
        session.flush()
        fetch_id = fetch.id
    portal.send_fetch(fetch_id)


def run(shared: Portal, fault: Fault) -> Outcome:
    # A test client of the row's own: rows run in threads of their own.
    portal = Portal(shared.app, shared.worker, shared.stub, shared.broker)
    vendor = portal.new_vendor()
    attempt = portal.begin(vendor)
    scene = Scene(portal, vendor, attempt, new_token(), {"vendor": vendor.name})
    answers = fault.vendor(scene)
    if answers:
        portal.stub.script(vendor.name, scene.token, *answers)
    closing: list[Callable[[], None]] = []
    try:
        if fault.url is not None:
            if fault.url == "refusing":
                url, sock = refusing_url()
                closing.append(sock.close)
            elif fault.url == "silent":
                listener = SilentListener()
                url = listener.url
                closing.append(listener.close)
            else:
                url = fault.url
            with portal.db.session() as session:
                client = session.scalar(select(Client).where(Client.name == vendor.name))
                client.receive_result_token_url = url
        if fault.reported_ago is not None:
            report_long_ago(portal, vendor, scene.token, fault.reported_ago)
        else:
            portal.report(vendor, scene.token)
        if fault.until_give_up:
            # Retried: once a second attempt is under way, make the report a day old -- the give-up
            # time (TOOLCALL_FETCH_GIVE_UP_SECS) has passed and a further retry is not planned.
            wait_until(
                lambda: portal.fetch(vendor, scene.token).attempts >= 2,
                timeout=ROW_TIMEOUT,
                what="a second attempt",
            )
            fetch_id = portal.fetch(vendor, scene.token).id
            with portal.db.session() as session:
                fetch = session.get(ResultFetch, fetch_id)
                fetch.reported_at = fetch.reported_at - timedelta(days=1)
        if fault.settled == "parked":
            wait_until(
                lambda: portal.fetch(vendor, scene.token).last_error != "",
                timeout=ROW_TIMEOUT,
                what="the first attempt to be recorded",
            )
            fetch = portal.fetch(vendor, scene.token)
        else:
            fetch = portal.wait_fetch(vendor, scene.token)
    finally:
        for close in closing:
            close()
    toolcall = portal.toolcall(attempt.toolcall_id)
    marker = re.compile(rf"result fetch {fetch.id}\b")
    worker_log = [line for line in portal.worker.log(lines=100_000).splitlines() if marker.search(line)]
    return Outcome(
        scene=scene,
        fetch=fetch,
        toolcall_status=toolcall.status,
        toolcall_log=portal.log(attempt.toolcall_id),
        results=len(portal.results(attempt.toolcall_id)),
        visits=portal.stub.visits(vendor.name),
        last_answer=answers[min(len(portal.stub.visits(vendor.name)), len(answers)) - 1] if answers else None,
        worker_log=worker_log,
    )


# ---- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module", name="portal")
def portal_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    box: list[Portal] = []
    vendor = BadVendor(observe=observe(box))
    directory = tmp_path_factory.mktemp("vendor-faults")
    try:
        for portal in running_portal(
            directory, f"sqlite:///{directory / 'portal.sqlite3'}", REDIS_URL, vendor, "callbacks-faults"
        ):
            box.append(portal)
            yield portal
    finally:
        vendor.close()


@pytest.fixture(scope="module", name="rows")
def rows_fixture(request: pytest.FixtureRequest, portal: Portal) -> Iterator[dict[str, Future]]:
    """Every selected row, started at once (the slow ones first); each test waits for its own."""
    selected = [
        item.callspec.params["fault"]
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_vendor_fault" and item.module is request.module
    ]
    ids = {id(param.values[0]): param.id for param in FAULTS}
    slow_first = sorted(selected, key=lambda f: not (f.until_give_up or "timed out" in str(f.reason)))
    with ThreadPoolExecutor(PARALLEL_ROWS, thread_name_prefix="fault-row") as pool:
        yield {ids[id(fault)]: pool.submit(run, portal, fault) for fault in slow_first}


# ---- the test ---------------------------------------------------------------------------------------


def expected_reason(fault: Fault, outcome: Outcome) -> str | Prefix:
    facts = {**outcome.scene.facts, "token": outcome.scene.token, "attempts": outcome.fetch.attempts}
    if isinstance(fault.reason, Prefix):
        return Prefix(fault.reason.text.format(**facts))
    return fault.reason.format(**facts)


def matches(reason: str | Prefix, text: str) -> bool:
    return text.startswith(reason.text) if isinstance(reason, Prefix) else text == reason


@pytest.mark.parametrize("fault", FAULTS)
def test_vendor_fault(rows: dict[str, Future], fault: Fault, request: pytest.FixtureRequest):
    outcome = rows[request.node.callspec.id].result(timeout=ROW_TIMEOUT * 2)
    fetch, scene = outcome.fetch, outcome.scene
    reason = expected_reason(fault, outcome)
    story = (
        f"fetch {fetch.id}: {fetch.state}, {fetch.attempts} attempts, last error {fetch.last_error!r}; "
        f"the vendor saw {[v.observed for v in outcome.visits]}; the worker said {outcome.worker_log}"
    )

    # The columns: final state, final status, attempts.
    assert (fetch.state, outcome.toolcall_status) == (fault.state, fault.toolcall), story
    if fault.until_give_up:
        assert fetch.attempts >= 2, story
    else:
        assert fetch.attempts == fault.attempts, story

    # One request per attempt, each finding its attempt counted and the previous one's reason.
    visits = outcome.visits
    assert all(v.request.token == scene.token for v in visits), "a redirect was followed"
    if fault.url is None:
        assert len(visits) == fetch.attempts
        assert [v.observed.attempts for v in visits] == list(range(1, fetch.attempts + 1))
        assert all(v.observed.state == "owed" for v in visits)
        for visit in visits[1:]:
            assert matches(reason, visit.observed.last_error), visit.observed.last_error
    else:
        assert visits == []  # nothing listened for HTTP there

    # The reason: on the record while it failed or waits; in the worker's log in any case.
    if fault.state != "done":
        assert matches(reason, fetch.last_error), fetch.last_error
    else:
        assert fetch.last_error == ""
    text = reason.text if isinstance(reason, Prefix) else reason
    assert any(text in line for line in outcome.worker_log), (text, outcome.worker_log)

    # Time between the first two requests, where Retry-After (or its absence) decides it.
    if fault.gap is not None:
        low, high = fault.gap
        gap = visits[1].request.at - visits[0].request.at
        assert low <= gap <= high, gap
    if fault.settled == "parked":
        # More than 10 minutes away: left to the sweep, not parked in the broker as an ETA message.
        remaining = (fetch.next_attempt_at - utcnow()).total_seconds()
        assert 3500 < remaining <= 3600, remaining
        assert len(visits) == 1

    # What was kept and stored, and the ToolCall's whole log.
    assert len(fetch.body) <= KEPT_BODY
    if isinstance(outcome.last_answer, Answer):
        kept = outcome.last_answer.body[:KEPT_BODY].decode("utf-8", "replace").replace("\x00", "\ufffd")
        assert fetch.body == kept
    attributed = fault.toolcall != "start-data-sent"
    assert fetch.toolcall_id == (scene.attempt.toolcall_id if attributed else None)
    assert outcome.results == (1 if fault.state == "done" else 0)
    assert outcome.toolcall_log == LOGS[fault.toolcall]


def test_the_table_names_every_fault_the_brief_lists():
    """The matrix is complete: each kind of fault has at least one row."""
    ids = {param.id for param in FAULTS}
    required = {
        "connect-timeout", "no-answer", "slow-drip-body", "500", "502", "503-three-times", "504",
        "429-retry-after-seconds", "302-redirect", "not-json", "10-mb-with-length", "wrong-token",
        "wrong-persnr", "forged-system", "foreign-system", "another-clients-toolcall",
    }  # fmt: skip
    assert required <= ids, required - ids
    assert len(ids) == len(FAULTS), "two rows share an id"


def test_a_port_that_is_not_listening_refuses_at_once():
    """The refusing URL really refuses (so the connection-refused row tests what it says)."""
    url, sock = refusing_url()
    try:
        port = int(url.split(":")[2].split("/")[0])
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        sock.close()


def test_a_silent_listener_lets_a_connect_time_out():
    listener = SilentListener()
    try:
        with pytest.raises(TimeoutError):
            socket.create_connection(("127.0.0.1", listener.port), timeout=0.5).close()
    finally:
        listener.close()
