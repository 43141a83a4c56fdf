"""The tool-call tasks: every eval and do is one Celery task on the queue of its tool.

Calls and values travel as ATerm text. A task carries the caller's deadline (end to end: time in
the queue counts): an external tool gets what is left of it, and the worker's main process ends
the call's child at the deadline if an internal tool's call is still running (``worker.deadlines``).
Errors are raised as the ``toolbus.errors`` classes, which the result backend stores by module,
class and arguments, so the caller gets them back as they were.

A call runs at most once, also when its message reached the queue twice: redis-py retries a command
whose reply was lost, and the broker's push may have been done already. So a task first claims its
id in Redis (``toolbus:task:<id>``); a second copy finds the claim taken, runs nothing and stores
nothing (Celery's ``Ignore``), and the caller gets the value of the first. The STARTED state, which
tells the caller which process runs the call, is written after the claim, not before it as Celery's
``track_started`` would, so that a copy cannot overwrite the first's outcome with it.
"""

from __future__ import annotations

import logging
import os
import time
import uuid

import redis
from celery import states
from celery.backends.base import BaseKeyValueStoreBackend
from celery.exceptions import Ignore
from redis.backoff import NoBackoff
from redis.retry import Retry

import celeryconfig
from toolbus.aterm import parse
from toolbus.errors import ToolBusError, ToolTimeout, brief
from worker import ownership
from worker.app import app
from worker.deadlines import DeadlineRequest
from worker.events import PREFIX, connect_redis
from worker.process import ProcessLocal

log = logging.getLogger("worker.call_tasks")

#: Seconds a task id stays claimed past its deadline (a copy of its message comes right after it;
#: one that comes after the deadline is refused by the deadline before it claims anything).
CLAIM_MARGIN = 60
#: Seconds a task id without a deadline (a do) stays claimed: past the time limit of every task, so
#: that a copy waiting behind its first run cannot outlast the claim.
CLAIM_SECS = celeryconfig.MAX_EVAL_TIMEOUT + 600
#: Seconds a claim may take: a worker must not stall on a Redis that is away.
CLAIM_TIMEOUT = 5.0

# Claims task id KEYS[1] for this run (ARGV[1], fresh per run): 1 when it is this run's, also when a
# retry after a lost reply finds its own claim, 0 when another run has it.
_CLAIM = """
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
if holder == ARGV[1] then return 1 end
return 0
"""


def _claimer():
    # One retry, at once: a connection that a network blip broke since the last task fails its first
    # command, and claiming again is safe (the run's own claim is recognised).
    client = connect_redis(
        socket_connect_timeout=CLAIM_TIMEOUT, socket_timeout=CLAIM_TIMEOUT, retry=Retry(NoBackoff(), 1)
    )
    return client.register_script(_CLAIM)


_claims: ProcessLocal = ProcessLocal(_claimer)


def _start(task, tool: str, what: str, deadline: float | None) -> None:
    """Claim the task's id, then say STARTED; a second copy of the message stops here (``Ignore``)."""
    if deadline is None:
        ttl = CLAIM_SECS
    else:
        left = deadline - time.time()
        if left <= 0:
            raise ToolTimeout(
                f"tool {tool}: {brief(what)} waited in the queue past its timeout and was not run"
            )
        ttl = int(left) + CLAIM_MARGIN
    try:
        mine = _claims.get()(keys=[f"{PREFIX}:task:{task.request.id}"], args=[uuid.uuid4().hex, ttl])
    except redis.RedisError as e:
        raise ToolBusError(
            f"tool {tool}: {brief(what)} was not run: the worker could not claim it in Redis, which keeps a call "
            f"from running twice ({type(e).__name__}: {e})"
        ) from None
    if not mine:
        log.warning("task %s (%s on %s) arrived twice; the copy was dropped", task.request.id, what, tool)
        raise Ignore()
    _say_started(task)


def _say_started(task) -> None:
    """Store STARTED (the worker and pid running the call, which the caller watches) as Celery's
    ``track_started`` would, less the read before the write.

    Celery reads the stored state before every write, so as not to overwrite a stored success. This
    run holds the task's claim: nothing else has stored anything under its id, and the read would
    only add a round trip to the one the claim costs (docs/worker-performance.md). ``_get_result_meta``
    is Celery's own, as pinned in requirements.txt."""
    backend = task.backend
    started = {"pid": os.getpid(), "hostname": task.request.hostname}
    if not isinstance(backend, BaseKeyValueStoreBackend):
        task.update_state(state=states.STARTED, meta=started)
        return
    meta = backend._get_result_meta(
        result=started, state=states.STARTED, traceback=None, request=task.request
    )
    meta["task_id"] = task.request.id
    backend.set(backend.get_key_for_task(task.request.id), backend.encode(meta))


def _remaining(tool: str, call: str, deadline: float | None) -> float | None:
    """What is left of the caller's timeout for the tool.

    An internal tool gets no timeout of its own: it runs inline in this child, and the call's hard
    time limit, which ends at the deadline (``worker.deadlines``), kills the child -- and the tool
    with it -- if it overruns. A call abandoned on a thread of its own would run on after its caller
    was told ``ToolTimeout``: only the end of the process stops it.
    """
    if deadline is None:
        return None
    left = deadline - time.time()
    if left <= 0:
        raise ToolTimeout(f"tool {tool}: {brief(call)} waited in the queue past its timeout and was not run")
    descriptor = ownership.descriptors().get(tool)  # an unknown tool is refused by ownership.instance
    return None if descriptor is not None and descriptor.internal else left


@app.task(name="toolbus.eval", Request=DeadlineRequest, bind=True, track_started=False)
def eval_call(self, tool: str, call: str, deadline: float | None = None) -> str:
    """Evaluate ``call`` on this process's instance of ``tool``; returns the value as text."""
    _start(self, tool, call, deadline)
    term = parse(call)  # its signature is checked by the instance (the Bus checked it before sending)
    timeout = _remaining(tool, call, deadline)  # a call past its deadline does not start the tool
    try:
        return str(ownership.instance(tool).eval(term, timeout=timeout))
    finally:
        ownership.settle(tool)


@app.task(name="toolbus.do", Request=DeadlineRequest, bind=True, track_started=False)
def do_call(self, tool: str, call: str, deadline: float | None = None) -> None:
    """Perform ``call`` on this process's instance of ``tool`` (nobody waits for it: a failure is
    logged and shows as a failed task)."""
    _start(self, tool, call, deadline)
    term = parse(call)
    timeout = _remaining(tool, call, deadline)
    try:
        ownership.instance(tool).do(term, wait=True, timeout=timeout)
    finally:
        ownership.settle(tool)


@app.task(name="toolbus.eval_many", Request=DeadlineRequest, bind=True, track_started=False)
def eval_many(self, tool: str, calls: list[str], deadline: float | None = None) -> list[dict]:
    """Evaluate a batch in one task. Each slot is {"value": text} or {"error": class, "args": [...]}."""
    _start(self, tool, f"a batch of {len(calls)} calls", deadline)
    inst = ownership.instance(tool)
    results: list[dict] = []
    for call in calls:
        try:
            term = parse(call)
            results.append({"value": str(inst.eval(term, timeout=_remaining(tool, call, deadline)))})
        except ToolBusError as e:
            results.append({"error": type(e).__name__, "args": list(e.args)})
        except ValueError as e:  # a ParseError: the client parsed it, so only a forged message
            results.append({"error": "ToolBusError", "args": [f"tool {tool}: {e}"]})
    ownership.settle(tool)
    return results
