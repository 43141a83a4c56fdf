"""The result-fetch tasks: ``toolcall.fetch_result`` makes one attempt of a fetch, and
``toolcall.sweep`` queues the fetches whose message was lost and ends stale attempts.

Thin entry points: the life of a fetch is ``webapp.fetches``; these tasks give it a database and
the settings, and hand near retries back to the broker (Celery's own retry).
"""

from __future__ import annotations

import celeryconfig
from webapp import fetches
from webapp.config import settings
from webapp.db import Database
from worker.app import app
from worker.process import ProcessLocal

_config = ProcessLocal(settings)
_database = ProcessLocal(lambda: Database(_config.get()["DATABASE_URL"]))


# The result is stored unless the sender asks otherwise (the portal's report, the ops page's retry
# and the sweep do: nobody waits for it; tests do wait). STARTED is never stored: nobody reads it
# (Flower has the task-started event), and it would be one more write to Redis per fetch.
@app.task(name=fetches.FETCH_TASK, bind=True, max_retries=None, track_started=False)
def fetch_result(self, fetch_id: int) -> str:
    """One attempt of an owed result fetch; returns what happened, for Flower."""
    decision = fetches.attempt(_database.get(), fetch_id, _config.get())
    if decision.retry_in is not None and decision.retry_in <= fetches.NEAR_RETRY_SECS:
        raise self.retry(countdown=decision.retry_in)
    return decision.text


# Every few seconds, with nothing for an operator to read in its result: no result is kept and no
# events are sent, so it does not bury the fetches and tool calls in Flower (its work is logged).
@app.task(name="toolcall.sweep", ignore_result=True, send_events=False)
def sweep() -> dict:
    """Re-queue lost fetches; expire unused start tokens and attempts past their deadline."""
    config, db = _config.get(), _database.get()
    due = fetches.due(db, config)
    for fetch_id in due:
        # Nobody waits for a re-queued fetch's result (the record is the truth): not stored.
        fetch_result.apply_async(args=[fetch_id], queue=celeryconfig.CALLBACKS_QUEUE, ignore_result=True)
    return {"requeued": len(due), **fetches.expire(db, config)}
