"""The ToolCall lifecycle: one transition table, checked on every change.

Rules (spec §6):

- A ToolCall is created in ``initial``; every later status change goes through ``advance``.
- ``TRANSITIONS`` below is the whole truth: a change it does not list raises ``IllegalTransition``
  and changes nothing.
- Changes are safe under concurrency: ``advance`` updates the row only where the status is still
  the one it read (compare and set); if another process moved it first, ``ConcurrentTransition``.
- Each change writes exactly one ``toolcall_toolcalllog`` row (status and details), and creating a
  ToolCall writes the ``initial`` row; nothing else goes into that table.
- The three error states move on to ``finished-err`` at once, in the same operation.
"""

from __future__ import annotations

import logging
from enum import StrEnum

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from webapp.models import Tool, ToolCall, ToolCallLog, User, utcnow

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


S = Status

_NAMES = frozenset(status.value for status in Status)

#: from -> the statuses it may move to (and when).
TRANSITIONS: dict[Status, frozenset[Status]] = {
    # token issued | superseded
    S.INITIAL: frozenset({S.START_TK_SENT, S.FINISHED_ERR}),
    # fetched | expired | superseded
    S.START_TK_SENT: frozenset({S.START_DATA_SENT, S.START_TK_ERR, S.FINISHED_ERR}),
    # result | deadline | superseded
    S.START_DATA_SENT: frozenset({S.RESULT_TK_RECEIVED, S.TOOL_TIMEOUT_ERR, S.FINISHED_ERR}),
    # valid | invalid
    S.RESULT_TK_RECEIVED: frozenset({S.RESULT_RECEIVED_OK, S.RESULT_RECEIVED_ERR}),
    S.RESULT_RECEIVED_OK: frozenset({S.RESULT_SAVED}),
    S.RESULT_SAVED: frozenset({S.FINISHED_OK}),
    S.START_TK_ERR: frozenset({S.FINISHED_ERR}),  # at once
    S.TOOL_TIMEOUT_ERR: frozenset({S.FINISHED_ERR}),  # at once
    S.RESULT_RECEIVED_ERR: frozenset({S.FINISHED_ERR}),  # at once
    S.FINISHED_ERR: frozenset({S.RESULT_TK_RECEIVED}),  # a late result, or a failed one fetched again
    S.FINISHED_OK: frozenset(),
}

#: Attempts still under way: a newer attempt of the same user and tool supersedes them.
OPEN = frozenset({S.INITIAL, S.START_TK_SENT, S.START_DATA_SENT})
#: Error states that end the attempt in the same operation.
FAILING = frozenset({S.START_TK_ERR, S.TOOL_TIMEOUT_ERR, S.RESULT_RECEIVED_ERR})
#: Statuses that end an attempt (``ended`` is set).
ENDING = frozenset({S.FINISHED_OK, S.FINISHED_ERR})


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


def create(session: Session, tool: Tool, user: User, details: str = "") -> ToolCall:
    """A new attempt in ``initial``, with its first log row (flushed, not committed)."""
    # The highest number so far, not a count: numbers stay unique even if rows were ever removed.
    previous = session.scalar(
        select(func.max(ToolCall.attempt)).where(ToolCall.tool_id == tool.id, ToolCall.user_id == user.id)
    )
    toolcall = ToolCall(tool=tool, user=user, status=S.INITIAL, attempt=(previous or 0) + 1)
    session.add(toolcall)
    session.flush()
    session.add(ToolCallLog(toolcall_id=toolcall.id, status=S.INITIAL, details=details or "attempt started"))
    session.flush()
    session.expire(toolcall, ["log"])
    log.info("toolcall %s: created (tool %s, user %s)", toolcall.id, tool.slug, user.id)
    return toolcall


def advance(session: Session, toolcall: ToolCall, new: Status | str, details: str) -> None:
    """Move ``toolcall`` to ``new`` (flushed, not committed); an error state ends it at once."""
    current = toolcall.status
    check(current, new)
    new = Status(new)
    values: dict = {"status": str(new)}
    if new in ENDING:
        values["ended"] = utcnow()
    changed = session.execute(
        update(ToolCall).where(ToolCall.id == toolcall.id, ToolCall.status == current).values(**values),
        execution_options={"synchronize_session": False},
    ).rowcount
    if changed != 1:
        session.expire(toolcall, ["status", "ended"])
        raise ConcurrentTransition(
            f"toolcall {toolcall.id} is no longer in {current}; another process moved it"
        )
    session.add(ToolCallLog(toolcall_id=toolcall.id, status=str(new), details=details))
    session.flush()
    # The UPDATE bypassed the identity map: the next read of these comes from the database.
    session.expire(toolcall, ["status", "ended", "log"])
    log.info("toolcall %s: %s -> %s (%s)", toolcall.id, current, new, details)
    if new in FAILING:
        advance(session, toolcall, S.FINISHED_ERR, details)
