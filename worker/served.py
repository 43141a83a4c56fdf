"""Which queues some worker serves: recorded by every worker, checked by the Bus before it sends.

A call sent to a queue that no worker consumes waits there until its timeout, and the caller learns
nothing but ``ToolTimeout``. So every worker records the queues it consumes, and the Bus looks at the
record of a tool's queue (one ``EXISTS``) before it sends a call there, raising ``NoWorker`` ("no
worker serves toolbus.<tool>") when there is none.

    toolbus:served:<queue>   hash: worker node name -> Unix time of its last refresh; the key
                             expires SERVED_SECS after the last refresh of any of its workers

The rule, chosen so that no call fails that a worker would have served:

- A worker records its queues once they are set up, before it consumes or answers a ping
  (``celeryd_after_setup``): a worker that has just started is never missed.
- Its main process refreshes the record every ``REFRESH_SECS`` while it lives. Pool children come
  and go (a tool restarted by recycling, ``restart_frequency``) without touching it.
- A worker that stops (warm or cold shutdown) removes itself: when it was the last worker of a queue,
  the key goes with it and calls fail at once.
- A worker killed outright removes nothing: its queues count as served until ``SERVED_SECS`` after
  its last refresh, long enough for the launcher to start it again (it waits at most 30 s) without
  failing the calls in between -- they wait in the queue for the new worker.
- The Bus takes a "served" answer as good for ``CHECKED_SECS`` (a call costs no Redis round trip
  then); "not served" is asked again on every call, so a worker that comes up is seen at once.
- A check that cannot be made (Redis away) lets the call go: its own wait then tells how it went.

After the Redis of the records restarted empty, a queue counts as not served until its workers'
next refresh, at most ``REFRESH_SECS`` later. The record lives in the Redis of ``REDIS_URL`` (also
when the broker is RabbitMQ), under the ``toolbus:`` prefix of the workers' own keys.
"""

from __future__ import annotations

import logging
import os
import time

import redis
from celery import signals

from worker.events import PREFIX, connect_redis
from worker.process import Heartbeat

log = logging.getLogger("worker.served")

#: A queue counts as served this long after the last refresh of any of its workers.
SERVED_SECS = 60
#: How often a worker refreshes its record.
REFRESH_SECS = 2.0
#: How long the Bus trusts an answer "served" before it asks again.
CHECKED_SECS = 5.0
#: Seconds a check or a refresh may take: neither a caller nor a worker waits long for a Redis away.
REDIS_TIMEOUT = 2.0


def served_key(queue: str) -> str:
    return f"{PREFIX}:served:{queue}"


class ServedQueues:
    """The record of served queues, in the Redis of ``client``."""

    def __init__(self, client: redis.Redis):
        self.redis = client

    def serving(self, worker: str, queues: list[str]) -> None:
        """``worker`` consumes ``queues`` now (raises RedisError)."""
        pipe = self.redis.pipeline(transaction=False)
        now = f"{time.time():.3f}"
        for queue in queues:
            pipe.hset(served_key(queue), worker, now)
            pipe.expire(served_key(queue), SERVED_SECS)
        pipe.execute()

    def stopped(self, worker: str, queues: list[str]) -> None:
        """``worker`` consumes ``queues`` no more (raises RedisError)."""
        pipe = self.redis.pipeline(transaction=False)
        for queue in queues:
            pipe.hdel(served_key(queue), worker)
        pipe.execute()

    def is_served(self, queue: str) -> bool:
        """Whether some worker serves ``queue`` (raises RedisError)."""
        return bool(self.redis.exists(served_key(queue)))


class Check:
    """The Bus's check: whether a queue is served, with "served" answers kept for ``CHECKED_SECS``."""

    def __init__(self):
        self.served = ServedQueues(
            connect_redis(socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT)
        )
        self._until: dict[str, float] = {}  # queue -> monotonic time until which "served" holds

    def __call__(self, queue: str) -> bool:
        if self._until.get(queue, 0.0) > time.monotonic():
            return True
        try:
            served = self.served.is_served(queue)
        except redis.RedisError as e:
            log.debug("cannot tell whether %s is served (%s); sending the call", queue, e)
            return True
        if served:
            self._until[queue] = time.monotonic() + CHECKED_SECS
        return served

    def close(self) -> None:
        self.served.redis.close()


# ---- the worker's side, in its main process ---------------------------------------------------------


class _Refresher:
    """Keeps one worker's record of its queues alive from its main process, and removes it at the end."""

    def __init__(self, worker: str, queues: list[str]):
        self.worker = worker
        self.queues = queues
        self.served = ServedQueues(
            connect_redis(socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT)
        )
        self.heartbeat = Heartbeat(
            "toolbus-served",
            REFRESH_SECS,
            lambda: self.served.serving(worker, queues),
            f"worker {worker}: cannot record the queues it serves",
        )
        self.pid = self.heartbeat.pid

    def stop(self) -> None:
        self.heartbeat.stop(wait=REDIS_TIMEOUT * 2)
        try:
            self.served.stopped(self.worker, self.queues)
        except redis.RedisError:
            pass  # it expires on its own
        self.served.redis.close()


#: The worker's refresher, made in its main process (state of that process alone: see ``_on_worker_shutdown``).
_refresher: _Refresher | None = None


@signals.celeryd_after_setup.connect
def _on_after_setup(sender=None, instance=None, **_):
    """The queues are set up (``--queues``), nothing is consumed yet: record them now."""
    global _refresher
    queues = sorted(instance.app.amqp.queues.consume_from)
    if _refresher is None and queues:
        _refresher = _Refresher(str(sender), queues)


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_):
    global _refresher
    # Sent in the main process only; a pool child's copy of the refresher has no thread and is left be.
    if _refresher is not None and _refresher.pid == os.getpid():
        _refresher.stop()
        _refresher = None
