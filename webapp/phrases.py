"""What a candidate reads about an attempt: every lifecycle status as a plain phrase, in one place.

The lifecycle's names (``start-data-sent``, ``finished-err``) are for operators; a candidate reads
"in progress — opened in another window" or "passed — score 42". ``describe`` turns a ToolCall (its
status, the status it ended from, and the vendor's stored result) into a ``Phrase``; every status of
``webapp.lifecycle.Status`` has one (tests/test_phrases.py checks it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from webapp.lifecycle import OPEN, Status

#: How a phrase looks: still going, ended well, ended badly, or ended with nothing to hold against anyone.
Tone = Literal["running", "waiting", "passed", "not-passed", "ended"]


@dataclass(frozen=True)
class Phrase:
    """One attempt's state in words: ``text`` to show, ``tone`` to style it, ``running`` while the
    candidate may still be working on it (a new attempt would end it)."""

    text: str
    tone: Tone
    running: bool = False

    def __str__(self) -> str:
        return self.text


#: Statuses whose phrase does not depend on a result or on how the attempt ended.
PHRASES: dict[Status, Phrase] = {
    Status.INITIAL: Phrase("starting", "running", running=True),
    Status.START_TK_SENT: Phrase("starting — opening in another window", "running", running=True),
    Status.START_DATA_SENT: Phrase("in progress — opened in another window", "running", running=True),
    Status.RESULT_TK_RECEIVED: Phrase("waiting for the result", "waiting"),
    Status.RESULT_RECEIVED_OK: Phrase("waiting for the result", "waiting"),
    Status.RESULT_SAVED: Phrase("waiting for the result", "waiting"),
    Status.START_TK_ERR: Phrase("expired: the exam was not opened in time", "ended"),
    Status.TOOL_TIMEOUT_ERR: Phrase("expired: the time for the exam ran out", "ended"),
    Status.RESULT_RECEIVED_ERR: Phrase("ended: the exam provider's result could not be used", "ended"),
}
#: A finished-err attempt, by the status it ended from: an error state says why, an open one was
#: superseded (the only way an open attempt ends without an error state first).
SUPERSEDED = Phrase("ended: you started a new attempt", "ended")
#: finished-ok without a stored result (an operator removed it): the attempt still finished.
FINISHED = Phrase("finished", "passed")


def outcome(passed: bool, score: int | None) -> Phrase:
    """The vendor's verdict: "passed — score 42", "not passed — score 0", or without the score."""
    text = "passed" if passed else "not passed"
    if score is not None:
        text += f" — score {score}"
    return Phrase(text, "passed" if passed else "not-passed")


def describe(
    status: str, ended_from: str | None = None, passed: bool | None = None, score: int | None = None
) -> Phrase:
    """The phrase of an attempt in ``status``; ``ended_from`` is the status before ``finished-err``
    (from the attempt's log), ``passed``/``score`` the stored result's, when there is one."""
    status = Status(status)
    if status == Status.FINISHED_OK:
        return FINISHED if passed is None else outcome(passed, score)
    if status == Status.FINISHED_ERR:
        if ended_from is None or Status(ended_from) in OPEN:
            return SUPERSEDED
        return PHRASES.get(Status(ended_from), SUPERSEDED)
    return PHRASES[status]


def ended_from(statuses: Sequence[str]) -> str | None:
    """The status an attempt's last ``finished-err`` came from, given its log's statuses in order."""
    for before, after in zip(reversed(statuses[:-1]), reversed(statuses), strict=False):
        if after == Status.FINISHED_ERR:
            return before
    return None


def of(toolcall) -> Phrase:
    """The phrase of a ``webapp.models.ToolCall`` (reads its log when it ended in error, its results
    when it finished)."""
    if toolcall.status == Status.FINISHED_ERR:
        return describe(toolcall.status, ended_from([entry.status for entry in toolcall.log]))
    if toolcall.status == Status.FINISHED_OK and toolcall.results:
        result = toolcall.results[-1]
        return describe(toolcall.status, passed=result.passed, score=result.score)
    return describe(toolcall.status)
