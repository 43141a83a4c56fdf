"""Keyset pagination: the lists of the ops pages and the user's attempts, newest first, 50 a page,
at the same cost on the first page and the ten-thousandth.

A page is the next rows after (or before) the last one shown, in the list's order -- a moment and
an id, ``(started, id)`` or ``(reported_at, id)`` -- taken from an index that ends in that order,
so the database walks 51 index entries wherever the page is. ``OFFSET`` pagination had the database
count past every row before the page (a sort on disk for deep pages of a million rows). The place
is an opaque cursor in the URL (``?after=C`` for older rows, ``?before=C`` for newer ones); a link
that is broken or forged is a 400, never a 500.

How many rows match is counted up to ``COUNT_CAP`` (one more than the cap reads at most that many
index entries): beyond it the page says "10,000+", which is all an operator needs to know there.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

PER_PAGE = 50
COUNT_CAP = 10_000


class BadCursor(ValueError):
    """A cursor this module did not make: the link was cut short or edited."""


@dataclass(frozen=True)
class Page:
    """One page of a list: its rows, the cursors of the pages before and after it (None at either
    end), and how many rows match (at most ``COUNT_CAP``; ``capped`` when there are more)."""

    items: list
    newer: str | None
    older: str | None
    count: int
    capped: bool

    @property
    def count_text(self) -> str:
        return f"{self.count:,}+" if self.capped else f"{self.count:,}"


def encode(moment: datetime, row_id: int) -> str:
    """The cursor of a row at ``moment`` with id ``row_id``."""
    text = f"{moment.astimezone(UTC).isoformat()}|{row_id}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode(cursor: str) -> tuple[datetime, int]:
    """(moment, id) of a cursor; ``BadCursor`` for anything ``encode`` did not make."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        moment, _, row_id = text.partition("|")
        found = datetime.fromisoformat(moment), int(row_id)
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise BadCursor("this page's link is broken; start again from the first page") from None
    if found[0].tzinfo is None:
        raise BadCursor("this page's link is broken; start again from the first page")
    return found


def paginate(
    session: Session,
    entity: Any,
    order: tuple[Any, Any],
    filters: Sequence[ColumnElement[bool]],
    args: dict[str, str],
    options: Sequence[Any] = (),
    per_page: int = PER_PAGE,
) -> Page:
    """The page of ``entity`` rows matching ``filters`` that ``args`` (the query string) names:
    newest first by ``order`` (a moment column and the id column), after ``args["after"]`` or
    before ``args["before"]``, or the first page. Raises ``BadCursor``."""
    moment, row_id = order
    key: Callable[[Any], str] = lambda row: encode(getattr(row, moment.key), getattr(row, row_id.key))  # noqa: E731
    base = select(entity).options(*options).where(*filters)
    if args.get("before"):
        at, at_id = decode(args["before"])
        # The rows just newer, walked upwards, then shown newest first.
        newer_side = and_(moment >= at, or_(moment > at, row_id > at_id))
        rows = list(
            session.scalars(
                base.where(newer_side).order_by(moment.asc(), row_id.asc()).limit(per_page + 1)
            ).unique()
        )
        if len(rows) <= per_page:  # less than a page above it: that is the first page
            return paginate(session, entity, order, filters, {}, options, per_page)
        rows = rows[:per_page][::-1]
        newer, older = key(rows[0]), key(rows[-1])
    else:
        query = base.order_by(moment.desc(), row_id.desc()).limit(per_page + 1)
        came_from_newer = bool(args.get("after"))
        if came_from_newer:
            at, at_id = decode(args["after"])
            query = query.where(and_(moment <= at, or_(moment < at, row_id < at_id)))
        rows = list(session.scalars(query).unique())
        more = len(rows) > per_page
        rows = rows[:per_page]
        newer = key(rows[0]) if came_from_newer and rows else None
        older = key(rows[-1]) if more else None
    count = session.scalar(
        select(func.count()).select_from(select(row_id).where(*filters).limit(COUNT_CAP + 1).subquery())
    )
    return Page(rows, newer, older, min(count, COUNT_CAP), count > COUNT_CAP)
