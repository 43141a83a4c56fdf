"""The Celery app of every worker process, configured from ``celeryconfig.settings()``.

Workers run ``celery -A worker.app worker``; clients that only send (the Bus, the portal) build
their own app with ``make_app`` and never use ``current_app``.
"""

from __future__ import annotations

from celery import Celery, signals

import celeryconfig
from worker import served  # noqa: F401  (every worker records the queues it serves)

TASK_MODULES = ["worker.call_tasks", "worker.fetch_tasks"]


def make_app(name: str = "toolcall", **overrides) -> Celery:
    """A Celery app with the settings of the environment as it is now, and ``overrides`` on top."""
    app = Celery(name, set_as_current=False, include=TASK_MODULES)
    app.conf.update({**celeryconfig.settings(), **overrides})
    return app


app = Celery("toolcall", include=TASK_MODULES)
app.conf.update(celeryconfig.settings())


@signals.beat_init.connect
def _quiet_beat(sender=None, **_):
    """Beat sends only the sweep, which sends no events (``worker.fetch_tasks``): without this, its
    task-sent event every few seconds would list it in Flower as a task sent and never heard of."""
    sender.app.conf.task_send_sent_event = False
