"""The ToolCall lifecycle: one transition table, checked on every change.

Rules (docs/api.md §6):

- A ToolCall is created in ``initial`` (``create``); every later status change goes through
  ``advance`` below.
- ``TRANSITIONS`` below is the whole truth: a change it does not list raises ``IllegalTransition``
  and changes nothing.
- Changes are safe under concurrency: ``advance`` updates the row only where the status is still
  the one it read (compare and set); if another process moved it first, ``ConcurrentTransition``.
- Each change writes exactly one ``toolcall_toolcalllog`` row (status and details), and creating a
  ToolCall writes the ``initial`` row; nothing else goes into that table.
- The three error states move on to ``finished-err`` at once, in the same operation.
- ``advance`` makes one change or several in a row as one operation (the result fetch's happy
  path is four): every step is checked against the table first, then one compare-and-set UPDATE
  takes the ToolCall from the status it was read in to the last step's, and one INSERT writes a
  log row per step. The intermediate statuses are never visible to another transaction either
  way, so this is the same as advancing step by step inside one transaction, at a quarter of the
  statements. It takes an ORM ``ToolCall`` in a session, or the id and status a caller read on a
  Core connection (a result fetch reads only the columns it needs).
- ``advance_many`` is the same change for many ToolCalls in the same status at once (the sweep's
  expiries): one UPDATE of those still in that status, and one log row per step for each of them.
- The ToolCalls in each status are counted as they change (``toolcall_statuscount``): every change
  adds a row per status it leaves (-n) and takes (+n), in the same transaction, so the counts are
  exact whatever the table's size, and reading them (``counts``) is cheap. Rows are only added --
  no counter row is updated, so concurrent changes never wait on each other -- and the sweep sums
  them into one row per status (``compact_counts``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from sqlalchemy import bindparam, delete, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from webapp.models import Exam, StatusCount, ToolCall, ToolCallLog, User, utcnow

log = logging.getLogger("webapp.lifecycle")


class Status(StrEnum):
    INITIAL = "initial"
    START_TK_SENT = "start-tk-sent"
    START_DATA_SENT = "start-data-sent"
    START_TK_ERR = "start-tk-err"
    RESULT_TK_RECEIVED = "result-tk-received"
    TOOL_TIMEOUT_ERR = "tool-timeout-err"
    RESULT_RECEIVED_OK = "result-received-ok"
    RESULT_RECEIVED_ERR = "result-received-err"
    RESULT_SAVED = "result-saved"
    FINISHED_OK = "finished-ok"
    FINISHED_ERR = "finished-err"


_NAMES = frozenset(status.value for status in Status)

#: from -> the statuses it may move to (and when).
TRANSITIONS: dict[Status, frozenset[Status]] = {
    # token issued | superseded
    Status.INITIAL: frozenset({Status.START_TK_SENT, Status.FINISHED_ERR}),
    # fetched | expired | superseded
    Status.START_TK_SENT: frozenset({Status.START_DATA_SENT, Status.START_TK_ERR, Status.FINISHED_ERR}),
    # result | deadline | superseded
    Status.START_DATA_SENT: frozenset(
        {Status.RESULT_TK_RECEIVED, Status.TOOL_TIMEOUT_ERR, Status.FINISHED_ERR}
    ),
    # valid | invalid
    Status.RESULT_TK_RECEIVED: frozenset({Status.RESULT_RECEIVED_OK, Status.RESULT_RECEIVED_ERR}),
    Status.RESULT_RECEIVED_OK: frozenset({Status.RESULT_SAVED}),
    Status.RESULT_SAVED: frozenset({Status.FINISHED_OK}),
    Status.START_TK_ERR: frozenset({Status.FINISHED_ERR}),  # at once
    Status.TOOL_TIMEOUT_ERR: frozenset({Status.FINISHED_ERR}),  # at once
    Status.RESULT_RECEIVED_ERR: frozenset({Status.FINISHED_ERR}),  # at once
    Status.FINISHED_ERR: frozenset(
        {Status.RESULT_TK_RECEIVED}
    ),  # a late result, or a failed one fetched again
    Status.FINISHED_OK: frozenset(),
}

#: Attempts still under way: a newer attempt of the same user and tool supersedes them.
OPEN = frozenset({Status.INITIAL, Status.START_TK_SENT, Status.START_DATA_SENT})
#: Error states that end the attempt in the same operation.
FAILING = frozenset({Status.START_TK_ERR, Status.TOOL_TIMEOUT_ERR, Status.RESULT_RECEIVED_ERR})
#: Statuses that end an attempt (``ended`` is set).
ENDING = frozenset({Status.FINISHED_OK, Status.FINISHED_ERR})


class IllegalTransition(ValueError):
    """A status change the transition table does not allow."""


class ConcurrentTransition(RuntimeError):
    """Another process changed the ToolCall's status first; re-read it and decide again."""


def check(current: str, new: str) -> None:
    """Raise IllegalTransition unless ``current -> new`` is in the table."""
    for status in (current, new):
        if status not in _NAMES:
            raise IllegalTransition(f"unknown status {status!r}; the statuses are: {', '.join(Status)}")
    allowed = TRANSITIONS[Status(current)]
    if Status(new) not in allowed:
        options = ", ".join(sorted(allowed)) or "nothing (it is final)"
        raise IllegalTransition(f"a ToolCall in {current} cannot move to {new}; it may move to: {options}")


def create(session: Session, tool: Exam, user: User, details: str = "") -> ToolCall:
    """A new attempt in ``initial``, with its first log row (flushed, not committed)."""
    # The highest number so far, not a count: numbers stay unique even if rows were ever removed.
    previous = session.scalar(
        select(func.max(ToolCall.attempt)).where(ToolCall.tool_id == tool.id, ToolCall.user_id == user.id)
    )
    toolcall = ToolCall(tool=tool, user=user, status=Status.INITIAL, attempt=(previous or 0) + 1)
    session.add(toolcall)
    session.flush()
    session.add(
        ToolCallLog(toolcall_id=toolcall.id, status=Status.INITIAL, details=details or "attempt started")
    )
    session.flush()
    session.execute(_ADD_COUNTS, [{"status": str(Status.INITIAL), "delta": 1}])
    session.expire(toolcall, ["log"])
    log.info("toolcall %s: created (tool %s, user %s)", toolcall.id, tool.slug, user.id)
    return toolcall


# A change is two Core statements, built once: the ORM's unit of work (flush, identity map
# bookkeeping, reloading what it cannot know) and building a statement on every call cost more CPU
# than the statements themselves (docs/portal-performance.md).
_TOOLCALL = ToolCall.__table__
_LOG = ToolCallLog.__table__
#: Compare and set; the columns it sets are the parameters named after them (status, ended).
_SET_STATUS = update(_TOOLCALL).where(
    _TOOLCALL.c.id == bindparam("toolcall_id"), _TOOLCALL.c.status == bindparam("current")
)
#: Executed with one parameter set per row (a cached statement; a multi-VALUES one is compiled anew
#: on every call).
_ADD_LOG = insert(_LOG)
_COUNTS = StatusCount.__table__
_ADD_COUNTS = insert(_COUNTS)
#: ``advance_many``'s compare and set: those of the ids still in the status read.
_SET_STATUSES = (
    update(_TOOLCALL)
    .where(_TOOLCALL.c.id.in_(bindparam("ids", expanding=True)), _TOOLCALL.c.status == bindparam("current"))
    .returning(_TOOLCALL.c.id)
)


class Attempt(Protocol):
    """A ToolCall as ``advance`` needs it: a ``ToolCall``, or the columns a caller read of one."""

    id: int
    status: str


def advance(db: Session | Connection, toolcall: Attempt, *steps: tuple[Status | str, str]) -> str:
    """Move ``toolcall`` through ``steps`` -- (status, details) pairs, in order -- as one change
    (not committed); returns the new status.

    Each step must be allowed after the one before it, an error state ends the attempt at once
    (``finished-err`` with the same details follows it), and each step is logged. Raises
    ``IllegalTransition`` (nothing changed) or ``ConcurrentTransition`` (another process moved the
    ToolCall first; nothing changed). A ``ToolCall`` of ``db``'s session is kept up to date; a
    caller that read only columns (a result fetch, on a Core connection) keeps its own."""
    current = toolcall.status
    path = _path(current, steps)
    tracked = isinstance(db, Session) and isinstance(toolcall, ToolCall)
    if tracked:
        # Changes the caller made through the ORM go first, so statements run in the order they were made.
        db.flush()
    try:
        final, ended = _write(db, toolcall.id, current, path)
    except ConcurrentTransition:
        if tracked:
            db.expire(toolcall, ["status", "ended"])  # re-read on next access
        raise
    if tracked:
        # The statements bypassed the ORM, which is now told what they wrote instead of reading it
        # back; the log is read again when next asked for.
        set_committed_value(toolcall, "status", final)
        if ended is not None:
            set_committed_value(toolcall, "ended", ended)
        db.expire(toolcall, ["log"])
    return final


def received(current: str, late: bool, details: str) -> list[tuple[Status, str]]:
    """The first step of a result arriving for an attempt in ``current`` (an API v2 result, an LTI
    score): none when the attempt finished ok already (a late result changes no state); its details
    end in "(late)" for a late result, "(again)" for a failed attempt's result fetched again."""
    if current == Status.FINISHED_OK:
        return []
    again = current == Status.FINISHED_ERR and not late
    return [(Status.RESULT_TK_RECEIVED, details + (" (late)" if late else " (again)" if again else ""))]


def _path(current: str, steps: Sequence[tuple[Status | str, str]]) -> list[tuple[Status, str]]:
    """The steps, each checked against the one before, with ``finished-err`` after an error state."""
    path: list[tuple[Status, str]] = []
    for new, details in steps:
        check(path[-1][0] if path else current, new)
        path.append((Status(new), details))
        if path[-1][0] in FAILING:
            path.append((Status.FINISHED_ERR, details))
    return path


def _write(
    db: Session | Connection, toolcall_id: int, current: str, path: list[tuple[Status, str]]
) -> tuple[str, datetime | None]:
    """The compare-and-set UPDATE and the log rows of a checked path."""
    if not path:
        return current, None
    final = str(path[-1][0])
    now = utcnow()
    values: dict = {"toolcall_id": toolcall_id, "current": current, "status": final}
    if any(status in ENDING for status, _ in path):
        values["ended"] = now
    if db.execute(_SET_STATUS, values).rowcount != 1:
        raise ConcurrentTransition(
            f"toolcall {toolcall_id} is no longer in {current}; another process moved it"
        )
    # All the rows in one call, in order (ids ascend with it, and the log is read by id).
    db.execute(
        _ADD_LOG,
        [
            {"toolcall_id": toolcall_id, "timestamp": now, "status": str(status), "details": details}
            for status, details in path
        ],
    )
    _count(db, current, final, 1)
    for status, details in path:
        log.info("toolcall %s: %s -> %s (%s)", toolcall_id, current, status, details)
        current = status
    return final, values.get("ended")


def _count(db: Session | Connection, left: str, taken: str, n: int) -> None:
    """``n`` ToolCalls moved from ``left`` to ``taken``: the counts' rows."""
    if left != taken and n:
        db.execute(_ADD_COUNTS, [{"status": left, "delta": -n}, {"status": taken, "delta": n}])


def advance_many(
    db: Session | Connection, ids: Iterable[int], current: Status | str, *steps: tuple[Status | str, str]
) -> list[int]:
    """Move the ToolCalls ``ids``, all read in status ``current``, through ``steps`` as one change
    each (not committed); returns the ids moved.

    The same as ``advance`` for each, in two statements and a log insert whatever their number:
    the steps are checked against the table once (``IllegalTransition``, nothing changed); a
    ToolCall that another process moved meanwhile is left as it is and not returned (no
    ``ConcurrentTransition``); each one moved gets a log row per step."""
    ids = list(ids)
    path = _path(str(current), steps)
    if not ids or not path:
        return []
    if isinstance(db, Session):
        db.flush()
    final = str(path[-1][0])
    now = utcnow()
    values: dict = {"ids": ids, "current": str(current), "status": final}
    if any(status in ENDING for status, _ in path):
        values["ended"] = now
    moved = sorted(db.scalars(_SET_STATUSES, values).all())
    if not moved:
        return []
    db.execute(
        _ADD_LOG,
        [
            {"toolcall_id": toolcall_id, "timestamp": now, "status": str(status), "details": details}
            for toolcall_id in moved
            for status, details in path
        ],
    )
    _count(db, str(current), final, len(moved))
    log.info("%d toolcalls: %s -> %s (%s)", len(moved), current, final, path[-1][1])
    return moved


# ---- counts by status -------------------------------------------------------------------------------

_COUNTED = select(_COUNTS.c.status, func.sum(_COUNTS.c.delta)).group_by(_COUNTS.c.status)


def counts(db: Session | Connection) -> dict[str, int]:
    """The ToolCalls in each status (statuses with none left out): one small read, as exact as
    the last committed change."""
    return {status: int(n) for status, n in db.execute(_COUNTED) if n}


def compact_counts(db: Connection) -> int:
    """Sum the counts' rows into one per status (not committed); returns the rows there were.

    Rows added meanwhile by other transactions are neither seen nor removed: they stay for the next
    time. Readers see the old rows or the new ones, never both (one transaction)."""
    rows = db.execute(delete(_COUNTS).returning(_COUNTS.c.status, _COUNTS.c.delta)).all()
    totals: dict[str, int] = {}
    for status, delta in rows:
        totals[status] = totals.get(status, 0) + delta
    kept = [{"status": status, "delta": n} for status, n in sorted(totals.items()) if n]
    if kept:
        db.execute(_ADD_COUNTS, kept)
    return len(rows)
