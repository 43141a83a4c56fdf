"""What the tool workers record for operators: tool starts and failed calls (docs/events.md).

Both are rare, so each is written to Redis as it happens; a successful call writes nothing, because
its round trip is measured against a bare Celery task (bench/eval_vs_celery.py).

    toolbus:tool-starts   hash: field ["<worker>", "<tool>", <child index>] -> tools started there
    toolbus:errors        list: the latest failed calls, newest first, at most ERRORS_KEPT (JSON)

A worker child's index is the pool slot it fills: a child that replaces a recycled or lost one gets
the same index. So the first start counted under a field is the tool's first start in that slot,
and every later one is a restart -- after a crash or a timeout in the same child, or in a fresh
child after recycling (``restart_frequency``) or after the worker itself was restarted.
``python -m worker tools`` forgets the starts of its workers when it starts: restarts count from
there. Workers write here, the portal's ops page (``webapp.toolbus_status``) reads.

Who writes: ``worker.ownership.settle`` notices a start after the request that caused it (the
instance's start count moved) and calls ``tool_started``; a failed call is recorded by Celery's
``task_failure`` signal (in the child; in the worker's main process for a child lost mid-call or a
hard time limit), and a batch's error slots by ``task_success``. A record that cannot be written
(Redis away) is logged and lost; the call is not affected.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import redis
from billiard.process import current_process
from celery import current_task, signals

import celeryconfig
from worker.events import PREFIX

log = logging.getLogger("worker.health")

STARTS_KEY = f"{PREFIX}:tool-starts"
ERRORS_KEY = f"{PREFIX}:errors"
#: Failed calls kept (the oldest are trimmed on every push).
ERRORS_KEPT = 100
#: Seconds a record may take: a worker must not stall on a Redis that is away (the record is lost).
REDIS_TIMEOUT = 2.0
#: A failed call's text and message are cut to these lengths: a page row, not a log.
CALL_CHARS = 300
MESSAGE_CHARS = 1000


@dataclass(frozen=True)
class ToolStarts:
    """How often ``tool`` was started in one child slot of ``worker``."""

    worker: str
    tool: str
    child: int
    starts: int

    @property
    def restarts(self) -> int:
        return max(0, self.starts - 1)


@dataclass(frozen=True)
class CallFailure:
    """One failed eval or do, as the worker saw it."""

    at: float  # Unix time
    worker: str
    tool: str
    task: str  # toolbus.eval, toolbus.do, toolbus.eval_many
    call: str
    error: str  # the exception's class, e.g. ToolCrashed
    message: str


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def failure(at: float, worker: str, tool: str, task: str, call: str, error: str, message: str) -> CallFailure:
    """A failed call, its call text and message cut to a page row's length."""
    return CallFailure(at, worker, tool, task, _cut(call, CALL_CHARS), error, _cut(message, MESSAGE_CHARS))


def redis_client(url: str | None = None) -> redis.Redis:
    """A client of the Redis of events (REDIS_URL) that gives up quickly."""
    return redis.Redis.from_url(
        url or os.environ.get("REDIS_URL") or celeryconfig.DEFAULT_REDIS_URL,
        socket_connect_timeout=REDIS_TIMEOUT,
        socket_timeout=REDIS_TIMEOUT,
    )


class Records:
    """The records in one Redis."""

    def __init__(self, client: redis.Redis):
        self.redis = client

    # ---- the workers -------------------------------------------------------------------------------

    def tool_started(self, worker: str, tool: str, child: int, count: int = 1) -> None:
        self.redis.hincrby(STARTS_KEY, json.dumps([worker, tool, child]), count)

    def calls_failed(self, failures: list[CallFailure]) -> None:
        if not failures:
            return
        pipe = self.redis.pipeline(transaction=False)
        pipe.lpush(ERRORS_KEY, *(json.dumps(asdict(f)) for f in failures))
        pipe.ltrim(ERRORS_KEY, 0, ERRORS_KEPT - 1)
        pipe.execute()

    def forget_starts(self, workers: Iterable[str]) -> None:
        """Drop the start counts of ``workers`` (a launcher starting them afresh)."""
        workers = set(workers)
        stale = [field for field, _ in self._starts() if json.loads(field)[0] in workers]
        if stale:
            self.redis.hdel(STARTS_KEY, *stale)

    # ---- the ops page ------------------------------------------------------------------------------

    def tool_starts(self) -> list[ToolStarts]:
        found = []
        for field, count in self._starts():
            worker, tool, child = json.loads(field)
            found.append(ToolStarts(worker, tool, int(child), int(count)))
        return sorted(found, key=lambda s: (s.worker, s.tool, s.child))

    def failures(self, limit: int = ERRORS_KEPT) -> list[CallFailure]:
        """The latest failed calls, newest first (an entry that is not one is skipped)."""
        found = []
        for raw in self.redis.lrange(ERRORS_KEY, 0, limit - 1):
            try:
                found.append(CallFailure(**json.loads(raw)))
            except (ValueError, TypeError):
                continue
        return found

    def _starts(self) -> list[tuple[str, bytes]]:
        return [(field.decode(), count) for field, count in self.redis.hscan_iter(STARTS_KEY)]


# ---- recording, in the worker processes ---------------------------------------------------------------

_records: tuple[int, Records] | None = None  # (pid, records) of this process: a fork makes its own


def _write(write) -> None:
    global _records
    if _records is None or _records[0] != os.getpid():
        _records = (os.getpid(), Records(redis_client()))
    try:
        write(_records[1])
    except Exception as e:
        log.warning("could not record for the ops page: %s", e)


def worker_name() -> str:
    """The Celery node name of the worker running the current task (e.g. toolbus-shared-localhost@box)."""
    hostname = getattr(current_task.request, "hostname", None) if current_task else None
    return hostname or f"{socket.gethostname()}:{os.getpid()}"


def child_index() -> int:
    """This worker child's pool slot (0 outside a prefork pool)."""
    return getattr(current_process(), "index", None) or 0


def tool_started(tool: str, count: int = 1) -> None:
    """``count`` starts of ``tool`` in this worker child (called from within a task)."""
    _write(lambda records: records.tool_started(worker_name(), tool, child_index(), count))


def _tool_and_calls(args, kwargs) -> tuple[str, object]:
    """(tool, call or calls) of a toolbus task's arguments (the Bus sends keywords)."""
    kwargs = kwargs or {}
    args = list(args or ())
    tool = kwargs.get("tool", args[0] if args else "?")
    calls = kwargs.get("calls", kwargs.get("call", args[1] if len(args) > 1 else ""))
    return str(tool), calls


@signals.task_failure.connect
def _on_task_failure(sender=None, exception=None, args=None, kwargs=None, **_):
    name = getattr(sender, "name", None) or ""
    if not name.startswith("toolbus.") or exception is None:
        return
    tool, calls = _tool_and_calls(args, kwargs)
    call = ", ".join(map(str, calls)) if isinstance(calls, list) else str(calls)
    entry = failure(time.time(), worker_name(), tool, name, call, type(exception).__name__, str(exception))
    _write(lambda records: records.calls_failed([entry]))


@signals.task_success.connect
def _on_task_success(sender=None, result=None, **_):
    """A batch returns failed calls as error slots instead of raising. Every task passes here; all but
    a batch with an error slot return at once, without I/O."""
    if getattr(sender, "name", None) != "toolbus.eval_many" or not isinstance(result, list):
        return
    if not any("error" in slot for slot in result):
        return
    tool, calls = _tool_and_calls(sender.request.args, sender.request.kwargs)
    worker, now = worker_name(), time.time()
    entries = [
        failure(
            now, worker, tool, sender.name, str(call), str(slot["error"]), " ".join(map(str, slot["args"]))
        )
        for call, slot in zip(calls, result)
        if "error" in slot
    ]
    _write(lambda records: records.calls_failed(entries))
