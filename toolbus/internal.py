"""Internal tools: a Python object inside this process, called by reflection.

The object is built as ``Class()``, or ``Class(bus)`` when its constructor takes one argument:
``bus.emit(event)`` sends an event, and the ack arrives as a call of its ``rec_ack_event(event,
result)`` when it has one. Arguments and results convert by signature type (``toolbus.signatures``).
Everything else -- transactions, the event offer, restarts -- is the engine's (``toolbus.instances``).
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from toolbus.aterm import ATerm, as_term
from toolbus.descriptors import ToolDescriptor, takes_bus
from toolbus.errors import SignatureError, ToolCrashed, ToolError, brief
from toolbus.instances import ToolInstance, Transaction
from toolbus.signatures import from_python, to_python

# Tool instances of every kind log under one name, so that a filter on it sees their whole life.
log = logging.getLogger("toolbus.instances")


class _BusHandle:
    """What an internal tool gets as ``bus``: ``bus.emit(event)`` sends an event."""

    def __init__(self, instance: ToolInstance, generation: int):
        self._instance = instance
        self._generation = generation

    def emit(self, event: ATerm | str | Any) -> None:
        self._instance._event(self._generation, as_term(event))


class InternalTool(ToolInstance):
    """A Python object inside this process, called by reflection.

    A call runs in the caller's thread; with a timeout it runs on the tool's call thread, so that an
    overrunning call can be abandoned: the object and its call thread are discarded (the thread is
    left to finish on its own) and a fresh object with a fresh thread serves the next call. One
    long-lived thread rather than one per call: starting a thread costs more than a whole call.
    """

    def __init__(self, descriptor: ToolDescriptor):
        super().__init__(descriptor)
        self._class = descriptor.tool_class()
        self._object: Any = None
        self._calls: queue.SimpleQueue | None = None  # jobs of the current call thread

    def _launch(self, generation: int) -> None:
        try:
            handle = _BusHandle(self, generation)
            self._object = self._class(handle) if takes_bus(self._class) else self._class()
        except Exception as e:
            raise ToolCrashed(
                f"tool {self.name}: {self.descriptor.tool_name}() failed: {type(e).__name__}: {e}"
            ) from e

    def _shutdown(self, msg: str, graceful: bool) -> None:
        obj, self._object = self._object, None
        calls, self._calls = self._calls, None
        if calls is not None:
            calls.put(None)  # the call thread ends after its current call, if it ever returns
        stop = getattr(obj, "rec_terminate", None)
        if graceful and callable(stop):
            try:
                stop(msg)
            except Exception:
                log.exception("tool %s: rec_terminate failed", self.name)

    def _deliver(self, txn: Transaction, generation: int) -> None:
        obj = self._object
        if txn.deadline is None:
            self._invoke(obj, txn, generation)
            return
        if self._calls is None:
            self._calls = queue.SimpleQueue()
            threading.Thread(
                target=self._call_thread, args=(self._calls,), name=f"toolbus-{self.name}", daemon=True
            ).start()
        self._calls.put((obj, txn, generation))

    def _call_thread(self, calls: queue.SimpleQueue) -> None:
        while (job := calls.get()) is not None:
            self._invoke(*job)

    def _invoke(self, obj: Any, txn: Transaction, generation: int) -> None:
        sig = txn.signature
        call = txn.call
        try:
            args = [to_python(a, t) for a, t in zip(call.args, sig.pattern.args)]
            result = getattr(obj, sig.method_name)(*args)
        except Exception as e:
            error = ToolError(f"tool {self.name}: {brief(call)} raised {type(e).__name__}: {brief(e)}")
            self._answer(generation, error=error)
            return
        if txn.kind != "eval":
            self._answer(generation)
            return
        try:
            value = from_python(result, sig.result)
        except (TypeError, ValueError):
            # A result with no ATerm form (None, an object) is a value of the wrong type, like any other.
            error = SignatureError(
                f"tool {self.name}: {brief(call)} returned {brief(repr(result))}, which is not of the result type "
                f"{sig.result}; signature: {sig.text}"
            )
            self._answer(generation, error=error)
        else:
            self._answer(generation, value)

    def _send_ack(self, event: ATerm, result: ATerm) -> None:
        receive = getattr(self._object, "rec_ack_event", None)
        if callable(receive):
            try:
                receive(event, result)
            except Exception as e:
                raise ToolError(
                    f"tool {self.name}: rec_ack_event({event}, {result}) raised {type(e).__name__}: {e}"
                ) from e
