"""The Bus: how an application calls tools through Celery.

    from worker.bus import Bus
    bus = Bus()
    bus.eval("calc", 'compute("1+2")', timeout=10)          # -> parse('3')
    bus.do("calc", 'store("x", 1)')                          # checked, queued; returns at once
    bus.eval_many("calc", ['compute("1")', 'compute("2")'])  # -> [parse('1'), parse('2')]
    ev = bus.get_event("clock", "show-time(T?)", timeout=10)
    bus.ack(ev, '"ok"')

Calls are checked against the tools' signatures before they are queued (the worker checks again).
Failures come back as the ``toolbus.errors`` classes: a worker child lost mid-call becomes
``ToolCrashed``, a time limit ``ToolTimeout``, anything else ``ToolBusError``. A call to a tool that
no worker serves is not sent: ``NoWorker`` at once (``worker.served``).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import celery.exceptions
from celery import Celery
from celery.backends.base import BaseKeyValueStoreBackend

import toolbus.errors as errors
from toolbus.aterm import ATerm, as_term, parse
from toolbus.descriptors import ToolDescriptor, default_tools_path, load_tools
from toolbus.errors import NoWorker, SignatureError, ToolBusError, ToolCrashed, ToolTimeout, brief
from worker import served
from worker.app import make_app
from worker.events import Event, EventChannel, connect_redis

DEFAULT_TIMEOUT = 30.0
#: A caller whose call takes longer checks this often that the worker process running it is alive.
WATCH_SECS = 1.0

__all__ = ["Bus", "Event"]


class Bus:
    """A client of the ToolBus workers. Reads the environment when constructed; thread-safe."""

    def __init__(self, app: Celery | None = None, tools: dict[str, ToolDescriptor] | str | None = None):
        self.app = app or make_app("toolbus-client")
        if tools is None or isinstance(tools, str):
            tools = load_tools(tools or default_tools_path(), check_classes=False)
        self.tools = tools
        self.events = EventChannel(connect_redis())
        self.served = served.Check()

    def _tool(self, name: str) -> ToolDescriptor:
        try:
            return self.tools[name]
        except KeyError:
            raise ToolBusError(
                f"unknown tool {name!r}; the tools are {', '.join(sorted(self.tools))}"
            ) from None

    def _send(self, task: str, tool: str, args: dict):
        descriptor = self._tool(tool)
        if not self.served(descriptor.queue):
            workers = (
                "python -m worker tools, any host group"
                if descriptor.internal
                else f"python -m worker tools --host {descriptor.host_name}"
            )
            raise NoWorker(
                f"no worker serves {descriptor.queue}, so the call was not sent: start the tool workers "
                f"({workers}) with the same REDIS_URL and broker as this caller"
            )
        # No Celery ``expires`` and no ``time_limit``: the task carries the deadline, refuses to start
        # a call that is still queued at it (ToolTimeout, "... was not run"), and the worker ends a
        # call that runs past it (worker.deadlines). ``expires`` cost every task an ISO date to build,
        # parse and check (~7% of a trivial eval's round trip; docs/worker-performance.md), and a
        # ``time_limit`` would count from when a worker child took the call, not from the deadline.
        options: dict[str, Any] = {"queue": descriptor.queue}
        # The task's name in Flower, the workers' logs and their statistics names the tool
        # (toolbus.eval:calc); the worker runs, and routes by, the real name.
        return self.app.send_task(task, kwargs={"tool": tool, **args}, shadow=f"{task}:{tool}", **options)

    # ---- calls -------------------------------------------------------------------------------------

    def eval(self, tool: str, call: ATerm | str, timeout: float = DEFAULT_TIMEOUT) -> ATerm:
        """Evaluate ``call`` on ``tool`` and return its value (blocking, at most ``timeout`` s)."""
        call = as_term(call)
        self._tool(tool).signatures.check_eval(call)
        result = self._send("toolbus.eval", tool, {"call": str(call), "deadline": time.time() + timeout})
        return parse(self._wait(result, tool, call, timeout))

    def do(self, tool: str, call: ATerm | str, timeout: float | None = None) -> str:
        """Queue ``call`` on ``tool`` and return at once (the task id). Nobody waits for a do: its
        failure is logged by the worker and shows as a failed task in Flower."""
        call = as_term(call)
        self._tool(tool).signatures.check_do(call)
        deadline = None if timeout is None else time.time() + timeout
        result = self._send("toolbus.do", tool, {"call": str(call), "deadline": deadline})
        return result.id

    def eval_many(self, tool: str, calls: list[ATerm | str], timeout: float = DEFAULT_TIMEOUT) -> list[Any]:
        """Evaluate a batch; each slot holds the value, or the exception of that call.

        The batch travels as few tasks as the tool's ``restart_frequency`` allows (at most N calls
        per task), and ``timeout`` covers the whole batch.
        """
        descriptor = self._tool(tool)
        terms = [as_term(c) for c in calls]
        slots: list[Any] = [None] * len(terms)
        texts: list[tuple[int, str]] = []
        for i, t in enumerate(terms):
            try:
                descriptor.signatures.check_eval(t)
                texts.append((i, str(t)))
            except SignatureError as e:
                slots[i] = e
        size = descriptor.restart_frequency or 1000
        deadline = time.time() + timeout
        pending = []
        for start in range(0, len(texts), size):
            chunk = texts[start : start + size]
            result = self._send(
                "toolbus.eval_many", tool, {"calls": [c for _, c in chunk], "deadline": deadline}
            )
            pending.append((chunk, result))
        for chunk, result in pending:
            try:
                answers = self._wait(
                    result, tool, f"a batch of {len(chunk)} calls", max(0.0, deadline - time.time())
                )
            except ToolBusError as e:
                for i, _ in chunk:
                    slots[i] = e
                continue
            for (i, _), answer in zip(chunk, answers):
                if "value" in answer:
                    slots[i] = parse(answer["value"])
                else:
                    cls = getattr(errors, answer["error"], ToolBusError)
                    slots[i] = (
                        cls(*answer["args"])
                        if isinstance(cls, type) and issubclass(cls, ToolBusError)
                        else ToolBusError(*answer["args"])
                    )
        return slots

    def _wait(self, result, tool: str, call: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        runner = _Runner(self.events, result, self.app)
        while True:
            left = deadline - time.monotonic()
            try:
                return self._get(result, tool, call, max(0.0, min(left, WATCH_SECS)))
            except celery.exceptions.TimeoutError:
                if left <= WATCH_SECS:
                    raise ToolTimeout(
                        f"tool {tool}: no value for {brief(call)} within {timeout:g} s"
                    ) from None
                if runner.lost():
                    raise ToolCrashed(
                        f"tool {tool}: the worker process running {brief(call)} was lost (pid {runner.pid} "
                        f"of {runner.worker} is gone, and nobody was left to report the call)"
                    ) from None

    def _get(self, result, tool: str, call: Any, timeout: float) -> Any:
        """The call's value within ``timeout``, its error as a ``toolbus.errors`` class, or Celery's
        ``TimeoutError`` when it has none yet."""
        try:
            return result.get(timeout=timeout, propagate=True, disable_sync_subtasks=False)
        except (ToolBusError, celery.exceptions.TimeoutError):
            raise
        except celery.exceptions.WorkerLostError as e:
            raise ToolCrashed(
                f"tool {tool}: the worker process running {brief(call)} was lost ({e})"
            ) from None
        except (celery.exceptions.TimeLimitExceeded, celery.exceptions.SoftTimeLimitExceeded):
            raise ToolTimeout(
                f"tool {tool}: {brief(call)} ran past its deadline and was stopped (the worker process running "
                "it was replaced)"
            ) from None
        except celery.exceptions.TaskRevokedError:
            raise ToolTimeout(
                f"tool {tool}: {brief(call)} waited in the queue past its timeout and was dropped"
            ) from None
        except Exception as e:
            raise ToolBusError(f"tool {tool}: {brief(call)} failed: {type(e).__name__}: {brief(e)}") from None

    # ---- events ------------------------------------------------------------------------------------

    def get_event(
        self, tool: str, pattern: ATerm | str, timeout: float = DEFAULT_TIMEOUT, lease: float = 60.0
    ) -> Event:
        """Lease the earliest offered event of ``tool`` matching ``pattern``.

        Ack it within ``lease`` seconds, or it is offered again (at least once; ``Event.id`` stays
        the same). Raises ``ToolTimeout`` when none arrives in time.
        """
        self._tool(tool)
        event = self.events.take(tool, as_term(pattern), uuid.uuid4().hex, lease, timeout)
        if event is None:
            raise ToolTimeout(f"tool {tool}: no event matching {pattern} within {timeout:g} s")
        return event

    def ack(self, event: Event, result: ATerm | str) -> None:
        """Acknowledge ``event``; returns once the ack is queued for the instance that emitted it.

        Raises ``TransactionError`` when that instance has been recycled or has crashed.
        """
        result = as_term(result)
        signatures = self._tool(event.tool).signatures
        signatures.check_ack(signatures.check_event(event.term), result)
        self.events.ack(event, result)


class _Runner:
    """Whether the worker process running a call has died without anyone reporting it.

    Celery's STARTED state names the worker and the pid running the call; that process's key on the
    event channel is kept alive while it lives, by the process and by its worker's main process
    (``worker.ownership``). The call is lost once the key was seen and is then missing twice in a
    row, ``WATCH_SECS`` apart (a Redis that restarted empty gets the key back within a second), and
    the worker, asked through the broker (Celery's ``stats``), does not name the process among its
    own: its keys may only be missing because it cannot reach Redis (a worker restarted under the
    same name answers with other pids). A process never seen alive (a worker of an older version, or
    the state not readable) is never declared lost: the caller waits for its timeout.
    """

    #: Seconds the worker of a call gets to say whether the process running it is still its own.
    ASK_SECS = 1.0

    def __init__(self, events: EventChannel, result, app: Celery):
        self.events = events
        self.result = result
        self.app = app
        # Reading a task's state is a plain read from a key-value backend (Redis); from the rpc://
        # backend it would consume the reply messages, the call's value among them.
        self.readable = isinstance(result.backend, BaseKeyValueStoreBackend)
        self.worker: str | None = None
        self.pid: int | None = None
        self.seen_alive = False
        self.missing = 0

    def lost(self) -> bool:
        if not self.readable:
            return False
        try:
            meta = self.result.backend.get_task_meta(self.result.id, cache=False)
            started = meta.get("status") == "STARTED" and isinstance(meta.get("result"), dict)
            if started:
                self.worker, self.pid = meta["result"].get("hostname"), meta["result"].get("pid")
            if not (started and self.worker and self.pid):
                self.missing = 0
                return False
            alive = self.events.is_process_alive(self.worker, self.pid)
        except Exception:
            return False  # the broker or Redis is unreachable: the wait itself will tell
        if alive:
            self.seen_alive, self.missing = True, 0
            return False
        if self.seen_alive:
            self.missing += 1
        if self.missing < 2:
            return False
        try:
            if self.result.ready():  # a process that ended normally stored the value first
                return False
        except Exception:
            return False
        if self._still_running():
            self.missing = 0
            return False
        return True

    def _still_running(self) -> bool:
        """True when the worker answers and names the process among its own (its main process or a
        pool child); a worker restarted under the same name has other pids."""
        if self.app is None:
            return False
        try:
            replies = self.app.control.inspect(
                destination=[self.worker], timeout=self.ASK_SECS, limit=1
            ).stats()
        except Exception:
            return True  # the broker is unreachable: nothing is known, so nothing is declared
        stats = (replies or {}).get(self.worker) or {}
        pool = stats.get("pool") or {}
        return self.pid == stats.get("pid") or self.pid in (pool.get("processes") or [])
