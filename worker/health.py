"""The workers' records for operators, written as things happen (``worker.records`` holds what is
recorded and how it is read).

Who writes: ``worker.ownership.settle`` notices a start after the request that caused it (the
instance's start count moved) and calls ``tool_started``; a failed call is recorded by Celery's
``task_failure`` signal (in the child; in the worker's main process for a child lost mid-call or a
hard time limit), and a batch's error slots by ``task_success``. A record that cannot be written
(Redis away) is logged and lost; the call is not affected.

Every worker (tool workers and ``callbacks`` alike) writes its state -- Celery's stats and the
queues it consumes -- when it is ready and then every ``TOOLCALL_WORKER_STATE_SECS`` from its main
process's timer, and removes it when it stops: the ops page reads that instead of asking the
workers on every view.
"""

from __future__ import annotations

import logging
import os
import socket
import time

from billiard.process import current_process
from celery import current_task, signals

import celeryconfig
from worker.process import ProcessLocal
from worker.records import WORKER_STATE_SECS, Records, WorkerState, connect, failure

log = logging.getLogger("worker.health")

# ---- the worker's state, from its main process ----------------------------------------------------------

#: The stats of a pool that the ops page shows.
POOL_FIELDS = ("implementation", "max-concurrency", "max-tasks-per-child", "processes")


def worker_state(consumer) -> WorkerState:
    """The state of the worker that ``consumer`` belongs to, as ``inspect().stats()`` and
    ``active_queues()`` would answer."""
    stats = consumer.controller.stats()
    pool = stats.get("pool") or {}
    queues = consumer.task_consumer.queues if consumer.task_consumer else []
    return WorkerState(
        name=consumer.hostname,
        at=time.time(),
        pid=stats.get("pid"),
        uptime=stats.get("uptime"),
        total={str(task): int(n) for task, n in (stats.get("total") or {}).items()},
        pool={key: pool[key] for key in POOL_FIELDS if key in pool},
        queues=sorted(q.name for q in queues),
    )


@signals.worker_ready.connect
def _on_worker_ready(sender=None, **_):
    """Write the state now, then every ``TOOLCALL_WORKER_STATE_SECS`` (the consumer's timer runs
    in the main process, beside the event loop)."""
    consumer = sender

    def write() -> None:
        try:
            state = worker_state(consumer)
        except Exception as e:  # a worker shutting down may have no consumer left
            log.debug("no worker state to write: %s", e)
            return
        _write(lambda records: records.worker_seen(state))

    write()
    consumer.timer.call_repeatedly(
        celeryconfig.seconds("TOOLCALL_WORKER_STATE_SECS", WORKER_STATE_SECS), write
    )


@signals.worker_shutdown.connect
def _on_worker_shutdown(sender=None, **_):
    name = getattr(sender, "hostname", None)
    if name:
        _write(lambda records: records.worker_gone(name))


# ---- recording, in the worker processes ---------------------------------------------------------------

_records: ProcessLocal[Records] = ProcessLocal(lambda: Records(connect()))


def _write(write) -> None:
    try:
        write(_records.get())
    except Exception as e:
        log.warning("could not record for the ops page: %s", e)


def worker_name() -> str:
    """The Celery node name of the worker running the current task (e.g. toolbus-shared-localhost@box)."""
    hostname = getattr(current_task.request, "hostname", None) if current_task else None
    return hostname or f"{socket.gethostname()}:{os.getpid()}"


def child_index() -> int:
    """This worker child's pool slot (0 outside a prefork pool)."""
    return getattr(current_process(), "index", None) or 0


def tool_started(tool: str, count: int = 1) -> None:
    """``count`` starts of ``tool`` in this worker child (called from within a task)."""
    _write(lambda records: records.tool_started(worker_name(), tool, child_index(), count))


def _tool_and_calls(args, kwargs) -> tuple[str, object]:
    """(tool, call or calls) of a toolbus task's arguments (the Bus sends keywords)."""
    kwargs = kwargs or {}
    args = list(args or ())
    tool = kwargs.get("tool", args[0] if args else "?")
    calls = kwargs.get("calls", kwargs.get("call", args[1] if len(args) > 1 else ""))
    return str(tool), calls


@signals.task_failure.connect
def _on_task_failure(sender=None, exception=None, args=None, kwargs=None, **_):
    name = getattr(sender, "name", None) or ""
    if not name.startswith("toolbus.") or exception is None:
        return
    tool, calls = _tool_and_calls(args, kwargs)
    call = ", ".join(map(str, calls)) if isinstance(calls, list) else str(calls)
    entry = failure(time.time(), worker_name(), tool, name, call, type(exception).__name__, str(exception))
    _write(lambda records: records.calls_failed([entry]))


@signals.task_success.connect
def _on_task_success(sender=None, result=None, **_):
    """A batch returns failed calls as error slots instead of raising. Every task passes here; all but
    a batch with an error slot return at once, without I/O."""
    if getattr(sender, "name", None) != "toolbus.eval_many" or not isinstance(result, list):
        return
    if not any("error" in slot for slot in result):
        return
    tool, calls = _tool_and_calls(sender.request.args, sender.request.kwargs)
    worker, now = worker_name(), time.time()
    entries = [
        failure(
            now, worker, tool, sender.name, str(call), str(slot["error"]), " ".join(map(str, slot["args"]))
        )
        for call, slot in zip(calls, result)
        if "error" in slot
    ]
    _write(lambda records: records.calls_failed(entries))
