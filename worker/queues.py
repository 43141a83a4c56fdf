"""How many messages wait in the broker's queues: for the sweep (room in ``callbacks``) and the
portal's metrics (every queue). No Celery tasks here, only the app's broker connection.

One way for both brokers: a passive ``queue_declare`` answers the queue's message count. On Redis
kombu counts the queue's lists (``LLEN`` of the queue's key and of its priority keys); on RabbitMQ
the broker answers for the queue. Either way the count is of messages *waiting*: those a worker has
already taken (prefetched, or held until an ETA) are not in it. A queue nobody declared yet holds
nothing: 0.
"""

from __future__ import annotations

from collections.abc import Iterable

from celery import Celery

#: Seconds to wait for the broker: a caller (a web request, the sweep) must not hang on it.
TIMEOUT = 2.0


def depths(app: Celery, names: Iterable[str], timeout: float = TIMEOUT) -> dict[str, int]:
    """{queue: messages waiting} for ``names``; raises when the broker cannot be reached."""
    found: dict[str, int] = {}
    options = {"max_retries": 0, "socket_connect_timeout": timeout, "socket_timeout": timeout}
    with app.connection_for_read(connect_timeout=timeout, transport_options=options) as connection:
        connection.ensure_connection(max_retries=1)
        for name in names:
            # A refused passive declare closes its channel on RabbitMQ: one channel per queue.
            channel = connection.channel()
            try:
                found[name] = channel.queue_declare(queue=name, passive=True).message_count
            except connection.channel_errors:
                found[name] = 0  # not declared yet: nothing was ever sent to it
            finally:
                try:
                    channel.close()
                except connection.connection_errors + connection.channel_errors:
                    pass
    return found


def depth(app: Celery, name: str, timeout: float = TIMEOUT) -> int:
    """Messages waiting in queue ``name``; raises when the broker cannot be reached."""
    return depths(app, [name], timeout)[name]
