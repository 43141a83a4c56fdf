"""The result fetch: the whole life of one fetch of a vendor's result, from owed to done or failed.

1. **Owed.** ``/result/`` records the fetch (``owe``: a ``toolcall_resultfetch`` row in state
   ``owed``) and queues the ``toolcall.fetch_result`` task (``trigger``). The row is the truth; the
   message is only a trigger. A failed fetch is owed again (``reopen``) when the vendor reports the
   token again or an operator retries it.
2. **Claimed.** An attempt claims the row with one conditional UPDATE (owed, due, not claimed by a
   live attempt) and, in the same transaction, reads what the fetch needs of it and of its client
   (``claim``). A duplicate message finds nothing to claim and stops. No transaction stays open
   during the fetch. The claim is a lease of ``CLAIM_SECS``; the row's attempt count, raised by
   every claim, fences it: an attempt that stalled past its lease (a paused process) while another
   took the fetch over finds, when it comes to record, that the count is no longer its own, and
   keeps nothing.
3. **Fetched.** One GET of the client's result URL (``webapp.vendor_client``): timeouts, no
   redirects, a size cap, signed when the client has a secret.
4. **Decided** (``decide``), in one transaction, the fetch record written last and only while the
   claim still holds (otherwise the whole decision is rolled back). A body that is attributed and
   valid is stored and the ToolCall finishes (its four transitions are one change through
   ``webapp.lifecycle``); an attributed invalid one moves the ToolCall to ``result-received-err``;
   one that cannot be attributed fails the fetch. A retryable outcome (connection error, timeout,
   5xx, 429, early 404/409/425) is retried after ``retry_delay``, or after the vendor's
   ``Retry-After`` but never sooner than ``retry_floor``: the task hands a retry due within
   ``NEAR_RETRY_SECS`` back to the broker (Celery's own retry), the sweep queues later ones. Every
   attempt is recorded on the row, also one whose fetch or decision raised (as a retry, so that
   the give-up time applies). The outcome is a ``Decision``.
5. **Swept.** Every ``TOOLCALL_SWEEP_SECS`` the sweep takes a bounded batch of owed fetches whose
   next attempt is overdue (their message was lost, or a far retry has come due), oldest first,
   recording that it queued them so that the next run leaves them alone (``take_due``), and ends
   unused start tokens and attempts past their deadline in set-based batches (``expire``).

No Celery here: ``worker.fetch_tasks`` runs ``attempt`` and the sweep as tasks, the web layer owes,
re-opens and queues. A fetch reads and writes with Core statements, in two transactions (claim,
decision): the worker's CPU is what limits how many fetches a second one process completes, and ORM
objects cost more of it than the statements themselves (docs/portal-performance.md). The ToolCall
still changes only through ``webapp.lifecycle``, and attribution and validation are
``webapp.results``'.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Protocol

from sqlalchemy import bindparam, func, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import celeryconfig
from webapp import lifecycle, vendor_client
from webapp.db import Database
from webapp.lifecycle import Status
from webapp.models import Client, Exam, ResultFetch, ToolCall, ToolCallLog, ToolCallResult, utcnow
from webapp.results import Attributed, InvalidResult, Unattributable, attribute, validate
from webapp.vendor_client import FetchOutcome

log = logging.getLogger("webapp.fetches")

#: The task that makes one attempt (``worker.fetch_tasks``), queued by name.
FETCH_TASK = "toolcall.fetch_result"
#: How long a claim holds: longer than one fetch can take (15 s) with room to record it.
CLAIM_SECS = 120
#: Retries due sooner than this go back to the broker (Celery retry); later ones wait for the sweep,
#: because Redis would redeliver an ETA message after its visibility timeout.
NEAR_RETRY_SECS = 600
#: 404/409/425 are retried this long after the report (the vendor may not have stored it yet).
EARLY_GRACE = timedelta(minutes=10)
#: Kept of a body on the fetch record, for inspection.
KEPT_BODY = 64 * 1024
#: The retry delay's base (docs/api.md §5: 5 s; ``TOOLCALL_FETCH_BACKOFF_BASE_SECS``) and its ceiling.
RETRY_BASE = 5.0
RETRY_CAP = 3600.0
#: How many times in a row a decision that another process's change to the ToolCall spoiled is made
#: again at once (on the new state) before the attempt is retried after the backoff instead.
REDECIDES = 3

# ---- 1. owed ----------------------------------------------------------------------------------------


class TooManyOwed(Exception):
    """The client has as many fetches owed as it may have at once; the text says so, for the vendor."""


def owe(
    session: Session,
    client: Client,
    token: str,
    max_owed: int | None = None,
    reopen_failed: bool = True,
) -> tuple[ResultFetch, bool]:
    """Record that a fetch of (client, token) is owed; True when it became owed now.

    A repeat changes nothing, unless the fetch had failed for good: then the vendor is saying "try
    again", and it is owed again (unless ``reopen_failed`` is false: the result page's refresh only
    looks). Raises ``TooManyOwed`` (recording nothing) when the report would make a fetch owed while
    the client has ``max_owed`` owed already: each owed fetch costs requests to the vendor, and a
    report needs no authentication."""
    fetch = session.scalar(
        select(ResultFetch).where(ResultFetch.client_id == client.id, ResultFetch.token == token)
    )
    again = reopen_failed and fetch is not None and fetch.state == "failed"
    if max_owed is not None and (fetch is None or again):
        _check_owed(session, client, max_owed)
    if fetch is None:
        fetch = ResultFetch(client_id=client.id, token=token, state="owed", next_attempt_at=utcnow())
        session.add(fetch)
        try:
            session.commit()
        except IntegrityError:  # the same report arrived twice at once: the other one recorded it
            session.rollback()
            fetch = session.scalar(
                select(ResultFetch).where(ResultFetch.client_id == client.id, ResultFetch.token == token)
            )
            return fetch, False
        log.info("result fetch %s owed to client %s", fetch.id, client.name)
        return fetch, True
    if again:
        # Conditional, as an operator's retry is: between this read and the write, a retry may have
        # re-opened the fetch and an attempt stored its result. Writing what was read would make a
        # done fetch owed again, and the result would be stored a second time.
        reopened = reopen(session, fetch.id, f"reported again after failing: {fetch.last_error}")
        session.refresh(fetch)
        if reopened:
            log.info("result fetch %s owed again to client %s", fetch.id, client.name)
        return fetch, reopened
    return fetch, False


def _check_owed(session: Session, client: Client, max_owed: int) -> None:
    owed = session.scalar(
        select(func.count())
        .select_from(ResultFetch)
        .where(ResultFetch.client_id == client.id, ResultFetch.state == "owed")
    )
    if owed >= max_owed:
        raise TooManyOwed(
            f"client {client.name} has {owed} result fetches owed, as many as it may have at once; "
            "report this result again in a minute"
        )


def reopen(session: Session, fetch_id: int, note: str) -> bool:
    """Make a failed fetch owed again, due now, with a fresh give-up window (committed); False when
    it was not failed (a second click, or the vendor's own re-report, must not re-open -- and
    re-queue -- a fetch that is already owed again or done)."""
    now = utcnow()
    reopened = session.execute(
        update(ResultFetch)
        .where(ResultFetch.id == fetch_id, ResultFetch.state == "failed")
        .values(state="owed", next_attempt_at=now, reported_at=now, claimed_until=None, last_error=note),
        execution_options={"synchronize_session": False},
    ).rowcount
    session.commit()
    return reopened == 1


def queue(celery, fetch_id: int) -> None:
    """Queue an attempt of the fetch; raises when the broker cannot be reached.

    Nobody waits for the task's result, so nothing subscribes to it: with Redis away, a
    subscription would hold a web request for its ~20 reconnection attempts (about 19 s), where
    the publish alone gives up in well under a second."""
    celery.send_task(FETCH_TASK, args=[fetch_id], queue=celeryconfig.CALLBACKS_QUEUE, ignore_result=True)


def trigger(celery, fetch_id: int) -> bool:
    """``queue``, with the broker's failure logged instead of raised: the database is the truth,
    and the sweep queues the fetch once the broker is back. True when it was queued."""
    try:
        queue(celery, fetch_id)
    except Exception as e:  # the broker's failure must not lose the report or fail the vendor
        log.error("could not queue result fetch %s (the sweep will): %s", fetch_id, e)
        return False
    return True


# ---- 2. claimed -------------------------------------------------------------------------------------

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


@dataclass(frozen=True)
class ClaimedClient:
    """What a fetch needs of its client (attribution reads ``id`` and ``name``)."""

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


# ---- 3. fetched, 4. decided -------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What one attempt came to. ``retry_in`` is set (seconds) when it is to be tried again;
    ``text`` says what happened, for the log and Flower."""

    outcome: Literal["stored", "failed", "retry", "claim-lost", "nothing-to-do"]
    text: str
    retry_in: float | None = None

    def __str__(self) -> str:
        return self.text


NOTHING_TO_DO = Decision("nothing-to-do", "nothing to do (not owed, not due, or taken by another attempt)")


def attempt(db: Database, fetch_id: int, config: dict) -> Decision:
    """One attempt of the fetch: claim it, fetch from the vendor, decide (phases 2-4)."""
    claimed = claim(db, fetch_id)  # no transaction stays open during the vendor call
    if claimed is None:
        return NOTHING_TO_DO
    client = claimed.client
    try:
        outcome = vendor_client.fetch_result(
            client.result_url,
            claimed.token,
            client_secret=client.secret,
            webhook_id=str(fetch_id),  # the fetch record's id: stable across retries (docs/api.md §5)
            production=config["TOOLCALL_PRODUCTION"],
            within_grace=utcnow() - claimed.reported_at < EARLY_GRACE,
        )
    except Exception as e:
        # A bug: the fetch client makes an outcome of everything a vendor, the network or a URL
        # does. Recorded as a retry with the reason all the same: unrecorded, the claim would lapse,
        # the sweep would queue the fetch again and it would fail the same way for ever, past the
        # give-up time.
        log.exception("result fetch %s: the fetch failed unexpectedly", fetch_id)
        outcome = FetchOutcome(
            "retry", error=f"the fetch failed unexpectedly: {type(e).__name__}: {str(e)[:500]}"
        )
    return decide(db, claimed, outcome, config)


class _Random(Protocol):
    def random(self) -> float: ...


def retry_delay(attempt: int, base: float = RETRY_BASE, rng: _Random = random) -> float:
    """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 0): §5's
    ``min(5 s · 2^n, 1 h)`` with equal jitter, i.e. half of it fixed and half random, so retries
    from many fetches spread out without any of them coming back much too early. ``base`` replaces
    the 5 s (``TOOLCALL_FETCH_BACKOFF_BASE_SECS``)."""
    floor = retry_floor(attempt, base)
    return floor + rng.random() * floor


def retry_floor(attempt: int, base: float = RETRY_BASE) -> float:
    """The least ``retry_delay`` waits after attempt ``attempt``: half of ``min(base · 2^n, 1 h)``.
    A vendor's ``Retry-After`` is honoured from there on: asking for less (0, a date gone by) does
    not make a retry come sooner."""
    if attempt < 0:
        raise ValueError(f"attempt must be 0 or more, not {attempt}")
    # Past 2^32 the cap applies for any sensible base; stopping there keeps 2**attempt small for
    # absurd attempt counts.
    return min(base * 2 ** min(attempt, 32), RETRY_CAP) / 2


def decide(db: Database, claimed: Claim, outcome: FetchOutcome, config: dict) -> Decision:
    """Record what one attempt got (phase 4), in one transaction.

    A decision that another process spoiled by moving the ToolCall meanwhile (another result for
    the same attempt, the sweep) is made again at once, on the ToolCall's new state, up to
    ``REDECIDES`` times. A decision that still cannot be recorded (a database error, the ToolCall
    changing every time) is recorded as an attempt to retry after the backoff instead; one whose
    claim was lost is not recorded at all."""
    for redecide in range(REDECIDES + 1):
        try:
            with db.begin() as connection:
                if outcome.kind == "ok":
                    return _store(connection, claimed, outcome.body, config)
                if outcome.kind == "retry":
                    return _plan_retry(connection, claimed, outcome, config)
                return _fail(connection, claimed, outcome.body, outcome.error)
        except ClaimLost:
            return _claim_lost(claimed)
        except lifecycle.ConcurrentTransition as e:
            if redecide < REDECIDES:
                continue  # the same body, decided again on the ToolCall's new state
            error = f"the attempt changed meanwhile: {e}"
        except Exception as e:
            log.exception("result fetch %s: recording the outcome failed", claimed.fetch_id)
            error = f"recording the result failed: {str(e)[:500]}"  # it can quote a whole statement
        break
    # Nothing of the decision was kept (it was rolled back). The attempt is still recorded, as one
    # to retry: otherwise the claim would hold the fetch for CLAIM_SECS, the sweep would re-queue
    # it, and it would fail the same way for ever, the give-up time never applying.
    retry = FetchOutcome("retry", outcome.status, outcome.body, error=error)
    try:
        with db.begin() as connection:
            return _plan_retry(connection, claimed, retry, config)
    except ClaimLost:
        return _claim_lost(claimed)


def _claim_lost(claimed: Claim) -> Decision:
    log.warning(
        "result fetch %s: attempt %s outlived its claim and another attempt took over; nothing recorded",
        claimed.fetch_id,
        claimed.attempts,
    )
    return Decision(
        "claim-lost",
        f"claim lost: attempt {claimed.attempts} was taken over by a later one; nothing recorded",
    )


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


def _fail(db: Connection, claimed: Claim, body: bytes, reason: str, **values) -> Decision:
    reason = _text(reason)
    _record(db, claimed, body, state="failed", last_error=reason, **values)
    log.error("result fetch %s failed for good: %s", claimed.fetch_id, reason)
    return Decision("failed", f"failed: {reason}")


def _plan_retry(db: Connection, claimed: Claim, outcome: FetchOutcome, config: dict) -> Decision:
    base = config["TOOLCALL_FETCH_BACKOFF_BASE_SECS"]
    if outcome.retry_after is None:
        delay = retry_delay(claimed.attempts, base=base)
    else:
        # The vendor's wish, but never sooner than the backoff: "Retry-After: 0" (or a date gone
        # by) made one fetch ask its vendor a thousand times in ten seconds.
        delay = max(outcome.retry_after, retry_floor(claimed.attempts, base=base))
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
    return Decision("retry", f"retry in {delay:.3f} s: {outcome.error}", retry_in=delay)


def _store(db: Connection, claimed: Claim, body: bytes, config: dict) -> Decision:
    try:
        toolcall, document = attribute(
            db, claimed.client, body, config["SECRET_KEY"], config["SECRET_KEY_FALLBACKS"]
        )
    except Unattributable as e:
        return _fail(db, claimed, body, f"the result cannot be attributed: {e}")
    late = is_late(db, toolcall)
    # The ToolCall's transitions, made at the end as one change: none when it is finished-ok
    # already (a late result changes no state).
    steps = lifecycle.received(
        toolcall.status, late, f"result token {claimed.token!r} from {claimed.client.name}"
    )
    try:
        fields = validate(document, claimed.token, persnr=toolcall.persnr, slug=toolcall.slug)
    except InvalidResult as e:
        if steps:
            steps.append((Status.RESULT_RECEIVED_ERR, f"invalid result: {e}"))
            lifecycle.advance(db, toolcall, *steps)
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
        lifecycle.advance(db, toolcall, *steps)
    _record(db, claimed, body, state="done", last_error="", toolcall_id=toolcall.id)
    log.info(
        "result fetch %s: stored for toolcall %s%s", claimed.fetch_id, toolcall.id, " (late)" if late else ""
    )
    return Decision("stored", f"stored for toolcall {toolcall.id}" + (" (late)" if late else ""))


def is_late(db: Connection | Session, toolcall: Attributed) -> bool:
    """Whether a result for ``toolcall`` is late (docs/api.md §6): the attempt had ended before it came --
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


# ---- 5. swept ---------------------------------------------------------------------------------------

_TOOLCALL = ToolCall.__table__
_EXAM = Exam.__table__


def take_due(db: Database, config: dict, limit: int) -> list[int]:
    """Take up to ``limit`` owed fetches for the sweep to queue, oldest due first, recording on
    each that it is queued now (``queued_at``); their ids.

    A fetch is taken when it has been due for longer than ``TOOLCALL_REQUEUE_GRACE_SECS`` -- its
    message was lost (broker wiped, worker killed before acknowledging), or it is a far retry,
    which waits in the database rather than in the broker -- unless a live attempt holds it or the
    sweep queued it within the grace already (its message may still be on its way). Taking is one
    UPDATE of the rows a subquery picks, so two runs never take the same fetch (on PostgreSQL rows
    another transaction has locked are skipped, not waited for); the walk is the partial index of
    owed fetches by due time, so done and failed fetches cost nothing."""
    if limit <= 0:
        return []
    now = utcnow()
    overdue = now - timedelta(seconds=config["TOOLCALL_REQUEUE_GRACE_SECS"])
    picked = (
        select(_FETCH.c.id)
        .where(
            _FETCH.c.state == "owed",
            _FETCH.c.next_attempt_at < overdue,
            or_(_FETCH.c.claimed_until.is_(None), _FETCH.c.claimed_until < now),
            or_(_FETCH.c.queued_at.is_(None), _FETCH.c.queued_at < overdue),
        )
        .order_by(_FETCH.c.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    taken = update(_FETCH).where(_FETCH.c.id.in_(picked)).values(queued_at=now).returning(_FETCH.c.id)
    with db.begin() as connection:
        return sorted(connection.scalars(taken).all())


def expire(db: Database, config: dict, limit: int | None = None) -> dict[str, int]:
    """End, oldest first and at most ``limit`` of each kind (``TOOLCALL_SWEEP_BATCH``), the attempts
    whose start token expired unused and those past their tool's deadline; how many of each.

    Set-based: the ids come from the index of ToolCalls by status and start, and each kind is one
    change of them all (``lifecycle.advance_many``: a log row per step for each, as ever)."""
    now = utcnow()
    limit = limit or config["TOOLCALL_SWEEP_BATCH"]
    token_ttl = timedelta(seconds=config["TOOLCALL_TOKEN_TIMEOUT_SECS"])
    oldest_first = (_TOOLCALL.c.started, _TOOLCALL.c.id)
    with db.begin() as connection:
        unused = connection.scalars(
            select(_TOOLCALL.c.id)
            .where(_TOOLCALL.c.status == Status.START_TK_SENT, _TOOLCALL.c.started < now - token_ttl)
            .order_by(*oldest_first)
            .limit(limit)
        ).all()
        expired = lifecycle.advance_many(
            connection, unused, Status.START_TK_SENT, (Status.START_TK_ERR, "the start token expired unused")
        )
    timed_out: list[int] = []
    with db.begin() as connection:
        # Tools grouped by deadline: one query per distinct deadline, not per tool or per attempt.
        by_deadline: dict[int, list[int]] = {}
        for tool_id, minutes in connection.execute(select(_EXAM.c.id, _EXAM.c.deadline_minutes)):
            by_deadline.setdefault(minutes, []).append(tool_id)
        for minutes, tools in sorted(by_deadline.items()):
            left = limit - len(timed_out)
            if left <= 0:
                break
            late = connection.scalars(
                select(_TOOLCALL.c.id)
                .where(
                    _TOOLCALL.c.status == Status.START_DATA_SENT,
                    _TOOLCALL.c.started < now - timedelta(minutes=minutes),
                    _TOOLCALL.c.tool_id.in_(tools),
                )
                .order_by(*oldest_first)
                .limit(left)
            ).all()
            timed_out += lifecycle.advance_many(
                connection,
                late,
                Status.START_DATA_SENT,
                (Status.TOOL_TIMEOUT_ERR, f"no result within {minutes} minutes"),
            )
    return {"tokens_expired": len(expired), "timed_out": len(timed_out)}
