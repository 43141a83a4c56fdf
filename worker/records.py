"""What the tool workers record for operators, and how it is read: tool starts and failed calls.

Both are rare, so each is written to Redis as it happens; a successful call writes nothing, because
its round trip is measured against a bare Celery task (bench/eval_vs_celery.py).

    toolbus:tool-starts   hash: field ["<worker>", "<tool>", <child index>] -> tools started there
    toolbus:errors        list: the latest failed calls, newest first, at most ERRORS_KEPT (JSON)

A worker child's index is the pool slot it fills: a child that replaces a recycled or lost one gets
the same index. So the first start counted under a field is the tool's first start in that slot,
and every later one is a restart -- after a crash or a timeout in the same child, or in a fresh
child after recycling (``restart_frequency``) or after the worker itself was restarted.
``python -m worker tools`` forgets the starts of its workers when it starts: restarts count from
there.

No Celery here: the workers write through ``worker.health`` (Celery's signals), the portal's ops
page (``webapp.toolbus_status``) reads through ``Records``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import redis

from worker.events import PREFIX, connect_redis

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


def connect(url: str | None = None) -> redis.Redis:
    """A connection to the Redis of the records (REDIS_URL) that gives up quickly."""
    return connect_redis(url, socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT)


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
