"""The dashboard's chart: attempts (ToolCalls) started per hour or per day, stacked by their status
now, drawn as inline SVG by the template (the portal's Content-Security-Policy allows no outside
scripts or styles, and none are needed).

Counting is one portable query: for each bucket a ``SUM(CASE WHEN started in bucket ...)`` column,
grouped by status, so the database returns one row per status whatever the number of attempts, and
SQLite and PostgreSQL need no date functions of their own. Buckets are whole UTC hours (or days);
the last one is the current, unfinished one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session

from webapp.lifecycle import Status
from webapp.models import ToolCall


@dataclass(frozen=True)
class Span:
    """A choice of the chart: how many buckets of which length."""

    key: str
    title: str
    buckets: int
    step: timedelta
    label_format: str  # of a bucket's start, for the axis and the data table
    axis_title: str
    label_every: int  # an axis label under every n-th bucket


SPANS = {
    "24h": Span("24h", "last 24 hours", 24, timedelta(hours=1), "%H:%M", "hour started (UTC)", 3),
    "14d": Span("14d", "last 14 days", 14, timedelta(days=1), "%m-%d", "day started (UTC)", 2),
}
DEFAULT_SPAN = "24h"

#: One colour per status: blues under way, greens for results, oranges and reds for errors.
COLOURS = {
    Status.INITIAL: "#9e9e9e",
    Status.START_TK_SENT: "#90caf9",
    Status.START_DATA_SENT: "#1e88e5",
    Status.START_TK_ERR: "#ffb74d",
    Status.RESULT_TK_RECEIVED: "#4dd0e1",
    Status.TOOL_TIMEOUT_ERR: "#f57c00",
    Status.RESULT_RECEIVED_OK: "#aed581",
    Status.RESULT_RECEIVED_ERR: "#e57373",
    Status.RESULT_SAVED: "#43a047",
    Status.FINISHED_OK: "#1b5e20",
    Status.FINISHED_ERR: "#c62828",
}

# The drawing, in SVG user units.
WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 44
PLOT_WIDTH, PLOT_HEIGHT = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM


@dataclass(frozen=True)
class Bar:
    """One status's part of one bucket's column."""

    status: str
    count: int
    x: float
    y: float
    width: float
    height: float
    colour: str


@dataclass(frozen=True)
class Bucket:
    start: datetime
    label: str  # e.g. "14:00" or "05-31"
    key: str  # the start as ISO text (minutes), stable for tests and tooltips
    counts: dict[str, int]
    total: int
    bars: list[Bar]
    x: float  # the column's centre
    labelled: bool


@dataclass(frozen=True)
class Tick:
    value: int
    y: float


@dataclass(frozen=True)
class Chart:
    span: Span
    buckets: list[Bucket]
    statuses: list[tuple[str, str]]  # (status, colour) of the statuses drawn, in lifecycle order
    ticks: list[Tick]
    total: int
    start: datetime
    end: datetime
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    top: int = TOP
    plot_width: int = PLOT_WIDTH
    plot_height: int = PLOT_HEIGHT

    @property
    def baseline(self) -> int:
        return TOP + PLOT_HEIGHT


def _floor(moment: datetime, step: timedelta) -> datetime:
    moment = moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0) if step >= timedelta(days=1) else moment


def _scale_top(highest: int) -> tuple[int, int]:
    """(top of the y axis, tick step): a round step (1, 2, 5 x 10^k) giving at most five ticks."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if highest <= step * factor * 5:
                tick = step * factor
                return max(tick, -(-highest // tick) * tick), tick
        step *= 10


def counts_by_bucket(session: Session, edges: list[datetime]) -> dict[str, list[int]]:
    """{status: [attempts started in each bucket]} for the buckets between consecutive ``edges``."""
    columns = [
        func.sum(case((and_(ToolCall.started >= low, ToolCall.started < high), 1), else_=0))
        for low, high in zip(edges, edges[1:])
    ]
    query = (
        select(ToolCall.status, *columns)
        .where(ToolCall.started >= edges[0], ToolCall.started < edges[-1])
        .group_by(ToolCall.status)
    )
    return {status: [int(n or 0) for n in counts] for status, *counts in session.execute(query)}


def build(session: Session, now: datetime, span_key: str = DEFAULT_SPAN) -> Chart:
    """The chart of the ``span_key`` span ending with the bucket holding ``now`` (UTC)."""
    span = SPANS[span_key]
    end = _floor(now, span.step) + span.step
    edges = [end - span.step * (span.buckets - i) for i in range(span.buckets + 1)]
    found = counts_by_bucket(session, edges)
    known = [s.value for s in Status]
    statuses = known + sorted(set(found) - set(known))  # a status from elsewhere is still counted
    drawn = [s for s in statuses if any(found.get(s, ()))]
    totals = [sum(found.get(s, [0] * span.buckets)[i] for s in drawn) for i in range(span.buckets)]
    top, tick = _scale_top(max(totals, default=0))
    slot = PLOT_WIDTH / span.buckets
    gap = min(4.0, slot * 0.2)
    buckets = []
    for i, start in enumerate(edges[:-1]):
        counts = {s: found[s][i] for s in drawn if found[s][i]}
        bars, y = [], float(TOP + PLOT_HEIGHT)
        for status in drawn:
            count = counts.get(status, 0)
            if not count:
                continue
            height = PLOT_HEIGHT * count / top
            y -= height
            colour = COLOURS.get(status, "#6d4c41")
            bars.append(
                Bar(status, count, round(LEFT + i * slot + gap / 2, 2), round(y, 2), round(slot - gap, 2),
                    round(height, 2), colour)
            )  # fmt: skip
        buckets.append(
            Bucket(
                start=start,
                label=start.strftime(span.label_format),
                key=start.strftime("%Y-%m-%dT%H:%M"),
                counts=counts,
                total=sum(counts.values()),
                bars=bars,
                x=round(LEFT + (i + 0.5) * slot, 2),
                labelled=(span.buckets - 1 - i) % span.label_every == 0,
            )
        )
    ticks = [Tick(v, round(TOP + PLOT_HEIGHT - PLOT_HEIGHT * v / top, 2)) for v in range(0, top + 1, tick)]
    return Chart(
        span, buckets, [(s, COLOURS.get(s, "#6d4c41")) for s in drawn], ticks, sum(totals), edges[0], end
    )
