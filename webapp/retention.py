"""Retention: what is kept, for how long, and the pruning that applies it
(``flask --app webapp prune --older-than 365d``; the policy in docs/operating.md, "Retention").

Kept for good: users, clients, tools, every ToolCall (its status, start and end) and every stored
result (``toolcall_toolcallresult``, the body verbatim) -- the portal's product.

Pruned, once older than the cutoff:

- **log rows** of ToolCalls that *ended* before the cutoff (``ended`` < cutoff: an attempt a late
  result revived keeps its whole log);
- **finished result fetches** (``done``, ``failed``) reported before the cutoff, with the bodies
  they kept for inspection; owed ones are never touched;
- optionally sooner (``bodies_older_than``), the **kept bodies** of done fetches: the stored result
  already holds that body verbatim.

Safe while the system runs: each batch is one short transaction that deletes only rows nothing
changes any more, each row re-checked as it is deleted (a failed fetch an operator re-opens
meanwhile is left alone), and walks an index in order, so a batch costs the same at the end of a
run as at its start. A run can be stopped at any time and started again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, or_, select, update

from webapp.db import Database
from webapp.models import ResultFetch, ToolCall, ToolCallLog, utcnow

#: Rows a batch takes: a transaction of well under a second.
BATCH = 5000
#: The shortest cutoff the command accepts: fetches retry for a day (TOOLCALL_FETCH_GIVE_UP_SECS).
MINIMUM = timedelta(days=1)

_LOG = ToolCallLog.__table__
_TOOLCALL = ToolCall.__table__
_FETCH = ResultFetch.__table__


@dataclass
class Pruned:
    """What a run pruned (or, in a dry run, would have)."""

    log_rows: int = 0
    fetches: int = 0
    bodies: int = 0
    batches: int = 0


def prune(
    db: Database,
    older_than: timedelta,
    bodies_older_than: timedelta | None = None,
    batch: int = BATCH,
    pause: float = 0.0,
    dry_run: bool = False,
    now: datetime | None = None,
    progress: Callable[[Pruned], None] | None = None,
) -> Pruned:
    """Prune what is older than ``older_than`` (and bodies older than ``bodies_older_than``), in
    batches of ``batch`` rows with ``pause`` seconds between them; ``dry_run`` counts only."""
    if older_than < MINIMUM or (bodies_older_than is not None and bodies_older_than < MINIMUM):
        raise ValueError(f"a cutoff must be at least {MINIMUM.days} day: fetches are retried for that long")
    now = now or utcnow()
    cutoff = now - older_than
    done = Pruned()

    def step() -> None:
        done.batches += 1
        if progress:
            progress(done)
        if pause:
            time.sleep(pause)

    for n in _log_rows(db, cutoff, batch, dry_run):
        done.log_rows += n
        step()
    for state in ("done", "failed"):
        for n in _fetches(db, state, cutoff, batch, dry_run):
            done.fetches += n
            step()
    if bodies_older_than is not None and bodies_older_than < older_than:
        for n in _bodies(db, now - bodies_older_than, batch, dry_run):
            done.bodies += n
            step()
    return done


def _log_rows(db: Database, cutoff: datetime, batch: int, dry_run: bool):
    """Log rows of attempts ended before ``cutoff``, a batch at a time, walking the log by id (the
    order it was written in): the walk stops at the first batch written after the cutoff, and a
    later run starts where the pruned rows were, not at the table's beginning."""
    after = 0
    window = (
        select(_LOG.c.id, _LOG.c.timestamp, _TOOLCALL.c.ended)
        .join_from(_LOG, _TOOLCALL, _TOOLCALL.c.id == _LOG.c.toolcall_id)
        .order_by(_LOG.c.id)
        .limit(batch)
    )
    while True:
        with db.begin() as connection:
            rows = connection.execute(window.where(_LOG.c.id > after)).all()
            if not rows or rows[0].timestamp >= cutoff:
                return
            after = rows[-1].id
            old = [r.id for r in rows if r.timestamp < cutoff and r.ended is not None and r.ended < cutoff]
            if old and not dry_run:
                connection.execute(delete(_LOG).where(_LOG.c.id.in_(old)))
        yield len(old)


def _fetches(db: Database, state: str, cutoff: datetime, batch: int, dry_run: bool):
    """Fetches in ``state`` reported before ``cutoff``, oldest first, along the index of fetches by
    state and report."""
    finished = (_FETCH.c.state == state, _FETCH.c.reported_at < cutoff)
    for ids in _walk(db, finished, batch):
        if not dry_run:
            with db.begin() as connection:
                # Re-checked as deleted: a failed fetch re-opened meanwhile is owed and reported anew.
                connection.execute(delete(_FETCH).where(_FETCH.c.id.in_(ids), *finished))
        yield len(ids)


def _bodies(db: Database, cutoff: datetime, batch: int, dry_run: bool):
    """Empty the kept bodies of done fetches reported before ``cutoff``."""
    done = (_FETCH.c.state == "done", _FETCH.c.reported_at < cutoff)
    for ids in _walk(db, done, batch):
        with db.begin() as connection:
            kept = and_(_FETCH.c.id.in_(ids), _FETCH.c.body != "", *done)
            if dry_run:
                n = len(connection.scalars(select(_FETCH.c.id).where(kept)).all())
            else:
                n = connection.execute(update(_FETCH).where(kept).values(body="")).rowcount
        yield n


def _walk(db: Database, where: tuple, batch: int):
    """The ids of the fetches matching ``where``, a batch at a time, in (reported_at, id) order."""
    at = None
    while True:
        query = select(_FETCH.c.id, _FETCH.c.reported_at).where(*where)
        if at is not None:
            query = query.where(
                _FETCH.c.reported_at >= at[0], or_(_FETCH.c.reported_at > at[0], _FETCH.c.id > at[1])
            )
        with db.begin() as connection:
            rows = connection.execute(query.order_by(_FETCH.c.reported_at, _FETCH.c.id).limit(batch)).all()
        if not rows:
            return
        at = (rows[-1].reported_at, rows[-1].id)
        yield [r.id for r in rows]


def parse_age(text: str) -> timedelta:
    """``365d``, ``12w``, ``36h``, ``90m``: an age; ValueError with what is expected otherwise."""
    units = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes"}
    text = text.strip().lower()
    number, unit = text[:-1], text[-1:]
    if unit not in units or not number.isdigit():
        raise ValueError(f"{text!r} is not an age; write e.g. 365d, 52w or 36h")
    return timedelta(**{units[unit]: int(number)})


def age_words(age: timedelta) -> str:
    """An age in words, in the largest unit that says it exactly: ``14 days``, ``36 hours``."""
    minutes = int(age.total_seconds()) // 60
    size, unit = next(
        (size, unit) for size, unit in ((1440, "day"), (60, "hour"), (1, "minute")) if minutes % size == 0
    )
    count = minutes // size
    return f"{count} {unit}{'' if count == 1 else 's'}"
