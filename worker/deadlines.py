"""Every tool call ends by its caller's deadline: the hard time limit of a call, counted from the deadline.

A call carries its caller's deadline (``deadline``, seconds since the epoch; ``worker.call_tasks``).
The worker's main process gives the call a hard time limit that ends with it, armed when a pool
child takes the call -- a call may wait in the worker for a free child, and that time counts:

- an **internal** tool runs inside the child, and nothing can stop a Python call (or a C extension
  holding the GIL) but the end of its process: at the deadline the child is killed, the tool with
  it, the caller gets ``ToolTimeout`` and Celery starts a fresh child, with fresh instances;
- an **external** tool is killed at the deadline by its instance in the child, which answers
  ``ToolTimeout`` itself and lives on; its limit, ``HARD_LIMIT_MARGIN`` later, only ends a child
  that is stuck.

A call without a deadline keeps Celery's ceiling (``celeryconfig``'s ``task_time_limit``).
"""

from __future__ import annotations

import logging
import time

from celery.worker.request import Request

from toolbus.descriptors import ToolDescriptor, default_tools_path, load_tools
from worker.process import ProcessLocal

log = logging.getLogger("worker.deadlines")

#: Seconds an external tool's call may run past its deadline before its worker child is ended: the
#: instance kills the tool at the deadline, so only a stuck child ever reaches this.
HARD_LIMIT_MARGIN = 2.0

# The main process needs only which tools are internal: their classes are left to the children.
_tools: ProcessLocal[dict[str, ToolDescriptor]] = ProcessLocal(
    lambda: load_tools(default_tools_path(), check_classes=False)
)


class DeadlineRequest(Request):
    """A tool call in the worker's main process, whose hard time limit ends with its deadline."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        limit = self.time_left()
        if limit is not None:
            self.time_limits = (limit, None)  # from now; armed again, exactly, when a child takes it

    def time_left(self) -> float | None:
        """Seconds from now until the call must have ended; None for a call without a deadline."""
        kwargs = self.kwargs if isinstance(self.kwargs, dict) else {}
        deadline = kwargs.get("deadline")
        if not isinstance(deadline, (int, float)) or isinstance(deadline, bool):
            return None
        left = deadline - time.time()
        if left <= 0:
            # The task refuses the call without touching the tool: the limit only guards a stuck child.
            return HARD_LIMIT_MARGIN
        return left if _internal(kwargs.get("tool")) else left + HARD_LIMIT_MARGIN

    def on_accepted(self, pid, time_accepted):
        super().on_accepted(pid, time_accepted)
        limit = self.time_left()
        job = self._apply_result() if self._apply_result is not None else None
        # The prefork pool armed the limit computed on arrival, from now; the time the call waited for
        # a child counts, so it is armed again with what is left. (Other pools have no time limits.)
        arm = getattr(job, "_on_timeout_set", None)
        disarm = getattr(job, "_on_timeout_cancel", None)
        if limit is None or arm is None or disarm is None:
            return
        disarm(job)
        job._timeout = round(limit, 3)  # what the "Hard time limit exceeded" line and error say
        arm(job, None, job._timeout)


def _internal(tool) -> bool:
    try:
        return _tools.get()[tool].internal
    except Exception:  # an unknown tool (the task refuses it) or a tools file the worker cannot read
        return False
