"""The toolcall tasks: result fetches that are never lost, and the sweep that guarantees it.

The life of a result fetch:

1. **Owed.** ``/result/`` writes a ``toolcall_resultfetch`` row (state ``owed``) and queues
   ``toolcall.fetch_result``. The row is the truth; the message is only a trigger.
2. **Claimed.** The task claims the row with one conditional UPDATE (owed, due, not claimed by a live
   attempt). A duplicate message finds nothing to claim and stops.
3. **Fetched.** One GET of the client's result URL (``webapp.vendor_client``): timeouts, no
   redirects, a size cap, signed when the client has a secret.
4. **Decided.** A body that is attributed and valid is stored and the ToolCall finishes; an
   attributed invalid one moves the ToolCall to ``result-received-err``; one that cannot be
   attributed fails the fetch. A retryable outcome (connection error, timeout, 5xx, 429, early
   404/409/425) is retried with backoff, through Celery's own retry when due within 10 minutes, and
   by the sweep when later. Every attempt is recorded on the row. The delay before attempt n+1 is
   ``min(base · 2^n, 1 h)`` with equal jitter, ``base`` being ``TOOLCALL_FETCH_BACKOFF_BASE_SECS``
   (default 5 s, as §5 says; tests make it small), unless the vendor's ``Retry-After`` says otherwise.
5. **Swept.** Every ``TOOLCALL_SWEEP_SECS`` the sweep re-queues owed fetches whose next attempt is
   overdue (their message was lost), expires unused start tokens and attempts past their deadline.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import lru_cache

from sqlalchemy import or_, select, update

from webapp import lifecycle, vendor_client
from webapp.config import settings
from webapp.db import Database
from webapp.lifecycle import Status
from webapp.models import ResultFetch, ToolCall, ToolCallResult, utcnow
from webapp.results import InvalidResult, Unattributable, attribute, validate
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


@lru_cache(maxsize=1)
def _config() -> dict:
    return settings()


@lru_cache(maxsize=1)
def _database() -> Database:
    return Database(_config()["DATABASE_URL"])


def claim(db: Database, fetch_id: int) -> bool:
    """Take the fetch for this attempt, atomically; False when it is not owed, not due or taken."""
    now = utcnow()
    with db.session() as session:
        claimed = session.execute(
            update(ResultFetch)
            .where(
                ResultFetch.id == fetch_id,
                ResultFetch.state == "owed",
                ResultFetch.next_attempt_at <= now + timedelta(seconds=1),
                or_(ResultFetch.claimed_until.is_(None), ResultFetch.claimed_until < now),
            )
            .values(claimed_until=now + timedelta(seconds=CLAIM_SECS), attempts=ResultFetch.attempts + 1)
        ).rowcount
    return claimed == 1


@app.task(name="toolcall.fetch_result", bind=True, max_retries=None)
def fetch_result(self, fetch_id: int) -> str:
    """Fetch one owed result (see the module's phases); returns what happened, for Flower."""
    db = _database()
    if not claim(db, fetch_id):
        return "nothing to do (not owed, not due, or taken by another attempt)"
    config = _config()
    with db.session() as session:  # read what the call needs; no transaction stays open during it
        fetch = session.get(ResultFetch, fetch_id)
        client = fetch.client
        request = {
            "url": client.receive_result_token_url,
            "token": fetch.token,
            "client_secret": client.secret,
            "within_grace": utcnow() - fetch.reported_at < EARLY_GRACE,
        }
    outcome = vendor_client.fetch_result(
        request["url"],
        request["token"],
        client_secret=request["client_secret"],
        webhook_id=str(fetch_id),  # the fetch record's id: stable across retries (spec §5)
        production=config["TOOLCALL_PRODUCTION"],
        within_grace=request["within_grace"],
    )
    try:
        with db.session() as session:
            fetch = session.get(ResultFetch, fetch_id)
            fetch.body = _kept(outcome.body)
            fetch.claimed_until = None
            if outcome.kind == "ok":
                verdict = _decide(session, fetch, outcome.body, config)
            elif outcome.kind == "retry":
                verdict = _plan_retry(fetch, outcome, config)
            else:
                verdict = _fail(fetch, outcome.error)
    except Exception as e:
        # Nothing of the decision was kept (it was rolled back). The attempt is still recorded, as
        # one to retry: otherwise the claim would hold the fetch for CLAIM_SECS, the sweep would
        # re-queue it, and it would fail the same way for ever, the give-up time never applying.
        # A ToolCall that another process moved meanwhile (another result for the same attempt, the
        # sweep) is decided again at once, on its new state; anything else after the backoff.
        concurrent = isinstance(e, lifecycle.ConcurrentTransition)
        if not concurrent:
            log.exception("result fetch %s: recording the outcome failed", fetch_id)
        retry = vendor_client.FetchOutcome(
            "retry",
            outcome.status,
            outcome.body,
            error=f"{'the attempt changed meanwhile' if concurrent else 'recording the result failed'}: "
            + str(e)[:500],  # a database error can quote a whole statement
            retry_after=0.0 if concurrent else None,
        )
        with db.session() as session:
            fetch = session.get(ResultFetch, fetch_id)
            fetch.body = _kept(outcome.body)
            fetch.claimed_until = None
            verdict = _plan_retry(fetch, retry, config)
    if verdict.startswith("retry in "):
        delay = float(verdict.split()[2])
        if delay <= NEAR_RETRY_SECS:
            raise self.retry(countdown=delay)
    return verdict


def _text(value: str) -> str:
    """``value`` as a database can keep it: PostgreSQL text holds no NUL character."""
    return value.replace("\x00", "\ufffd")


def _kept(body: bytes) -> str:
    """What is kept of a body on the fetch record, for inspection (capped, any bytes at all)."""
    return _text(body[:KEPT_BODY].decode("utf-8", "replace")) if body else ""


def _fail(fetch: ResultFetch, reason: str) -> str:
    reason = _text(reason)
    fetch.state = "failed"
    fetch.last_error = reason
    log.error("result fetch %s failed for good: %s", fetch.id, reason)
    return f"failed: {reason}"


def _plan_retry(fetch: ResultFetch, outcome, config: dict) -> str:
    delay = (
        outcome.retry_after
        if outcome.retry_after is not None
        else vendor_client.backoff_delay(fetch.attempts, base=config["TOOLCALL_FETCH_BACKOFF_BASE_SECS"])
    )
    due = utcnow() + timedelta(seconds=delay)
    if due > fetch.reported_at + timedelta(seconds=config["TOOLCALL_FETCH_GIVE_UP_SECS"]):
        return _fail(fetch, f"gave up after {fetch.attempts} attempts; last: {outcome.error}")
    fetch.last_error = _text(outcome.error)
    fetch.next_attempt_at = due
    log.warning("result fetch %s: %s; retry in %.0f s", fetch.id, outcome.error, delay)
    return f"retry in {delay:.3f} s: {outcome.error}"


def _decide(session, fetch: ResultFetch, body: bytes, config: dict) -> str:
    try:
        toolcall, document = attribute(
            session, fetch.client, body, config["SECRET_KEY"], config["SECRET_KEY_FALLBACKS"]
        )
    except Unattributable as e:
        return _fail(fetch, f"the result cannot be attributed: {e}")
    fetch.toolcall_id = toolcall.id
    late = _late(toolcall)
    if toolcall.status != Status.FINISHED_OK:
        again = toolcall.status == Status.FINISHED_ERR and not late
        lifecycle.advance(
            session,
            toolcall,
            Status.RESULT_TK_RECEIVED,
            f"result token {fetch.token!r} from {fetch.client.name}"
            + (" (late)" if late else " (again)" if again else ""),
        )
    try:
        fields = validate(document, toolcall, fetch.token)
    except InvalidResult as e:
        if toolcall.status == Status.RESULT_TK_RECEIVED:
            lifecycle.advance(session, toolcall, Status.RESULT_RECEIVED_ERR, f"invalid result: {e}")
        return _fail(fetch, f"invalid result: {e}")
    session.add(
        ToolCallResult(
            toolcall_id=toolcall.id, data=body.decode("utf-8"), token=fetch.token, persnr=fields.persnr,
            participant_id=fields.participant_id, exam=fields.exam, exam_type=fields.exam_type,
            passed=fields.passed, score=fields.score, timestamp=fields.timestamp, late=late,
        )
    )  # fmt: skip
    if toolcall.status == Status.RESULT_TK_RECEIVED:
        lifecycle.advance(session, toolcall, Status.RESULT_RECEIVED_OK, "result valid")
        lifecycle.advance(
            session, toolcall, Status.RESULT_SAVED, "result stored" + (" (late)" if late else "")
        )
        lifecycle.advance(session, toolcall, Status.FINISHED_OK, "done")
    fetch.state = "done"
    fetch.last_error = ""
    log.info("result fetch %s: stored for toolcall %s%s", fetch.id, toolcall.id, " (late)" if late else "")
    return f"stored for toolcall {toolcall.id}" + (" (late)" if late else "")


def _late(toolcall: ToolCall) -> bool:
    """Whether a result for ``toolcall`` is late (spec §6): the attempt had ended before it came --
    finished-ok, or finished-err because it was superseded, its start token expired or it timed
    out. An attempt that ended only because its result was invalid (``result-received-err``) and
    gets a result again (the vendor reported again, or an operator retried) is not late."""
    if toolcall.status == Status.FINISHED_OK:
        return True
    if toolcall.status != Status.FINISHED_ERR:
        return False
    previous = None
    for row in toolcall.log:
        if row.status == Status.FINISHED_ERR and previous != Status.RESULT_RECEIVED_ERR:
            return True
        previous = row.status
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
        fetch_result.apply_async(args=[fetch_id], queue="callbacks")
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
