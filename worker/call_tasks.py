"""The tool-call tasks: every eval and do is one Celery task on the queue of its tool.

Calls and values travel as ATerm text. A task carries the caller's deadline (end to end: time in
the queue counts): an external tool gets what is left of it, and the worker's main process ends
the call's child at the deadline if an internal tool's call is still running (``worker.deadlines``).
Errors are raised as the ``toolbus.errors`` classes, which the result backend stores by module,
class and arguments, so the caller gets them back as they were.
"""

from __future__ import annotations

import time

from toolbus.aterm import parse
from toolbus.errors import ToolBusError, ToolTimeout
from worker import ownership
from worker.app import app
from worker.deadlines import DeadlineRequest


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
        raise ToolTimeout(f"tool {tool}: {call} waited in the queue past its timeout and was not run")
    descriptor = ownership.descriptors().get(tool)  # an unknown tool is refused by ownership.instance
    return None if descriptor is not None and descriptor.internal else left


@app.task(name="toolbus.eval", Request=DeadlineRequest)
def eval_call(tool: str, call: str, deadline: float | None = None) -> str:
    """Evaluate ``call`` on this process's instance of ``tool``; returns the value as text."""
    term = parse(call)  # its signature is checked by the instance (the Bus checked it before sending)
    timeout = _remaining(tool, call, deadline)  # a call past its deadline does not start the tool
    try:
        return str(ownership.instance(tool).eval(term, timeout=timeout))
    finally:
        ownership.settle(tool)


@app.task(name="toolbus.do", Request=DeadlineRequest)
def do_call(tool: str, call: str, deadline: float | None = None) -> None:
    """Perform ``call`` on this process's instance of ``tool`` (nobody waits for it: a failure is
    logged and shows as a failed task)."""
    term = parse(call)
    timeout = _remaining(tool, call, deadline)
    try:
        ownership.instance(tool).do(term, wait=True, timeout=timeout)
    finally:
        ownership.settle(tool)


@app.task(name="toolbus.eval_many", Request=DeadlineRequest)
def eval_many(tool: str, calls: list[str], deadline: float | None = None) -> list[dict]:
    """Evaluate a batch in one task. Each slot is {"value": text} or {"error": class, "args": [...]}."""
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
