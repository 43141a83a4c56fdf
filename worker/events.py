"""The event channel between tool instances (in worker children) and the application (the Bus).

Why this shape:

- **Events go into one Redis stream per tool** (``toolbus:events:<tool>``). A stream keeps arrival
  order and survives the emitting child; any client can read it, whatever the Celery broker is.
- **A caller leases an event** (``SET lease NX PX``) instead of consuming it: ``get_event`` takes the
  earliest event that matches its pattern and is not leased, so events of other shapes stay for
  other callers. A lease that runs out without an ack offers the event again: at least once. The
  event's id (a uuid chosen when it is published) stays the same, so callers can deduplicate.
- **Acks go to a list per tool instance** (``toolbus:acks:<instance>``), read by a background thread
  of the child that owns the instance, which hands them to the tool.
- **Every live instance holds a key with a short expiry** (``toolbus:instance:<instance>``) that its
  child refreshes every second and deletes when the tool is recycled, restarted or gone. An ack for
  an instance without that key is refused with ``TransactionError``: the tool that emitted the
  event is not there to receive it. A child killed outright loses its key within ``INSTANCE_TTL``.
- **Every worker process that runs calls holds a key too** (``toolbus:process:<worker>:<pid>``,
  refreshed every second, same expiry). A caller waiting for a call that has started checks the key
  of the process running it: a worker killed as a whole (main process and pool children at once)
  leaves nobody to report its calls as lost, and without the key the caller would wait until its
  timeout.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

import redis

import celeryconfig
from toolbus.aterm import ATerm, Environment, parse
from toolbus.errors import TransactionError

PREFIX = "toolbus"
#: Seconds an instance key lives without being refreshed.
INSTANCE_TTL = 5
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


@dataclass(frozen=True)
class Event:
    """An event offered to the application and leased to this caller."""

    id: str  # unique per emission, stable across redeliveries
    tool: str
    term: ATerm  # exactly as the tool sent it
    env: Environment  # the bindings of the caller's pattern
    instance: str  # the tool instance that emitted it
    entry: str = ""  # its entry in the tool's stream


class EventChannel:
    def __init__(self, client: redis.Redis):
        self.redis = client
        self._publish = client.register_script(_PUBLISH)

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

    def alive(self, instance: str) -> None:
        """The instance is alive (refresh its key)."""
        self.redis.set(instance_key(instance), "1", ex=INSTANCE_TTL)

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

    def process_alive(self, worker: str, pid: int) -> None:
        """Process ``pid`` of ``worker`` (its Celery node name) is alive and may run calls."""
        self.redis.set(process_key(worker, pid), "1", ex=INSTANCE_TTL)

    def process_gone(self, worker: str, pid: int) -> None:
        self.redis.delete(process_key(worker, pid))

    # ---- the application ---------------------------------------------------------------------------

    def is_alive(self, instance: str) -> bool:
        return bool(self.redis.exists(instance_key(instance)))

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
        if not self.is_alive(fields["instance"]):
            # The emitting tool was recycled or crashed: its events leave the offer.
            self.redis.xdel(stream_key(tool), entry_id)
            return None
        term = parse(fields["term"])
        env = Environment()
        if not env.match(pattern, term):
            return None
        if not self.redis.set(f"{PREFIX}:lease:{fields['id']}", owner, nx=True, px=max(1, int(lease * 1000))):
            return None
        entry = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        return Event(fields["id"], tool, term, env, fields["instance"], entry)

    def ack(self, event: Event, result: ATerm) -> None:
        """Queue the ack for the instance that emitted the event; the event leaves the offer."""
        if not self.is_alive(event.instance):
            raise TransactionError(
                f"tool {event.tool}: the instance that emitted {event.term} ({event.instance}) has been "
                "recycled or has crashed; the ack cannot be delivered"
            )
        pipe = self.redis.pipeline()
        pipe.rpush(acks_key(event.instance), json.dumps({"id": event.id, "result": str(result)}))
        pipe.expire(acks_key(event.instance), 3600)
        pipe.set(f"{PREFIX}:lease:{event.id}", "acked", ex=3600)  # never offered again
        if event.entry:
            pipe.xdel(stream_key(event.tool), event.entry)
        pipe.execute()
