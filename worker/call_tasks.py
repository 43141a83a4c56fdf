"""The tool-call tasks: every eval and do is one Celery task on the queue of its tool.

Calls and values travel as ATerm text. A task carries the caller's deadline (end to end: time in
the queue counts) and gives the tool what is left of it. Errors are raised as the
``toolbus.errors`` classes, which the result backend stores by module, class and arguments, so the
caller gets them back as they were.
"""

from __future__ import annotations

import time

from toolbus.aterm import parse
from toolbus.errors import ToolBusError, ToolTimeout
from worker import ownership
from worker.app import app


def _remaining(tool: str, call: str, deadline: float | None) -> float | None:
    """What is left of the caller's timeout for the tool.

    An internal tool gets no timeout of its own: it runs inline in this child, and the task's hard
    time limit (set by the caller just past its deadline) kills the child -- and the tool with it --
    if it overruns. Handing each call to a separate thread that could be abandoned would cost more
    than the call (docs/worker-performance.md).
    """
    if deadline is None:
        return None
    left = deadline - time.time()
    if left <= 0:
        raise ToolTimeout(f"tool {tool}: {call} waited in the queue past its timeout and was not run")
    return None if ownership.descriptors()[tool].internal else left


@app.task(name="toolbus.eval")
def eval_call(tool: str, call: str, deadline: float | None = None) -> str:
    """Evaluate ``call`` on this process's instance of ``tool``; returns the value as text."""
    term = parse(call)  # its signature is checked by the instance (the Bus checked it before sending)
    try:
        return str(ownership.instance(tool).eval(term, timeout=_remaining(tool, call, deadline)))
    finally:
        ownership.settle(tool)


@app.task(name="toolbus.do")
def do_call(tool: str, call: str, deadline: float | None = None) -> None:
    """Perform ``call`` on this process's instance of ``tool`` (nobody waits for it: a failure is
    logged and shows as a failed task)."""
    term = parse(call)
    try:
        ownership.instance(tool).do(term, wait=True, timeout=_remaining(tool, call, deadline))
    finally:
        ownership.settle(tool)


@app.task(name="toolbus.eval_many")
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
