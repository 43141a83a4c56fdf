"""The ToolBus as the ops page shows it: the declared tools, the Celery workers online, and what the
workers recorded (their state, tool starts, failed calls; ``worker.records``).

Each worker writes its state -- Celery's stats and the queues it consumes, what
``inspect().stats()`` and ``active_queues()`` would answer -- to Redis every
``TOOLCALL_WORKER_STATE_SECS`` (``worker.health``), so a view reads Redis and asks no worker: a
Celery broadcast waits its whole timeout on every view, since nobody knows how many workers there
are. A worker whose state is older than ``STALE_AFTER`` intervals is listed as not heard from (it
stopped without saying so, or it is stuck). A Redis that is away fails quickly: the page says so.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis
from kombu.utils.url import maybe_sanitize_url

from toolbus.descriptors import ToolDescriptor, load_tools
from toolbus.errors import DescriptorError
from worker.records import CallFailure, Records, ToolStarts, WorkerState

#: Failed calls shown (the workers keep ``records.ERRORS_KEPT``).
FAILURES_SHOWN = 30
#: A worker is online while its state is at most this many writing intervals old.
STALE_AFTER = 3
#: Seconds to wait for Redis: a view must not hang on it.
REDIS_TIMEOUT = 2.0

_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()


def records_redis(url: str) -> redis.Redis:
    """A client of the records' Redis at ``url``, kept for the process (its connections are pooled:
    a new connection costs more than the reads) and quick to give up."""
    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            client = _clients[url] = redis.Redis.from_url(
                url, socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT
            )
        return client


@dataclass
class ToolRow:
    """One tool of tools.toml, with the workers online that serve its queue."""

    name: str
    queue: str
    host_group: str
    internal: bool
    tool_name: str
    restart_frequency: int
    functions: list[str]  # eval and do signatures
    events: list[str]
    workers: list[str] = field(default_factory=list)
    starts: int = 0
    restarts: int = 0


@dataclass
class WorkerRow:
    """One Celery worker that answered."""

    name: str
    queues: list[str]
    tools: list[str]
    pool: str
    concurrency: int | None
    max_tasks_per_child: int | None
    processes: list[int]
    pid: int | None
    uptime: int | None
    calls: int  # tasks received since the worker started (Celery's stats "total")
    calls_by_task: dict[str, int]
    age: float  # seconds since the worker wrote its state
    starts: int = 0
    restarts: int = 0


@dataclass
class ToolBusStatus:
    tools_path: str
    tools: list[ToolRow]
    tools_problem: str | None
    workers: list[WorkerRow]
    workers_problem: str | None  # "No worker has written ...": why none is listed, when none is
    failures: list[CallFailure]
    records_problem: str | None
    silent: list[WorkerRow] = field(default_factory=list)  # not heard from lately
    interval: float = 0.0

    def when(self, at: float) -> datetime:
        return datetime.fromtimestamp(at, UTC)


def _tool_rows(tools: dict[str, ToolDescriptor]) -> list[ToolRow]:
    return [
        ToolRow(
            name=t.name,
            queue=t.queue,
            host_group=t.host_name,
            internal=t.internal,
            tool_name=t.tool_name,
            restart_frequency=t.restart_frequency,
            functions=[s.text for s in t.signatures.all if s.kind != "event"],
            events=[s.text for s in t.signatures.events],
        )
        for t in sorted(tools.values(), key=lambda t: t.name)
    ]


def _worker_rows(states: list[WorkerState], tools: list[ToolRow], now: float) -> list[WorkerRow]:
    tool_of_queue = {t.queue: t.name for t in tools}
    rows = []
    for state in states:
        pool = state.pool or {}
        totals: dict[str, int] = defaultdict(int)
        for task, n in (state.total or {}).items():
            totals[task.partition(":")[0]] += int(n)  # toolbus.eval:calc -> toolbus.eval (Bus.eval's name)
        limit = pool.get("max-tasks-per-child")  # "N/A" when children are never recycled
        rows.append(
            WorkerRow(
                name=state.name,
                queues=list(state.queues),
                tools=[tool_of_queue[q] for q in state.queues if q in tool_of_queue],
                pool=str(pool.get("implementation", "?")).rpartition(":")[0].rpartition(".")[2] or "?",
                concurrency=pool.get("max-concurrency"),
                max_tasks_per_child=limit if isinstance(limit, int) else None,
                processes=list(pool.get("processes") or []),
                pid=state.pid,
                uptime=state.uptime,
                calls=sum(totals.values()),
                calls_by_task=dict(sorted(totals.items())),
                age=max(0.0, now - state.at),
            )
        )
    return rows


def status(redis_url: str, tools_path: str, interval: float, now: float | None = None) -> ToolBusStatus:
    """Everything the ToolBus ops page shows; each part that cannot be had says why instead.
    ``interval`` is how often the workers write their state (``TOOLCALL_WORKER_STATE_SECS``)."""
    now = datetime.now(UTC).timestamp() if now is None else now
    tools_problem = None
    try:
        tools = _tool_rows(load_tools(tools_path, check_classes=False))
    except DescriptorError as e:
        tools, tools_problem = [], str(e)

    records_problem = None
    failures: list[CallFailure] = []
    states: list[WorkerState] = []
    try:
        found = Records(records_redis(redis_url))
        states = found.workers(now)
        starts = found.tool_starts()
        failures = found.failures(FAILURES_SHOWN)
    except redis.RedisError as e:
        starts = []
        records_problem = f"The Redis at {maybe_sanitize_url(redis_url)} could not be read: {e}"
    rows = _worker_rows(states, tools, now)
    workers = [w for w in rows if w.age <= STALE_AFTER * interval]
    silent = [w for w in rows if w.age > STALE_AFTER * interval]
    workers_problem = None
    if records_problem:
        workers_problem = f"No workers can be listed: {records_problem}"
    elif not workers:
        workers_problem = (
            f"No worker has written its state within {STALE_AFTER * interval:g} s: none is running, "
            "or all are stuck."
        )
    _count_starts(starts, rows, tools)
    for t in tools:  # served by the workers online only
        t.workers = [w.name for w in workers if t.queue in w.queues]
    return ToolBusStatus(
        str(tools_path), tools, tools_problem, workers, workers_problem, failures, records_problem,
        silent, interval,
    )  # fmt: skip


def _count_starts(starts: list[ToolStarts], workers: list[WorkerRow], tools: list[ToolRow]) -> None:
    by_worker: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    by_tool: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for s in starts:
        for totals in (by_worker[s.worker], by_tool[s.tool]):
            totals[0] += s.starts
            totals[1] += s.restarts
    for w in workers:
        w.starts, w.restarts = by_worker[w.name]
    for t in tools:
        t.starts, t.restarts = by_tool[t.name]
