"""The result-fetch tasks: ``toolcall.fetch_result`` makes one attempt of a fetch, and
``toolcall.sweep`` queues the fetches whose message was lost and ends stale attempts.

Thin entry points: the life of a fetch is ``webapp.fetches``; these tasks give it a database and
the settings, hand near retries back to the broker (Celery's own retry), record how long each
attempt took (``worker.records``), and keep sweep runs from overlapping.
"""

from __future__ import annotations

import logging
import time

import redis
from celery import Celery

import celeryconfig
from webapp import fetches, lifecycle
from webapp.config import settings
from webapp.db import Database
from worker import queues
from worker.app import app, make_app
from worker.process import ProcessLocal
from worker.records import Records, connect

log = logging.getLogger("worker.fetch_tasks")

_config = ProcessLocal(settings)
_database = ProcessLocal(lambda: Database(_config.get()["DATABASE_URL"]))
_records = ProcessLocal(lambda: Records(connect(_config.get()["REDIS_URL"])))
# The sweep queues its batch through an app of its own that sends no task-sent events: each
# message would cost a second publish (Flower sees a re-queued fetch when a worker receives it).
_sweep_app = ProcessLocal(lambda: make_app("toolcall-sweep", task_send_sent_event=False))

#: The lock that keeps two sweep runs apart (Redis, shared by every callbacks worker).
SWEEP_LOCK = "toolcall:sweep-lock"
#: How long the lock holds if its run never releases it (a worker killed mid-run). A run takes a
#: bounded batch and lasts a few seconds at most.
SWEEP_LOCK_SECS = 60


# The result is stored unless the sender asks otherwise (the portal's report, the ops page's retry
# and the sweep do: nobody waits for it; tests do wait). STARTED is never stored: nobody reads it
# (Flower has the task-started event), and it would be one more write to Redis per fetch.
@app.task(name=fetches.FETCH_TASK, bind=True, max_retries=None, track_started=False)
def fetch_result(self, fetch_id: int) -> str:
    """One attempt of an owed result fetch; returns what happened, for Flower."""
    started = time.perf_counter()
    decision = fetches.attempt(_database.get(), fetch_id, _config.get())
    if decision.outcome != "nothing-to-do":  # a duplicate message: no attempt was made
        _record_seconds(decision.outcome, time.perf_counter() - started)
    if decision.retry_in is not None and decision.retry_in <= fetches.NEAR_RETRY_SECS:
        raise self.retry(countdown=decision.retry_in)
    return decision.text


def _record_seconds(outcome: str, seconds: float) -> None:
    try:
        _records.get().fetch_attempted(outcome, seconds)
    except redis.RedisError as e:  # a metric lost; the fetch is not affected
        log.warning("could not record the fetch's time: %s", e)


# Every few seconds, with nothing for an operator to read in its result: no result is kept and no
# events are sent, so it does not bury the fetches and tool calls in Flower (its work is logged).
@app.task(name="toolcall.sweep", ignore_result=True, send_events=False)
def sweep() -> dict:
    """Re-queue lost fetches, a bounded batch a run; expire unused start tokens and attempts past
    their deadline; sum the ToolCall counts. One run at a time."""
    return run_sweep(_sweep_app.get(), _database.get(), _records.get().redis, _config.get())


def run_sweep(celery: Celery, db: Database, lock_redis: redis.Redis, config: dict) -> dict:
    """One sweep run (the task's body): queues through ``celery``'s broker, keeps runs apart with a
    lock in ``lock_redis``; what it did, by kind. A run that finds another one under way does
    nothing."""
    try:
        lock = lock_redis.lock(SWEEP_LOCK, timeout=SWEEP_LOCK_SECS)
        if not lock.acquire(blocking=False):
            log.info("sweep: another run is under way; this one does nothing")
            return {"skipped": "another sweep is running"}
    except redis.RedisError as e:
        log.error("sweep: the lock in Redis cannot be taken, so no run (%s)", e)
        return {"skipped": f"Redis: {e}"}
    try:
        return _sweep(celery, db, config)
    finally:
        try:
            lock.release()
        except redis.RedisError:  # it expired meanwhile, or Redis went away: it expires by itself
            pass


def _sweep(celery: Celery, db: Database, config: dict) -> dict:
    batch = config["TOOLCALL_SWEEP_BATCH"]
    # Messages still waiting are not lost: a run queues only as many as the queue has room for
    # (up to a batch), so a backlog drains at the workers' pace with each fetch queued about once.
    try:
        waiting = queues.depth(celery, celeryconfig.CALLBACKS_QUEUE)
    except Exception as e:  # the broker is away: nothing could be queued anyway
        log.error("sweep: the broker cannot be reached, no fetch queued (%s)", e)
        waiting, due = None, []
    else:
        due = fetches.take_due(db, config, batch - waiting)
    queued = 0
    try:
        for fetch_id in due:
            fetches.queue(celery, fetch_id)  # nobody waits for its result: not stored
            queued += 1
    except Exception as e:  # those not queued are taken again once the grace has passed
        log.error(
            "sweep: queuing failed after %d of %d (%s); the rest are taken again later", queued, len(due), e
        )
    expired = fetches.expire(db, config, batch)
    with db.begin() as connection:
        lifecycle.compact_counts(connection)
    return {"requeued": queued, "waiting": waiting, **expired}
