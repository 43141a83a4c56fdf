"""Result data from a vendor (docs/api.md §4): which ToolCall it is for, and whether it is valid.

Two steps, because they fail differently:

1. **Attribution** -- the body is a JSON object of at most 1 MiB (UTF-8, nested no deeper than
   Python's recursion limit lets ``json`` read) whose ``data.system`` verifies and names a ToolCall
   whose tool belongs to the calling client. A body that cannot be attributed fails the owed fetch
   (there is no ToolCall to blame).
2. **Validation** -- ``token`` is the result token, ``persnr`` the ToolCall's user's, ``exam`` the
   tool's slug (or ``<slug>:...``), ``passed`` a boolean, ``score`` an integer >= 0 or absent/null.
   Every extracted field must also fit its column (length, no NUL character), so that a valid
   result can always be stored. An attributed but invalid body moves that ToolCall to
   ``result-received-err``.

Both read only the few columns they need, with Core statements: loading ORM objects was a large
part of the worker's CPU per fetch (docs/portal-performance.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from webapp.models import Exam, ToolCall, ToolCallResult, User
from webapp.signing import verify_system

MAX_BODY = 1024 * 1024


class Unattributable(ValueError):
    """The body names no ToolCall of this client."""


class InvalidResult(ValueError):
    """The body is for a ToolCall, but is not a valid result."""


@dataclass(frozen=True)
class ResultFields:
    persnr: str
    participant_id: str
    exam: str
    exam_type: str
    passed: bool
    score: int | None
    timestamp: datetime | None


class ClientLike(Protocol):
    """What attribution needs of a client: a ``Client``, or what a result fetch read of one."""

    id: int
    name: str


def identify(body: bytes, secret_key: str, fallbacks: list[str]) -> tuple[int, dict]:
    """The id of the ToolCall a body names, and the parsed body: the checks of attribution that
    need no database; raises Unattributable saying why."""
    if len(body) > MAX_BODY:
        raise Unattributable(f"the body is larger than {MAX_BODY} bytes")
    # UTF-8 first, then JSON: json.loads would also take bytes in UTF-16 or UTF-32, and such a body
    # could then not be stored verbatim as text -- the fetch would crash after attributing it.
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Unattributable(f"the body is not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        document = json.loads(text)
    except RecursionError:
        # Nested deeper than Python's recursion limit (a few hundred KiB of "[" will do): no result
        # is, and the same body would fail the same way on every retry.
        raise Unattributable("the body is JSON nested too deeply to be read") from None
    except ValueError as e:
        raise Unattributable(f"the body is not JSON ({e})") from None
    if not isinstance(document, dict) or not isinstance(document.get("data"), dict):
        raise Unattributable("the body is not a JSON object with a data object")
    system = document["data"].get("system")
    if system is None:
        raise Unattributable("data.system is missing")
    toolcall_id = verify_system(system, secret_key, fallbacks)
    if toolcall_id is None:
        raise Unattributable("data.system does not verify: it was not issued by this portal")
    return toolcall_id, document


@dataclass(frozen=True)
class Attributed:
    """The ToolCall a result is for, as ``attribute`` reads it."""

    id: int
    status: str
    slug: str  # its tool's
    persnr: str  # its user's


_TOOLCALL, _TOOL, _USER = ToolCall.__table__, Exam.__table__, User.__table__
#: Built once: building a statement costs more CPU than running it.
_ATTRIBUTION_COLUMNS = (
    select(_TOOLCALL.c.status, _TOOL.c.client_id, _TOOL.c.slug, _USER.c.persnr)
    .select_from(_TOOLCALL.join(_TOOL, _TOOL.c.id == _TOOLCALL.c.tool_id))
    .join(_USER, _USER.c.id == _TOOLCALL.c.user_id)
    .where(_TOOLCALL.c.id == bindparam("toolcall_id"))
)


def attribute(
    db: Session | Connection, client: ClientLike, body: bytes, secret_key: str, fallbacks: list[str]
) -> tuple[Attributed, dict]:
    """The ToolCall a body is for, as attribution and validation need it (read in one query), and
    the parsed body; raises Unattributable saying why."""
    toolcall_id, document = identify(body, secret_key, fallbacks)
    row = db.execute(_ATTRIBUTION_COLUMNS, {"toolcall_id": toolcall_id}).one_or_none()
    _check_owner(toolcall_id, None if row is None else row.client_id, client)
    return Attributed(toolcall_id, row.status, row.slug, row.persnr), document


def _check_owner(toolcall_id: int, owner_id: int | None, client: ClientLike) -> None:
    """Raise Unattributable unless the ToolCall exists (``owner_id``: its tool's client) and is the
    client's."""
    if owner_id is None:
        raise Unattributable(f"data.system names ToolCall {toolcall_id}, which does not exist")
    if owner_id != client.id:
        raise Unattributable(
            f"data.system names ToolCall {toolcall_id}, which is not one of client {client.name}'s"
        )


def validate(document: dict, token: str, *, persnr: str, slug: str) -> ResultFields:
    """The fields of a valid result for a ToolCall whose user's ``persnr`` and tool's ``slug`` are
    given; raises InvalidResult saying what is wrong."""
    data = document["data"]
    problems = []
    if document.get("token") != token:
        problems.append(f"token is {document.get('token')!r}, not the result token {token!r}")
    if data.get("persnr") != persnr:
        problems.append("persnr is not the persnr of the attempt's user")
    exam = data.get("exam")
    if not isinstance(exam, str) or not (exam == slug or exam.startswith(f"{slug}:")):
        problems.append(f"exam is {exam!r}, not {slug!r} or {slug + ':...'!r}")
    passed = data.get("passed")
    if not isinstance(passed, bool):
        problems.append(f"passed is {passed!r}, not true or false")
    score = data.get("score")
    if score is not None and (not isinstance(score, int) or isinstance(score, bool) or score < 0):
        problems.append(f"score is {score!r}, not an integer >= 0")
    participant = data.get("participant_id", data.get("participation_id", ""))
    if not isinstance(participant, (str, int)) or isinstance(participant, bool):
        problems.append(f"participant_id is {participant!r}, not a string or an integer")
    exam_type = data.get("exam_type", data.get("exam_kind", ""))
    if not isinstance(exam_type, str):
        problems.append(f"exam_type is {exam_type!r}, not a string")
    timestamp = None
    if document.get("timestamp") is not None:
        try:
            timestamp = datetime.fromisoformat(document["timestamp"])
            if timestamp.tzinfo is None:
                timestamp = timestamp.replace(tzinfo=UTC)  # no timezone: taken as UTC
            timestamp = timestamp.astimezone(UTC)  # as stored; year 1 at +14:00 does not exist in UTC
        except (TypeError, ValueError, OverflowError):
            problems.append(f"timestamp is {document['timestamp']!r}, not an ISO 8601 date and time")
    if not problems:
        problems += _storable(exam=exam, exam_type=exam_type, participant_id=str(participant), score=score)
    if problems:
        raise InvalidResult("; ".join(problems))
    return ResultFields(data["persnr"], str(participant), exam, exam_type, passed, score, timestamp)


#: The largest score the result table holds (a 32-bit integer column).
MAX_SCORE = 2**31 - 1


def _storable(score: int | None, **texts: str) -> list[str]:
    """Problems that would stop a result with these fields from being stored: texts longer than
    their column or holding NUL characters (PostgreSQL text cannot), a score past the column's
    range. Found here they make the result invalid, with a reason; found by the database they
    would make every attempt of the fetch crash until it gives up."""
    problems = []
    for name, value in texts.items():
        limit = ToolCallResult.__table__.c[name].type.length
        if len(value) > limit:
            problems.append(f"{name} is {len(value)} characters long, more than {limit}")
        if "\x00" in value:
            problems.append(f"{name} contains a NUL character")
    if score is not None and score > MAX_SCORE:
        problems.append(f"score is {score}, more than {MAX_SCORE}")
    return problems
