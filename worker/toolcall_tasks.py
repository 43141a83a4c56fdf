"""The toolcall tasks: result fetches that are never lost, and the sweep that guarantees it.

The life of a result fetch:

1. **Owed.** ``/result/`` writes a ``toolcall_resultfetch`` row (state ``owed``) and queues
   ``toolcall.fetch_result``. The row is the truth; the message is only a trigger.
2. **Claimed.** The task claims the row with one conditional UPDATE (owed, due, not claimed by a live
   attempt) and, in the same transaction, reads what the fetch needs of it and of its client. A
   duplicate message finds nothing to claim and stops. No transaction stays open during the fetch.
   The claim is a lease of ``CLAIM_SECS``; the row's attempt count, raised by every claim, fences
   it: an attempt that stalled past its lease (a paused process) while another took the fetch over
   finds, when it comes to record, that the count is no longer its own, and keeps nothing.
3. **Fetched.** One GET of the client's result URL (``webapp.vendor_client``): timeouts, no
   redirects, a size cap, signed when the client has a secret.
4. **Decided**, in one transaction, the fetch record written last and only while the claim still
   holds (otherwise the whole decision is rolled back). A body that is attributed and valid is stored and the ToolCall
   finishes (its four transitions are one change, ``lifecycle.move``); an attributed invalid one
   moves the ToolCall to ``result-received-err``; one that cannot be attributed fails the fetch. A
   retryable outcome (connection error, timeout, 5xx, 429, early 404/409/425) is retried with
   backoff, through Celery's own retry when due within 10 minutes, and by the sweep when later.
   Every attempt is recorded on the row. The delay before attempt n+1 is ``min(base · 2^n, 1 h)``
   with equal jitter, ``base`` being ``TOOLCALL_FETCH_BACKOFF_BASE_SECS`` (default 5 s, as §5 says;
   tests make it small), unless the vendor's ``Retry-After`` says otherwise.
5. **Swept.** Every ``TOOLCALL_SWEEP_SECS`` the sweep re-queues owed fetches whose next attempt is
   overdue (their message was lost), expires unused start tokens and attempts past their deadline.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

from sqlalchemy import bindparam, insert, or_, select, update
from sqlalchemy.engine import Connection

from webapp import lifecycle, vendor_client
from webapp.config import settings
from webapp.db import Database
from webapp.lifecycle import Status
from webapp.models import Client, ResultFetch, ToolCall, ToolCallLog, ToolCallResult, utcnow
from webapp.results import Attributed, InvalidResult, Unattributable, attribute_row, validate_fields
from worker.app import app

log = logging.getLogger("worker.toolcall_tasks")

#: How long a claim holds: longer than one fetch can take (15 s) with room to record it.
CLAIM_SECS = 120
#: Retries due sooner than this go back to the broker (Celery retry); later ones wait for the sweep,
#: because Redis would redeliver an ETA message after its visibility timeout.
NEAR_RETRY_SECS = 600
#: 404/409/425 are retried this long after the report (the vendor may not have stored it yet).
EARLY_GRACE = timedelta(minutes=10)
#: Kept of a body on the fetch record, for inspection.
KEPT_BODY = 64 * 1024

# A fetch reads and writes with Core statements, in two transactions (claim, decision): the
# worker's CPU is what limits how many fetches a second one process completes, and ORM objects
# (loading, unit of work, reloading what it cannot know) cost more of it than the statements
# themselves (docs/portal-performance.md). The ToolCall still changes only through
# ``webapp.lifecycle`` (``move``), and attribution and validation are ``webapp.results``'.
_FETCH = ResultFetch.__table__
_CLIENT = Client.__table__
_RESULT = ToolCallResult.__table__
_LOG = ToolCallLog.__table__

# The statements, built once (building one costs more CPU than running it). An UPDATE without
# ``values`` sets the columns its parameters are named after.
_CLAIM = (
    update(_FETCH)
    .where(
        _FETCH.c.id == bindparam("fetch_id"),
        _FETCH.c.state == "owed",
        _FETCH.c.next_attempt_at <= bindparam("due_by"),
        or_(_FETCH.c.claimed_until.is_(None), _FETCH.c.claimed_until < bindparam("now")),
    )
    .values(claimed_until=bindparam("claim_until"), attempts=_FETCH.c.attempts + 1)
)
_CLAIMED = (
    select(
        _FETCH.c.token, _FETCH.c.reported_at, _FETCH.c.attempts, _CLIENT.c.id, _CLIENT.c.name,
        _CLIENT.c.receive_result_token_url, _CLIENT.c.secret,
    )
    .join_from(_FETCH, _CLIENT, _FETCH.c.client_id == _CLIENT.c.id)
    .where(_FETCH.c.id == bindparam("fetch_id"))
)  # fmt: skip
# Fenced: it writes only while the claim is this attempt's own (see ``ClaimLost``).
_RECORD = update(_FETCH).where(
    _FETCH.c.id == bindparam("fetch_id"), _FETCH.c.state == "owed", _FETCH.c.attempts == bindparam("attempt")
)
_STORE_RESULT = insert(_RESULT)
_LOGGED_STATUSES = (
    select(_LOG.c.status).where(_LOG.c.toolcall_id == bindparam("toolcall_id")).order_by(_LOG.c.id)
)


@lru_cache(maxsize=1)
def _config() -> dict:
    return settings()


@lru_cache(maxsize=1)
def _database() -> Database:
    return Database(_config()["DATABASE_URL"])


@dataclass(frozen=True)
class ClaimedClient:
    """What a fetch needs of its client (``results.attribute`` reads ``id`` and ``name``)."""

    id: int
    name: str
    result_url: str
    secret: str | None


@dataclass(frozen=True)
class Claim:
    """A fetch record taken for one attempt, and what the attempt needs of it."""

    fetch_id: int
    token: str
    reported_at: datetime
    attempts: int  # this attempt included
    client: ClaimedClient


def claim(db: Database, fetch_id: int) -> Claim | None:
    """Take the fetch for this attempt, atomically, and read what the attempt needs, in the same
    transaction; None when it is not owed, not due or taken."""
    now = utcnow()
    with db.begin() as connection:
        claimed = connection.execute(
            _CLAIM,
            {
                "fetch_id": fetch_id,
                "due_by": now + timedelta(seconds=1),
                "now": now,
                "claim_until": now + timedelta(seconds=CLAIM_SECS),
            },
        ).rowcount
        if claimed != 1:
            return None
        row = connection.execute(_CLAIMED, {"fetch_id": fetch_id}).one()
    token, reported_at, attempts, client_id, name, url, secret = row
    return Claim(fetch_id, token, reported_at, attempts, ClaimedClient(client_id, name, url, secret))


class ClaimLost(Exception):
    """The attempt outlived its claim and another attempt took the fetch over: what this one got is
    not recorded (its decision is rolled back), so that a result is never stored twice."""


# The result is stored unless the sender asks otherwise (the portal's report, the ops page's retry
# and the sweep do: nobody waits for it; tests do wait). STARTED is never stored: nobody reads it
# (Flower has the task-started event), and it would be one more write to Redis per fetch.
@app.task(name="toolcall.fetch_result", bind=True, max_retries=None, track_started=False)
def fetch_result(self, fetch_id: int) -> str:
    """Fetch one owed result (see the module's phases); returns what happened, for Flower."""
    db = _database()
    claimed = claim(db, fetch_id)  # no transaction stays open during the vendor call
    if claimed is None:
        return "nothing to do (not owed, not due, or taken by another attempt)"
    client = claimed.client
    outcome = vendor_client.fetch_result(
        client.result_url,
        claimed.token,
        client_secret=client.secret,
        webhook_id=str(fetch_id),  # the fetch record's id: stable across retries (spec §5)
        production=_config()["TOOLCALL_PRODUCTION"],
        within_grace=utcnow() - claimed.reported_at < EARLY_GRACE,
    )
    verdict = decide(db, claimed, outcome, _config())
    if verdict.startswith("retry in "):
        delay = float(verdict.split()[2])
        if delay <= NEAR_RETRY_SECS:
            raise self.retry(countdown=delay)
    return verdict


def decide(db: Database, claimed: Claim, outcome: vendor_client.FetchOutcome, config: dict) -> str:
    """Record what one attempt got (phase 4), in one transaction; returns the verdict.

    A decision that cannot be recorded (a database error, the ToolCall changed meanwhile) is
    recorded as an attempt to retry instead; one whose claim was lost is not recorded at all."""
    try:
        with db.begin() as connection:
            if outcome.kind == "ok":
                verdict = _decide(connection, claimed, outcome.body, config)
            elif outcome.kind == "retry":
                verdict = _plan_retry(connection, claimed, outcome, config)
            else:
                verdict = _fail(connection, claimed, outcome.body, outcome.error)
    except ClaimLost:
        return _claim_lost(claimed)
    except Exception as e:
        # Nothing of the decision was kept (it was rolled back). The attempt is still recorded, as
        # one to retry: otherwise the claim would hold the fetch for CLAIM_SECS, the sweep would
        # re-queue it, and it would fail the same way for ever, the give-up time never applying.
        # A ToolCall that another process moved meanwhile (another result for the same attempt, the
        # sweep) is decided again at once, on its new state; anything else after the backoff.
        concurrent = isinstance(e, lifecycle.ConcurrentTransition)
        if not concurrent:
            log.exception("result fetch %s: recording the outcome failed", claimed.fetch_id)
        retry = vendor_client.FetchOutcome(
            "retry",
            outcome.status,
            outcome.body,
            error=f"{'the attempt changed meanwhile' if concurrent else 'recording the result failed'}: "
            + str(e)[:500],  # a database error can quote a whole statement
            retry_after=0.0 if concurrent else None,
        )
        try:
            with db.begin() as connection:
                verdict = _plan_retry(connection, claimed, retry, config)
        except ClaimLost:
            return _claim_lost(claimed)
    return verdict


def _claim_lost(claimed: Claim) -> str:
    log.warning(
        "result fetch %s: attempt %s outlived its claim and another attempt took over; nothing recorded",
        claimed.fetch_id,
        claimed.attempts,
    )
    return f"claim lost: attempt {claimed.attempts} was taken over by a later one; nothing recorded"


def _text(value: str) -> str:
    """``value`` as a database can keep it: PostgreSQL text holds no NUL character."""
    return value.replace("\x00", "\ufffd")


def _kept(body: bytes) -> str:
    """What is kept of a body on the fetch record, for inspection (capped, any bytes at all)."""
    return _text(body[:KEPT_BODY].decode("utf-8", "replace")) if body else ""


def _record(db: Connection, claimed: Claim, body: bytes, **values) -> None:
    """Write the attempt on the fetch record -- the body it got and ``values`` -- and end the claim.

    The last write of every decision: raises ``ClaimLost`` (rolling the decision back) when the
    record is no longer owed to this attempt."""
    parameters = {"fetch_id": claimed.fetch_id, "attempt": claimed.attempts, "body": _kept(body)}
    if db.execute(_RECORD, {**parameters, "claimed_until": None, **values}).rowcount != 1:
        raise ClaimLost(claimed.fetch_id)


def _fail(db: Connection, claimed: Claim, body: bytes, reason: str, **values) -> str:
    reason = _text(reason)
    _record(db, claimed, body, state="failed", last_error=reason, **values)
    log.error("result fetch %s failed for good: %s", claimed.fetch_id, reason)
    return f"failed: {reason}"


def _plan_retry(db: Connection, claimed: Claim, outcome, config: dict) -> str:
    delay = (
        outcome.retry_after
        if outcome.retry_after is not None
        else vendor_client.backoff_delay(claimed.attempts, base=config["TOOLCALL_FETCH_BACKOFF_BASE_SECS"])
    )
    due = utcnow() + timedelta(seconds=delay)
    if due > claimed.reported_at + timedelta(seconds=config["TOOLCALL_FETCH_GIVE_UP_SECS"]):
        return _fail(
            db,
            claimed,
            outcome.body,
            f"gave up after {claimed.attempts} attempts; last: {outcome.error}",
        )
    _record(db, claimed, outcome.body, last_error=_text(outcome.error), next_attempt_at=due)
    log.warning("result fetch %s: %s; retry in %.0f s", claimed.fetch_id, outcome.error, delay)
    return f"retry in {delay:.3f} s: {outcome.error}"


def _decide(db: Connection, claimed: Claim, body: bytes, config: dict) -> str:
    try:
        toolcall, document = attribute_row(
            db, claimed.client, body, config["SECRET_KEY"], config["SECRET_KEY_FALLBACKS"]
        )
    except Unattributable as e:
        return _fail(db, claimed, body, f"the result cannot be attributed: {e}")
    late = _late(db, toolcall)
    # The ToolCall's transitions, made at the end as one change (``lifecycle.move``): none when it
    # is finished-ok already (a late result changes no state).
    steps: list[tuple[Status, str]] = []
    if toolcall.status != Status.FINISHED_OK:
        again = toolcall.status == Status.FINISHED_ERR and not late
        steps.append(
            (
                Status.RESULT_TK_RECEIVED,
                f"result token {claimed.token!r} from {claimed.client.name}"
                + (" (late)" if late else " (again)" if again else ""),
            )
        )
    try:
        fields = validate_fields(document, claimed.token, persnr=toolcall.persnr, slug=toolcall.slug)
    except InvalidResult as e:
        if steps:
            steps.append((Status.RESULT_RECEIVED_ERR, f"invalid result: {e}"))
            lifecycle.move(db, toolcall.id, toolcall.status, steps)
        return _fail(db, claimed, body, f"invalid result: {e}", toolcall_id=toolcall.id)
    db.execute(
        _STORE_RESULT,
        dict(
            toolcall_id=toolcall.id, data=body.decode("utf-8"), token=claimed.token, persnr=fields.persnr,
            participant_id=fields.participant_id, exam=fields.exam, exam_type=fields.exam_type,
            passed=fields.passed, score=fields.score, timestamp=fields.timestamp, late=late,
        ),
    )  # fmt: skip
    if steps:
        steps += [
            (Status.RESULT_RECEIVED_OK, "result valid"),
            (Status.RESULT_SAVED, "result stored" + (" (late)" if late else "")),
            (Status.FINISHED_OK, "done"),
        ]
        lifecycle.move(db, toolcall.id, toolcall.status, steps)
    _record(db, claimed, body, state="done", last_error="", toolcall_id=toolcall.id)
    log.info(
        "result fetch %s: stored for toolcall %s%s", claimed.fetch_id, toolcall.id, " (late)" if late else ""
    )
    return f"stored for toolcall {toolcall.id}" + (" (late)" if late else "")


def _late(db: Connection, toolcall: Attributed) -> bool:
    """Whether a result for ``toolcall`` is late (spec §6): the attempt had ended before it came --
    finished-ok, or finished-err because it was superseded, its start token expired or it timed
    out. An attempt that ended only because its result was invalid (``result-received-err``) and
    gets a result again (the vendor reported again, or an operator retried) is not late."""
    if toolcall.status == Status.FINISHED_OK:
        return True
    if toolcall.status != Status.FINISHED_ERR:
        return False
    previous = None
    for status in db.scalars(_LOGGED_STATUSES, {"toolcall_id": toolcall.id}):
        if status == Status.FINISHED_ERR and previous != Status.RESULT_RECEIVED_ERR:
            return True
        previous = status
    return False


@app.task(name="toolcall.sweep")
def sweep() -> dict:
    """Re-queue lost fetches; expire unused start tokens and attempts past their deadline."""
    config = _config()
    db = _database()
    now = utcnow()
    grace = timedelta(seconds=config["TOOLCALL_REQUEUE_GRACE_SECS"])
    token_ttl = timedelta(seconds=config["TOOLCALL_TOKEN_TIMEOUT_SECS"])
    counts = {"requeued": 0, "tokens_expired": 0, "timed_out": 0}
    with db.session() as session:
        overdue = session.scalars(
            select(ResultFetch.id).where(
                ResultFetch.state == "owed",
                ResultFetch.next_attempt_at < now - grace,
                or_(ResultFetch.claimed_until.is_(None), ResultFetch.claimed_until < now),
            )
        ).all()
        # Far retries are not parked in the broker: they are queued here once they are due.
        due_far = session.scalars(
            select(ResultFetch.id).where(
                ResultFetch.state == "owed",
                ResultFetch.next_attempt_at <= now,
                ResultFetch.attempts > 0,
                or_(ResultFetch.claimed_until.is_(None), ResultFetch.claimed_until < now),
            )
        ).all()
    for fetch_id in sorted(set(overdue) | set(due_far)):
        # Nobody waits for a re-queued fetch's result (the record is the truth): not stored.
        fetch_result.apply_async(args=[fetch_id], queue="callbacks", ignore_result=True)
        counts["requeued"] += 1
    with db.session() as session:
        # Read whole before changing any: advancing writes to the table a pending cursor would read.
        waiting = session.scalars(select(ToolCall).where(ToolCall.status == Status.START_TK_SENT)).all()
        for toolcall in waiting:
            if toolcall.started + token_ttl < now:
                _expire(session, toolcall, Status.START_TK_ERR, "the start token expired unused")
                counts["tokens_expired"] += 1
        running = session.scalars(select(ToolCall).where(ToolCall.status == Status.START_DATA_SENT)).all()
        for toolcall in running:
            if toolcall.started + timedelta(minutes=toolcall.tool.deadline_minutes) < now:
                _expire(
                    session,
                    toolcall,
                    Status.TOOL_TIMEOUT_ERR,
                    f"no result within {toolcall.tool.deadline_minutes} minutes",
                )
                counts["timed_out"] += 1
    return counts


def _expire(session, toolcall: ToolCall, status: Status, details: str) -> None:
    try:
        lifecycle.advance(session, toolcall, status, details)
    except lifecycle.ConcurrentTransition:
        pass  # it moved on meanwhile: nothing to expire
