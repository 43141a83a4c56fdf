"""How many messages wait in the broker's queues: for the sweep (room in ``callbacks``) and the
portal's metrics (every queue). No Celery tasks here, only the app's broker connection.

One way for both brokers: a passive ``queue_declare`` answers the queue's message count. On Redis
kombu counts the queue's lists (``LLEN`` of the queue's key and of its priority keys); on RabbitMQ
the broker answers for the queue. Either way the count is of messages *waiting*: those a worker has
already taken (prefetched, or held until an ETA) are not in it. A queue nobody declared yet holds
nothing: 0.

The connection and its channel are kept from one call to the next (one per broker URL and
process): opening them costs more than the counting (a Redis channel is a connection pool of its
own). A connection that fails is dropped and opened anew by the next call.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from celery import Celery

from worker.process import ProcessLocal

#: Seconds to wait for the broker: a caller (a web request, the sweep) must not hang on it.
TIMEOUT = 2.0

#: This process's connections, broker URL -> [connection, channel], and the lock its threads share
#: (a forked child opens its own: a connection is never shared with the parent).
_open: ProcessLocal[tuple[threading.Lock, dict[str, list]]] = ProcessLocal(lambda: (threading.Lock(), {}))


def depths(app: Celery, names: Iterable[str], timeout: float = TIMEOUT) -> dict[str, int]:
    """{queue: messages waiting} for ``names``; raises when the broker cannot be reached."""
    url = app.conf.broker_url
    lock, opened = _open.get()
    with lock:
        held = opened.get(url)
        if held is None:
            options = {"max_retries": 0, "socket_connect_timeout": timeout, "socket_timeout": timeout}
            connection = app.connection_for_read(connect_timeout=timeout, transport_options=options)
            held = opened[url] = [connection, None]
        connection = held[0]
        try:
            connection.ensure_connection(max_retries=1)
            return _count(held, names)
        except Exception:
            del opened[url]
            connection.release()
            raise


def _count(held: list, names: Iterable[str]) -> dict[str, int]:
    connection = held[0]
    # On Redis a declare only counts (queues are lists made by the first message), so it need not
    # be passive -- and must not be: kombu's passive check asks EXISTS of the key without Celery's
    # key prefix (celeryconfig.REDIS_KEY_PREFIX), and would call every queue undeclared.
    passive = connection.transport.driver_type != "redis"
    found: dict[str, int] = {}
    for name in names:
        if held[1] is None or not _usable(held[1]):
            held[1] = connection.channel()
        try:
            found[name] = held[1].queue_declare(queue=name, passive=passive).message_count
        except connection.channel_errors:
            found[name] = 0  # not declared yet: nothing was ever sent to it (RabbitMQ closes the channel)
    return found


def _usable(channel) -> bool:
    """Whether a channel is still open: RabbitMQ closes one whose passive declare it refused."""
    return not getattr(channel, "closed", False) and getattr(channel, "is_open", True)


def depth(app: Celery, name: str, timeout: float = TIMEOUT) -> int:
    """Messages waiting in queue ``name``; raises when the broker cannot be reached."""
    return depths(app, [name], timeout)[name]
