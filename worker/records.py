"""What the workers record for operators, and how it is read: tool starts and failed calls, the
state of each worker, and how long result fetches take.

Tool starts and failed calls are rare, so each is written to Redis as it happens; a successful call
writes nothing, because its round trip is measured against a bare Celery task
(bench/eval_vs_celery.py). Each worker writes its state every few seconds, so that the ops page and
the metrics read it instead of asking every worker on every view (a Celery broadcast holds the
asker for a second or more).

    toolbus:tool-starts    hash: field ["<worker>", "<tool>", <child index>] -> tools started there
    toolbus:tool-starts-at hash: the same fields -> Unix time of the latest start counted there
    toolbus:errors         list: the latest failed calls, newest first, at most ERRORS_KEPT (JSON)
    toolbus:failed-calls   hash: tool -> failed calls in all (a counter for the metrics)
    toolbus:workers        hash: worker name -> its state as it last wrote it (JSON, with ``at``)
    toolcall:fetch-seconds hash: "<outcome> <bucket>" -> attempts, "<outcome> sum" -> seconds: a
                           histogram of result-fetch attempts (``FETCH_BUCKETS``)

A worker child's index is the pool slot it fills: a child that replaces a recycled or lost one gets
the same index. So the first start counted under a field is the tool's first start in that slot,
and every later one is a restart -- after a crash or a timeout in the same child, or in a fresh
child after recycling (``restart_frequency``) or after the worker itself was restarted.
``python -m worker tools`` forgets the starts of its workers when it starts: restarts count from
there. A field whose worker has written neither its state nor a start for ``WORKER_FORGOTTEN_SECS``
is dropped whenever starts are written or read: worker names carry their host's name, and without
that every host ever replaced would stay in the hash.

No Celery here: the workers write through ``worker.health`` (Celery's signals) and
``worker.fetch_tasks``, the portal's ops page (``webapp.toolbus_status``) and metrics
(``webapp.metrics``) read through ``Records``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import redis

from worker.events import PREFIX, connect_redis

STARTS_KEY = f"{PREFIX}:tool-starts"
STARTS_AT_KEY = f"{PREFIX}:tool-starts-at"
ERRORS_KEY = f"{PREFIX}:errors"
FAILED_KEY = f"{PREFIX}:failed-calls"
WORKERS_KEY = f"{PREFIX}:workers"
FETCH_SECONDS_KEY = "toolcall:fetch-seconds"
#: Upper bounds (seconds) of the fetch histogram's buckets: a vendor answers within 15 s or not at all.
FETCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0)
#: How often a worker writes its state (``TOOLCALL_WORKER_STATE_SECS``); a reader takes a worker whose
#: state is older than a few of these for gone.
WORKER_STATE_SECS = 10.0
#: A worker's state older than this is dropped when read: the worker is long gone.
WORKER_FORGOTTEN_SECS = 86400
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


@dataclass(frozen=True)
class WorkerState:
    """What a worker last wrote of itself: Celery's own stats (``inspect().stats()``'s answer, in
    part) and the queues it consumes."""

    name: str
    at: float  # Unix time it was written
    pid: int | None
    uptime: int | None
    total: dict[str, int]  # tasks received since it started, by task name
    pool: dict
    queues: list[str]


@dataclass(frozen=True)
class FetchSeconds:
    """The histogram of one outcome's fetch attempts: cumulative counts per upper bound (the last
    is ``inf``), their number and the sum of their seconds."""

    outcome: str
    buckets: list[tuple[float, int]]
    count: int
    sum: float


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

    def tool_started(
        self, worker: str, tool: str, child: int, count: int = 1, at: float | None = None
    ) -> None:
        """``count`` starts of ``tool`` in child slot ``child`` of ``worker``, at Unix time ``at`` (now)."""
        at = time.time() if at is None else at
        field = json.dumps([worker, tool, child])
        pipe = self.redis.pipeline()  # both or neither
        pipe.hincrby(STARTS_KEY, field, count)
        pipe.hset(STARTS_AT_KEY, field, f"{at:.0f}")
        pipe.execute()
        self._forget_old_starts(time.time())  # starts are rare: the hash is kept small as they come

    def calls_failed(self, failures: list[CallFailure]) -> None:
        if not failures:
            return
        pipe = self.redis.pipeline(transaction=False)
        pipe.lpush(ERRORS_KEY, *(json.dumps(asdict(f)) for f in failures))
        pipe.ltrim(ERRORS_KEY, 0, ERRORS_KEPT - 1)
        for f in failures:
            pipe.hincrby(FAILED_KEY, f.tool, 1)
        pipe.execute()

    def worker_seen(self, state: WorkerState) -> None:
        """Write a worker's state (every few seconds while it runs)."""
        self.redis.hset(WORKERS_KEY, state.name, json.dumps(asdict(state), default=str))

    def worker_gone(self, name: str) -> None:
        """A worker stopping: it is no longer online."""
        self.redis.hdel(WORKERS_KEY, name)

    def fetch_attempted(self, outcome: str, seconds: float) -> None:
        """One result-fetch attempt that came to ``outcome`` (stored, failed, retry...) in ``seconds``."""
        bucket = next((f"{b:g}" for b in FETCH_BUCKETS if seconds <= b), "+Inf")
        pipe = self.redis.pipeline(transaction=False)
        pipe.hincrby(FETCH_SECONDS_KEY, f"{outcome} {bucket}", 1)
        pipe.hincrbyfloat(FETCH_SECONDS_KEY, f"{outcome} sum", seconds)
        pipe.execute()

    def forget_starts(self, workers: Iterable[str]) -> None:
        """Drop the start counts of ``workers`` (a launcher starting them afresh)."""
        workers = set(workers)
        stale = [field for field, _ in self._starts() if json.loads(field)[0] in workers]
        if stale:
            self.redis.hdel(STARTS_KEY, *stale)
            self.redis.hdel(STARTS_AT_KEY, *stale)

    # ---- the ops page ------------------------------------------------------------------------------

    def tool_starts(self, now: float | None = None) -> list[ToolStarts]:
        """The start counts (those of workers gone for ``WORKER_FORGOTTEN_SECS`` are dropped)."""
        self._forget_old_starts(time.time() if now is None else now)
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

    def failed_calls(self) -> dict[str, int]:
        """Failed calls in all, by tool."""
        return {tool.decode(): int(n) for tool, n in self.redis.hgetall(FAILED_KEY).items()}

    def workers(self, now: float) -> list[WorkerState]:
        """Every worker's last state, by name; those older than ``WORKER_FORGOTTEN_SECS`` are dropped."""
        found, forgotten = [], []
        for name, raw in self.redis.hscan_iter(WORKERS_KEY):
            try:
                state = WorkerState(**json.loads(raw))
            except (ValueError, TypeError):
                forgotten.append(name)
                continue
            if now - state.at > WORKER_FORGOTTEN_SECS:
                forgotten.append(name)
            else:
                found.append(state)
        if forgotten:
            self.redis.hdel(WORKERS_KEY, *forgotten)
        return sorted(found, key=lambda w: w.name)

    def fetch_seconds(self) -> list[FetchSeconds]:
        """The fetch-attempt histogram of each outcome recorded so far."""
        raw: dict[str, dict[str, float]] = {}
        for field, value in self.redis.hgetall(FETCH_SECONDS_KEY).items():
            outcome, _, bucket = field.decode().rpartition(" ")
            raw.setdefault(outcome, {})[bucket] = float(value)
        found = []
        for outcome, values in sorted(raw.items()):
            running, buckets = 0, []
            for bound in FETCH_BUCKETS:
                running += int(values.get(f"{bound:g}", 0))
                buckets.append((bound, running))
            running += int(values.get("+Inf", 0))
            buckets.append((float("inf"), running))
            found.append(FetchSeconds(outcome, buckets, running, values.get("sum", 0.0)))
        return found

    def _starts(self) -> list[tuple[str, bytes]]:
        return [(field.decode(), count) for field, count in self.redis.hscan_iter(STARTS_KEY)]

    def _forget_old_starts(self, now: float) -> None:
        """Drop the fields whose latest start is older than ``WORKER_FORGOTTEN_SECS`` and whose worker
        has not written its state within that time either. A field without a time (written before
        times were) gets ``now``."""
        last_start = {field.decode(): float(at) for field, at in self.redis.hscan_iter(STARTS_AT_KEY)}
        starts = dict(self._starts())
        seen: dict[str, float] = {}
        for name, raw in self.redis.hscan_iter(WORKERS_KEY):
            try:
                seen[name.decode()] = float(json.loads(raw)["at"])
            except (ValueError, TypeError, KeyError):
                continue
        untimed = [field for field in starts if field not in last_start]
        old = [
            field
            for field in starts
            if field in last_start
            and now - max(last_start[field], seen.get(json.loads(field)[0], 0.0)) > WORKER_FORGOTTEN_SECS
        ]
        orphans = [field for field in last_start if field not in starts]
        if untimed:
            self.redis.hset(STARTS_AT_KEY, mapping={field: f"{now:.0f}" for field in untimed})
        if old:
            self.redis.hdel(STARTS_KEY, *old)
        if old or orphans:
            self.redis.hdel(STARTS_AT_KEY, *old, *orphans)
