"""The event channel between tool instances (in worker children) and the application (the Bus).

Why this shape:

- **Events go into one Redis stream per tool** (``toolbus:events:<tool>``). A stream keeps arrival
  order and survives the emitting child; any client can read it, whatever the Celery broker is.
- **A caller leases an event** (``SET lease NX PX``) instead of consuming it: ``get_event`` takes the
  earliest event that matches its pattern and is not leased, so events of other shapes stay for
  other callers. A lease that runs out without an ack offers the event again: at least once. The
  event's id (a uuid chosen when it is published) stays the same, so callers can deduplicate.
- **Acks are fenced**: the lease holds the name of the caller that took it, and ``ack`` checks it in
  the same Lua script that queues the ack. A caller whose lease ran out and was taken over by another
  is refused (``TransactionError``); only the caller holding the event can ack it.
- **Acks go to a list per tool instance** (``toolbus:acks:<instance>``), read by a background thread
  of the child that owns the instance, which hands them to the tool.
- **Every worker process that runs calls holds a key with a short expiry**
  (``toolbus:process:<worker>:<pid>``), refreshed every second by the process itself and, for a
  prefork child, by the worker's main process, which a call in the child cannot block (a call that
  holds the GIL silences every thread of its process). A caller waiting for a call that has started
  checks the key of the process running it: a worker killed as a whole (main process and pool
  children at once) leaves nobody to report its calls as lost, and without the key the caller would
  wait until its timeout.
- **Every live instance holds a key** (``toolbus:instance:<instance>``) naming the process key of its
  worker process. The child writes it when the tool starts and deletes it when the tool is recycled,
  restarted or gone; it expires only after ``INSTANCE_KEY_SECS``, so a long call, which keeps the
  child from refreshing it, cannot make it look dead. An instance is **alive** while both keys exist,
  **silent** while its key exists but its process's does not (its events are not offered, acks for it
  are refused), and **gone** once its key is gone: an ack for it is refused with ``TransactionError``
  (the tool that emitted the event is not there to receive it), and its events leave the stream. A
  child killed outright loses its process key within ``INSTANCE_TTL``.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

import redis

import celeryconfig
from toolbus.aterm import ATerm, Environment, parse
from toolbus.errors import TransactionError, brief

PREFIX = "toolbus"
#: Seconds a process key lives without being refreshed (and an instance key written outside a worker
#: process, which has no process key to name).
INSTANCE_TTL = 5
#: Seconds an instance key lives without being refreshed: longer than any call that keeps its child
#: from refreshing it. Whether the instance is alive meanwhile is its process key's to say.
INSTANCE_KEY_SECS = 86400
#: Seconds an acked event's lease stays, so that it is never offered again (and an ack repeated by
#: the same caller is recognised).
ACKED_SECS = 3600
#: Events kept per tool stream at most (the oldest are trimmed).
STREAM_MAXLEN = 100_000
#: Seconds an event id stays known as published, so that publishing it again adds nothing.
PUBLISHED_TTL = 3600

# Publishing is retried until it succeeds (a Redis that is away must not lose an event), and a retry
# may follow an attempt whose reply was lost after Redis had run it: the marker makes the second
# append a no-op, so the stream never holds an event twice.
_PUBLISH = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[6]) then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*',
             'id', ARGV[1], 'instance', ARGV[2], 'term', ARGV[3], 'at', ARGV[4])
  return 1
end
return 0
"""


# The state of an instance from its key and its process's key, in one round trip: 2 alive (or no
# process named: the key alone says it), 1 silent (its process key has expired), 0 gone. (The process
# key is read by the name the instance key holds, not passed in KEYS: one Redis server, not a cluster.)
_INSTANCE_STATE = """
local process = redis.call('GET', KEYS[1])
if not process then return 0 end
if process == '' or redis.call('EXISTS', process) == 1 then return 2 end
return 1
"""
ALIVE, SILENT, GONE = 2, 1, 0

# The fenced ack: only the caller holding the lease -- or anybody once it ran out and nobody took the
# event since -- queues an ack, and only once; a repeat by the caller who acked (a retry after a lost
# reply) adds nothing, and is refused like any ack once the instance is gone.
_ACK = """
local holder = redis.call('GET', KEYS[1])
local again = holder == 'acked:' .. ARGV[1]
if holder and not again then
  if holder == 'acked' or string.sub(holder, 1, 6) == 'acked:' then return 'acked' end
  if holder ~= ARGV[1] then return 'leased' end
end
local process = redis.call('GET', KEYS[2])
if not process then return 'gone' end
if process ~= '' and redis.call('EXISTS', process) == 0 then return 'silent' end
if again then return 'again' end
redis.call('RPUSH', KEYS[3], ARGV[2])
redis.call('EXPIRE', KEYS[3], 3600)
redis.call('SET', KEYS[1], 'acked:' .. ARGV[1], 'EX', ARGV[4])
if ARGV[3] ~= '' then redis.call('XDEL', KEYS[4], ARGV[3]) end
return 'queued'
"""


def connect_redis(url: str | None = None, **options) -> redis.Redis:
    """A connection to the Redis of events, acks and records: ``url``, else REDIS_URL (also when the
    Celery broker is RabbitMQ)."""
    return redis.Redis.from_url(url or celeryconfig.redis_url(), **options)


def stream_key(tool: str) -> str:
    return f"{PREFIX}:events:{tool}"


def published_key(event_id: str) -> str:
    return f"{PREFIX}:published:{event_id}"


def acks_key(instance: str) -> str:
    return f"{PREFIX}:acks:{instance}"


def instance_key(instance: str) -> str:
    return f"{PREFIX}:instance:{instance}"


def process_key(worker: str, pid: int) -> str:
    return f"{PREFIX}:process:{worker}:{pid}"


def lease_key(event_id: str) -> str:
    return f"{PREFIX}:lease:{event_id}"


@dataclass(frozen=True)
class Event:
    """An event offered to the application and leased to this caller."""

    id: str  # unique per emission, stable across redeliveries
    tool: str
    term: ATerm  # exactly as the tool sent it
    env: Environment  # the bindings of the caller's pattern
    instance: str  # the tool instance that emitted it
    entry: str = ""  # its entry in the tool's stream
    holder: str = ""  # the lease's holder: this caller (only it may ack the event)


class EventChannel:
    def __init__(self, client: redis.Redis):
        self.redis = client
        self._publish = client.register_script(_PUBLISH)
        self._instance_state = client.register_script(_INSTANCE_STATE)
        self._ack = client.register_script(_ACK)

    # ---- the owning worker child -------------------------------------------------------------------

    def publish(self, tool: str, instance: str, event: ATerm, event_id: str | None = None) -> str:
        """Offer an event of ``instance``; returns its id. Publishing an id again adds nothing, so a
        publisher may retry until it hears that it succeeded."""
        event_id = event_id or uuid.uuid4().hex
        self._publish(
            keys=[stream_key(tool), published_key(event_id)],
            args=[event_id, instance, str(event), f"{time.time():.3f}", STREAM_MAXLEN, PUBLISHED_TTL],
        )
        return event_id

    def alive(self, instance: str, process: str | None = None) -> None:
        """The instance is alive (refresh its key); ``process`` is the process key of the worker
        process that owns it, which says from then on whether it is alive (see the module's doc)."""
        if process:
            self.redis.set(instance_key(instance), process, ex=INSTANCE_KEY_SECS)
        else:
            self.redis.set(instance_key(instance), "", ex=INSTANCE_TTL)

    def gone(self, instance: str) -> None:
        """The instance is gone: its key and its pending acks go."""
        self.redis.delete(instance_key(instance), acks_key(instance))

    def next_ack(self, instance: str, timeout: float) -> tuple[str, str] | None:
        """The next ack for ``instance`` as (event id, result text), waiting up to ``timeout``."""
        item = self.redis.blpop([acks_key(instance)], timeout=timeout)
        if item is None:
            return None
        data = json.loads(item[1])
        return data["id"], data["result"]

    def process_alive(self, worker: str, pid: int, children: list[int] = ()) -> None:
        """Process ``pid`` of ``worker`` (its Celery node name) is alive and may run calls; so are its
        pool ``children``, whose keys are prolonged (not made: a child makes its own when it starts,
        and deletes it when it ends)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(process_key(worker, pid), "1", ex=INSTANCE_TTL)
        for child in children:
            pipe.set(process_key(worker, child), "1", ex=INSTANCE_TTL, xx=True)
        pipe.execute()

    def process_gone(self, worker: str, pid: int) -> None:
        self.redis.delete(process_key(worker, pid))

    # ---- the application ---------------------------------------------------------------------------

    def is_alive(self, instance: str) -> bool:
        return self.state(instance) == ALIVE

    def state(self, instance: str) -> int:
        """``ALIVE``, ``SILENT`` or ``GONE`` (see the module's doc)."""
        return int(self._instance_state(keys=[instance_key(instance)]))

    def is_process_alive(self, worker: str, pid: int) -> bool:
        return bool(self.redis.exists(process_key(worker, pid)))

    def take(self, tool: str, pattern: ATerm, owner: str, lease: float, timeout: float) -> Event | None:
        """Lease the earliest offered event of ``tool`` matching ``pattern``; None after ``timeout``."""
        key = stream_key(tool)
        deadline = time.monotonic() + timeout
        while True:
            last = b"0-0"
            for entry_id, fields in self.redis.xrange(key):
                last = entry_id
                event = self._offer(tool, entry_id, fields, pattern, owner, lease)
                if event is not None:
                    return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            # Wait for a new event, but not past a second: leases that run out offer events again.
            self.redis.xread({key: last}, count=1, block=max(1, int(min(remaining, 1.0) * 1000)))

    def _offer(self, tool, entry_id, fields, pattern, owner, lease) -> Event | None:
        fields = {k.decode(): v.decode() for k, v in fields.items()}
        state = self.state(fields["instance"])
        if state == GONE:
            # The emitting tool was recycled, crashed or ended: its events leave the offer.
            self.redis.xdel(stream_key(tool), entry_id)
            return None
        if state == SILENT:
            return None  # its worker process is not known to be alive now: not offered, but kept
        term = parse(fields["term"])
        env = Environment()
        if not env.match(pattern, term):
            return None
        if not self.redis.set(lease_key(fields["id"]), owner, nx=True, px=max(1, int(lease * 1000))):
            return None
        entry = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        return Event(fields["id"], tool, term, env, fields["instance"], entry, owner)

    def ack(self, event: Event, result: ATerm) -> None:
        """Queue the ack for the instance that emitted the event; the event leaves the offer.

        Refused (``TransactionError``) when another caller has leased the event since this caller's
        lease ran out, when it has been acked already, and when its instance is gone or silent. The
        same caller acking again is a no-op."""
        outcome = self._ack(
            keys=[
                lease_key(event.id),
                instance_key(event.instance),
                acks_key(event.instance),
                stream_key(event.tool),
            ],
            args=[event.holder, json.dumps({"id": event.id, "result": str(result)}), event.entry, ACKED_SECS],
        )
        outcome = outcome.decode() if isinstance(outcome, bytes) else str(outcome)
        what = f"tool {event.tool}: {brief(event.term)} (event {event.id})"
        if outcome == "leased":
            raise TransactionError(
                f"{what}: this caller's lease ran out and another caller has leased the event again; "
                "only that caller can ack it now (take events with a longer lease)"
            )
        if outcome == "acked":
            raise TransactionError(f"{what} has already been acked by another caller")
        if outcome == "gone":
            raise TransactionError(
                f"tool {event.tool}: the instance that emitted {event.term} ({event.instance}) has been "
                "recycled or has crashed; the ack cannot be delivered"
            )
        if outcome == "silent":
            raise TransactionError(
                f"tool {event.tool}: the worker process of the instance that emitted {event.term} "
                f"({event.instance}) has not been heard of for {INSTANCE_TTL} s (killed, or cut off from "
                "Redis); the ack cannot be delivered"
            )
