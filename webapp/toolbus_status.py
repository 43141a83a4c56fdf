"""The ToolBus as the ops page shows it: the declared tools, the Celery workers online, and what the
workers recorded (tool starts, failed calls; ``worker.records``).

Workers are found through Celery's remote control (``inspect().stats()`` and ``active_queues()``),
answered by each worker's main process even while its children are busy. ``stats`` is broadcast
and waits the whole timeout, since nobody knows how many workers there are; ``active_queues`` then
asks the workers that answered, by name, and returns once all of them have. A broker that is down
fails at once (no connection retries): the page says that no workers answered, and why.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis
from celery import Celery
from kombu.utils.url import maybe_sanitize_url

from toolbus.descriptors import ToolDescriptor, load_tools
from toolbus.errors import DescriptorError
from worker.records import CallFailure, Records, ToolStarts

#: Failed calls shown (the workers keep ``records.ERRORS_KEPT``).
FAILURES_SHOWN = 30


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
    starts: int = 0
    restarts: int = 0


@dataclass
class ToolBusStatus:
    tools_path: str
    tools: list[ToolRow]
    tools_problem: str | None
    workers: list[WorkerRow]
    workers_problem: str | None  # "No workers answered ...": why none is listed, when none is
    failures: list[CallFailure]
    records_problem: str | None

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


def _inspect(app: Celery, timeout: float) -> tuple[dict, dict]:
    """(stats, active queues) by worker name; ({}, {}) when none answers within ``timeout``."""
    options = {"max_retries": 0, "socket_connect_timeout": timeout, "socket_timeout": timeout + 1}
    with app.connection_for_write(connect_timeout=timeout, transport_options=options) as connection:
        stats = app.control.inspect(timeout=timeout, connection=connection).stats() or {}
        if not stats:
            return {}, {}
        named = app.control.inspect(timeout=timeout, connection=connection, destination=sorted(stats))
        return stats, named.active_queues() or {}


def _worker_rows(stats: dict, queues: dict, tools: list[ToolRow]) -> list[WorkerRow]:
    tool_of_queue = {t.queue: t.name for t in tools}
    rows = []
    for name in sorted(stats):
        info = stats[name] or {}
        pool = info.get("pool") or {}
        served = sorted(q.get("name", "?") for q in queues.get(name) or [])
        totals: dict[str, int] = defaultdict(int)
        for task, n in (info.get("total") or {}).items():
            totals[task.partition(":")[0]] += int(n)  # toolbus.eval:calc -> toolbus.eval (Bus.eval's name)
        limit = pool.get("max-tasks-per-child")  # "N/A" when children are never recycled
        rows.append(
            WorkerRow(
                name=name,
                queues=served,
                tools=[tool_of_queue[q] for q in served if q in tool_of_queue],
                pool=str(pool.get("implementation", "?")).rpartition(":")[0].rpartition(".")[2] or "?",
                concurrency=pool.get("max-concurrency"),
                max_tasks_per_child=limit if isinstance(limit, int) else None,
                processes=list(pool.get("processes") or []),
                pid=info.get("pid"),
                uptime=info.get("uptime"),
                calls=sum(totals.values()),
                calls_by_task=dict(sorted(totals.items())),
            )
        )
    return rows


def status(app: Celery, redis_url: str, tools_path: str, timeout: float) -> ToolBusStatus:
    """Everything the ToolBus ops page shows; each part that cannot be had says why instead."""
    tools_problem = None
    try:
        tools = _tool_rows(load_tools(tools_path, check_classes=False))
    except DescriptorError as e:
        tools, tools_problem = [], str(e)

    workers_problem = None
    try:
        stats, queues = _inspect(app, timeout)
    except Exception as e:  # the broker is down or refuses us: no worker can answer
        stats, queues = {}, {}
        broker = maybe_sanitize_url(app.conf.broker_url)
        workers_problem = f"No workers answered: the broker {broker} could not be reached ({e})."
    workers = _worker_rows(stats, queues, tools)
    if not workers and workers_problem is None:
        workers_problem = f"No workers answered within {timeout:g} s: none is running, or all are stuck."

    records_problem = None
    failures: list[CallFailure] = []
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=timeout, socket_timeout=timeout + 1)
    try:
        found = Records(client)
        starts = found.tool_starts()
        failures = found.failures(FAILURES_SHOWN)
    except redis.RedisError as e:
        starts = []
        records_problem = f"The Redis at {maybe_sanitize_url(redis_url)} could not be read: {e}"
    finally:
        client.close()
    _count_starts(starts, workers, tools)
    return ToolBusStatus(
        str(tools_path), tools, tools_problem, workers, workers_problem, failures, records_problem
    )


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
        t.workers = [w.name for w in workers if t.queue in w.queues]
