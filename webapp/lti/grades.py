"""Assignment and Grade Services: line items, scores and results, in the context of one exam.

- **Line items.** Each exam of an LTI tool has its own line item (``default_line_item``: label the
  exam's name unless set, ``scoreMaximum`` 100 unless set, ``resourceLinkId`` the slug); it can be
  changed but not deleted. Tools may add more in their contexts.
- **Scores.** ``publish`` checks a score (AGS 2.0's fields), keeps every accepted one verbatim and
  moves the user's result by compare and set: a score whose ``timestamp`` is not later than the
  result's changes nothing (``StaleScore``, 409), also when two arrive at once.
- **Finishing the attempt.** A ``FullyGraded`` score on the exam's own line item is the attempt's
  result: the user's latest launched attempt moves ``result-tk-received → result-received-ok →
  result-saved → finished-ok`` through ``webapp.lifecycle`` in the same transaction, and the score
  is stored verbatim as its result. Late results follow the vendor API's rules
  (``webapp.fetches.is_late``): a score for an attempt that was superseded or timed out is stored
  late and finishes it; one for a finished attempt is stored late and changes nothing.
- **Results.** The latest score per user: ``resultScore``/``resultMaximum`` are the score's
  ``scoreGiven``/``scoreMaximum`` as given.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from urllib.parse import quote

from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from webapp import lifecycle
from webapp.fetches import is_late
from webapp.lifecycle import Status
from webapp.lti.access import ServiceError
from webapp.lti.models import LineItem, LtiRegistration, Result, Score
from webapp.lti.vocabulary import ACTIVITY_PROGRESS, GRADING_PROGRESS
from webapp.models import Exam, ToolCall, ToolCallLog, ToolCallResult, User

DEFAULT_SCORE_MAXIMUM = 100.0
#: LTI knows no pass mark: a result counts as passed from this share of the maximum on.
PASS_SHARE = 0.5
#: The largest score or maximum accepted.
MAX_NUMBER = 1e9
#: A score or line item body larger than this is refused.
MAX_BODY = 64 * 1024
#: Tries of a score whose attempt another process moved meanwhile (the sweep): decided again.
TRIES = 3


# ---- URLs ---------------------------------------------------------------------------------------------


def context_url(issuer: str, exam: Exam) -> str:
    return f"{issuer}/lti/1.3/contexts/{quote(exam.slug, safe='')}"


def line_items_url(issuer: str, exam: Exam) -> str:
    return context_url(issuer, exam) + "/lineitems"


def line_item_url(issuer: str, item: LineItem) -> str:
    return f"{line_items_url(issuer, item.exam)}/{item.id}"


# ---- line items ---------------------------------------------------------------------------------------


def default_line_item(session: Session, exam: Exam) -> LineItem:
    """The exam's own line item; when it has none yet, one is made and committed at once (call it
    before changing anything else in the session: a concurrent maker's row wins, and this one's
    transaction is rolled back)."""
    item = session.scalar(select(LineItem).where(LineItem.default_for == exam.id))
    if item is not None:
        return item
    session.add(_new_default(exam))
    try:
        session.commit()
    except IntegrityError:  # another request made it first
        session.rollback()
    return session.scalar(select(LineItem).where(LineItem.default_for == exam.id))


def _new_default(exam: Exam) -> LineItem:
    return LineItem(
        exam=exam, default_for=exam.id, score_maximum=DEFAULT_SCORE_MAXIMUM, resource_link_id=exam.slug
    )


def set_default(
    session: Session, exam: Exam, score_maximum: float | None = None, label: str | None = None
) -> LineItem:
    """Change the exam's own line item, made when it has none (flushed, not committed: for the
    CLI and the ops pages, which save the exam in the same transaction)."""
    session.flush()
    item = session.scalar(select(LineItem).where(LineItem.default_for == exam.id))
    if item is None:
        item = _new_default(exam)
        session.add(item)
    if score_maximum is not None:
        item.score_maximum = float(score_maximum)
    if label is not None:
        item.label = label or None
    item.resource_link_id = exam.slug
    session.flush()
    return item


def line_item_json(issuer: str, item: LineItem) -> dict:
    found = {
        "id": line_item_url(issuer, item),
        "label": item.label or item.exam.name,
        "scoreMaximum": item.score_maximum,
    }
    for key, value in (
        ("resourceLinkId", item.exam.slug if item.default_for else item.resource_link_id),
        ("resourceId", item.resource_id),
        ("tag", item.tag),
        ("startDateTime", item.start_date_time),
        ("endDateTime", item.end_date_time),
    ):
        if value:
            found[key] = value
    return found


def line_items(session: Session, exam: Exam, filters: Mapping[str, str]) -> list[LineItem]:
    """The line items of the exam's context (its own first), filtered as AGS's query parameters say."""
    default_line_item(session, exam)
    query = select(LineItem).where(LineItem.exam_id == exam.id).order_by(LineItem.id)
    if filters.get("resource_link_id") is not None:
        if filters["resource_link_id"] != exam.slug:
            return []
        query = query.where((LineItem.default_for == exam.id) | (LineItem.resource_link_id == exam.slug))
    if filters.get("resource_id") is not None:
        query = query.where(LineItem.resource_id == filters["resource_id"])
    if filters.get("tag") is not None:
        query = query.where(LineItem.tag == filters["tag"])
    return list(session.scalars(query))


def find_line_item(session: Session, exam: Exam, item_id: str) -> LineItem:
    """Line item ``item_id`` of the exam's context; ServiceError 404 when there is none."""
    item = None
    if item_id.isascii() and item_id.isdigit() and len(item_id) < 18:
        item = session.scalar(
            select(LineItem).where(LineItem.id == int(item_id), LineItem.exam_id == exam.id)
        )
    if item is None:
        raise ServiceError(404, "not_found", f"no line item {item_id} in this context")
    return item


def save_line_item(session: Session, exam: Exam, body: bytes, item: LineItem | None = None) -> LineItem:
    """Create a line item from an AGS body, or change ``item`` (flushed)."""
    document = _json_object(body, "line item")
    label = document.get("label")
    if not isinstance(label, str) or not label.strip() or len(label) > 200:
        raise ServiceError(400, "invalid_request", "label must be a non-empty text of at most 200 characters")
    maximum = document.get("scoreMaximum")
    if not _number(maximum) or maximum <= 0:
        raise ServiceError(
            400, "invalid_request", f"scoreMaximum must be a number greater than 0, at most {MAX_NUMBER:g}"
        )
    fields: dict = {"label": label, "score_maximum": float(maximum)}
    for key, column, limit in (("resourceId", "resource_id", 255), ("tag", "tag", 255)):
        value = document.get(key, "")
        if not isinstance(value, str) or len(value) > limit:
            raise ServiceError(400, "invalid_request", f"{key} must be a text of at most {limit} characters")
        fields[column] = value
    link = document.get("resourceLinkId")
    if link is not None and link != exam.slug:
        raise ServiceError(
            400, "invalid_request", f"resourceLinkId must be this context's resource link, {exam.slug!r}"
        )
    if item is not None and item.default_for and link is None:
        link = exam.slug
    fields["resource_link_id"] = link
    for key, column in (("startDateTime", "start_date_time"), ("endDateTime", "end_date_time")):
        value = document.get(key)
        if value is not None and _moment(value) is None:
            raise ServiceError(
                400, "invalid_request", f"{key} must be an ISO 8601 date and time with its offset"
            )
        fields[column] = value
    if item is None:
        item = LineItem(exam=exam, exam_id=exam.id)
        session.add(item)
    for column, value in fields.items():
        setattr(item, column, value)
    session.flush()
    return item


def delete_line_item(session: Session, item: LineItem) -> None:
    """Remove a line item with its scores and results (not the exam's own one)."""
    if item.default_for:
        raise ServiceError(
            409, "conflict", "the exam's own line item cannot be deleted (it carries its results)"
        )
    session.execute(delete(Result).where(Result.line_item_id == item.id))
    session.execute(delete(Score).where(Score.line_item_id == item.id))
    session.delete(item)
    session.flush()


# ---- scores -------------------------------------------------------------------------------------------


class StaleScore(ServiceError):
    def __init__(self, latest: datetime):
        super().__init__(
            409,
            "conflict",
            f"a score with a timestamp at or after this one's is stored already ({latest.isoformat()}); "
            "nothing was changed",
        )


def publish(
    session: Session, registration: LtiRegistration, item: LineItem, body: bytes
) -> tuple[Score, ToolCall | None]:
    """Accept a score for ``item`` (committed): kept, the result moved, and on the exam's own line
    item a ``FullyGraded`` score finishes the attempt. Raises ServiceError (400, 409)."""
    fields = _score_fields(body)
    user = session.scalar(select(User).where(User.persnr == fields["userId"]))
    if user is None or not _member(session, item.exam, user):
        raise ServiceError(400, "invalid_request", "userId is not the sub of a member of this context")
    for attempt in range(TRIES):
        try:
            found = _publish_once(session, registration, item, user, fields, body)
            session.commit()
            return found
        except lifecycle.ConcurrentTransition:
            session.rollback()
            if attempt == TRIES - 1:
                raise ServiceError(
                    503, "try_again", "the attempt is changing; send the score again"
                ) from None
        except IntegrityError:
            session.rollback()  # the user's first result was written at the same moment: decide again
    raise ServiceError(503, "try_again", "the score could not be recorded; send it again")


def _publish_once(session, registration, item, user, fields, body) -> tuple[Score, ToolCall | None]:
    timestamp = fields["timestamp"]
    toolcall = _launched_attempt(session, item.exam, user) if item.default_for else None
    score = Score(
        line_item_id=item.id, user_id=user.id, toolcall_id=toolcall.id if toolcall else None, timestamp=timestamp,
        score_given=fields.get("scoreGiven"), score_maximum=fields.get("scoreMaximum"),
        activity_progress=fields["activityProgress"], grading_progress=fields["gradingProgress"],
        comment=fields.get("comment") or "", data=body.decode("utf-8"),
    )  # fmt: skip
    session.add(score)
    session.flush()
    moved = session.execute(
        update(Result)
        .where(Result.line_item_id == item.id, Result.user_id == user.id, Result.timestamp < timestamp)
        .values(timestamp=timestamp, score_id=score.id),
        execution_options={"synchronize_session": False},
    ).rowcount
    if moved != 1:
        latest = session.scalar(
            select(Result.timestamp).where(Result.line_item_id == item.id, Result.user_id == user.id)
        )
        if latest is not None:
            session.rollback()
            raise StaleScore(latest)
        session.add(Result(line_item_id=item.id, user_id=user.id, timestamp=timestamp, score_id=score.id))
        session.flush()  # IntegrityError when another first score came at once: decided again
    if toolcall is not None and fields["gradingProgress"] == "FullyGraded":
        _finish(session, registration, item, toolcall, user, score, fields)
    return score, toolcall


def _finish(session, registration, item, toolcall: ToolCall, user: User, score: Score, fields: dict) -> None:
    late = is_late(session, toolcall)
    given, maximum = fields.get("scoreGiven"), fields.get("scoreMaximum")
    shown = f"{given:g}/{maximum:g}" if given is not None else "no score"
    steps = lifecycle.received(
        toolcall.status,
        late,
        f"AGS score {score.id} from {registration.client.name}: {shown}, FullyGraded, timestamp "
        f"{fields['timestampText']}",
    )
    if steps:
        steps += [
            (Status.RESULT_RECEIVED_OK, "score valid"),
            (Status.RESULT_SAVED, "score stored as the result" + (" (late)" if late else "")),
            (Status.FINISHED_OK, "done"),
        ]
    session.add(
        ToolCallResult(
            toolcall_id=toolcall.id, data=score.data, token=f"lti-score-{score.id}", persnr=user.persnr,
            participant_id="", exam=item.exam.slug, exam_type="lti",
            passed=given is not None and given >= maximum * PASS_SHARE,
            score=round(given) if given is not None else None, timestamp=score.timestamp, late=late,
        )
    )  # fmt: skip
    if steps:
        lifecycle.advance(session, toolcall, *steps)


def _launched_attempt(session: Session, exam: Exam, user: User) -> ToolCall | None:
    """The user's latest attempt of the exam that reached the tool (a launch sent its id_token)."""
    launched = exists().where(
        ToolCallLog.toolcall_id == ToolCall.id, ToolCallLog.status == Status.START_DATA_SENT
    )
    return session.scalar(
        select(ToolCall)
        .where(ToolCall.tool_id == exam.id, ToolCall.user_id == user.id, launched)
        .order_by(ToolCall.id.desc())
        .limit(1)
    )


def _member(session: Session, exam: Exam, user: User) -> bool:
    if user.is_admin:
        return True
    return (
        session.scalar(
            select(func.count())
            .select_from(ToolCall)
            .where(ToolCall.tool_id == exam.id, ToolCall.user_id == user.id)
        )
        > 0
    )


def _score_fields(body: bytes) -> dict:
    document = _json_object(body, "score")
    fields = dict(document)
    if not isinstance(document.get("userId"), str) or not document["userId"]:
        raise ServiceError(400, "invalid_request", "userId must be the sub of a launch")
    moment = _moment(document.get("timestamp"))
    if moment is None:
        raise ServiceError(
            400, "invalid_request", "timestamp must be an ISO 8601 date and time with its offset"
        )
    fields["timestamp"], fields["timestampText"] = moment, document["timestamp"]
    for key, allowed in (("activityProgress", ACTIVITY_PROGRESS), ("gradingProgress", GRADING_PROGRESS)):
        if document.get(key) not in allowed:
            raise ServiceError(400, "invalid_request", f"{key} must be one of {', '.join(sorted(allowed))}")
    given, maximum = document.get("scoreGiven"), document.get("scoreMaximum")
    if given is not None and (not _number(given) or given < 0):
        raise ServiceError(400, "invalid_request", f"scoreGiven must be a number from 0 to {MAX_NUMBER:g}")
    if maximum is not None and (not _number(maximum) or maximum <= 0):
        raise ServiceError(
            400, "invalid_request", f"scoreMaximum must be a number greater than 0, at most {MAX_NUMBER:g}"
        )
    if given is not None and maximum is None:
        raise ServiceError(400, "invalid_request", "a score with scoreGiven needs its scoreMaximum")
    comment = document.get("comment")
    if comment is not None and not isinstance(comment, str):
        raise ServiceError(400, "invalid_request", "comment must be a text")
    return fields


# ---- results ------------------------------------------------------------------------------------------


def results(session: Session, item: LineItem, user_id: str | None = None) -> Sequence[Result]:
    """The latest score of each user for ``item`` (of one user, by ``sub``), by user."""
    query = select(Result).join(Result.user).where(Result.line_item_id == item.id).order_by(Result.user_id)
    if user_id is not None:
        query = query.where(User.persnr == user_id)
    return session.scalars(query).all()


def result_json(issuer: str, item: LineItem, result: Result) -> dict:
    url = line_item_url(issuer, item)
    score = result.score
    found = {
        "id": f"{url}/results?user_id={quote(result.user.persnr)}",
        "scoreOf": url,
        "userId": result.user.persnr,
        "timestamp": score.timestamp.isoformat(),
    }
    if score.score_given is not None:
        found["resultScore"] = score.score_given
        found["resultMaximum"] = score.score_maximum
    if score.comment:
        found["comment"] = score.comment
    return found


# ---- reading bodies -------------------------------------------------------------------------------------


def _json_object(body: bytes, what: str) -> dict:
    if len(body) > MAX_BODY:
        raise ServiceError(413, "too_large", f"a {what} is at most {MAX_BODY // 1024} KiB")
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ServiceError(400, "invalid_request", f"the {what} is not JSON in UTF-8: {e}") from None
    if not isinstance(document, dict):
        raise ServiceError(400, "invalid_request", f"the {what} must be a JSON object")
    if has_nul(document):
        raise ServiceError(
            400, "invalid_request", f"the {what} holds a NUL character (\\u0000), which no text may"
        )
    return document


def has_nul(value: object) -> bool:
    """Whether a JSON value holds a NUL character anywhere (PostgreSQL text cannot keep one)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(key) or has_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(has_nul(item) for item in value)
    return False


def _number(value: object) -> bool:
    """A JSON number a score or line item may carry: finite, and at most ``MAX_NUMBER`` (a stored
    result keeps its score as an integer column)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and abs(value) <= MAX_NUMBER
    )


def _moment(value: object) -> datetime | None:
    """An ISO 8601 date and time with its offset, as UTC; None for anything else."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        moment = datetime.fromisoformat(value)
        return moment.astimezone(UTC) if moment.tzinfo is not None else None
    except (ValueError, OverflowError):  # OverflowError: a moment that is not one in UTC (year 10000)
        return None
