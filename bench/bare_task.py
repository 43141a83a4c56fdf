"""The baselines of bench/eval_vs_celery.py and bench/result_storm.py: bare Celery tasks, configured
like the ToolBus and callbacks workers.

    celery -A bench.bare_task worker -Q bench.bare --concurrency 2 --pool prefork

Same settings (``celeryconfig.settings()``: broker, result backend, serializers, prefetch, events,
acks, result_extended ...) as the app of the ToolBus workers; only the task differs: ``echo(x) -> x``
on its own queue ``bench.bare``, without the signature checks, ATerm text or tool instance.
``sleep(seconds)`` (bench/result_storm.py) only waits, as a result fetch waits for its vendor.
"""

from __future__ import annotations

import time

from celery import Celery

import celeryconfig

QUEUE = "bench.bare"

app = Celery("bench-bare")
app.conf.update(celeryconfig.settings())


@app.task(name="bench.echo", queue=QUEUE)
def echo(x):
    return x


@app.task(name="bench.sleep", queue=QUEUE)
def sleep(seconds):
    time.sleep(seconds)
    return seconds
