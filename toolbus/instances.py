"""Tool instances: the engine behind one running tool, whatever its kind.

``ToolInstance`` owns the transactions, the queue of requests, the event offer and the generations
of the running tool; its kinds only say how a tool is started, stopped and spoken to:
``InternalTool`` (``toolbus.internal``, a Python object in this process) and ``ExternalTool``
(``toolbus.external``, any executable speaking the wire protocol).

The life of a tool instance, in phases:

1. **Start.** ``start_tool`` builds the instance and starts the tool: an internal tool is
   constructed (``Class()`` or ``Class(bus)``); an external one is launched with the ``-TB_*``
   arguments, connects back over loopback TCP, says ``snd-connect`` and accepts the signature.
2. **Requests.** Each eval or do is checked against the signatures, queued, and delivered when the
   tool is free: a tool serves one request at a time. Values wait under their transaction id until
   a ``get_value_from_tool`` takes them.
3. **Events.** Events are checked, then offered in arrival order; only the earliest unacknowledged
   event of each symbol is offered, later ones are held back until it is acked.
4. **Restart.** After ``restart_frequency`` requests the tool is replaced before the next request
   is delivered. A tool that dies fails its pending eval at once (``ToolCrashed``); one that
   overruns a timeout is killed (``ToolTimeout``). Either way the next request gets a fresh tool
   (a tool that declares events is restarted at once). Events of a replaced tool leave the offer.
5. **Terminate.** ``terminate`` stops the tool for good (``rec-terminate``, a short grace period,
   then kill) and returns once it has exited.

External tools never outlive their owner (``toolbus.processes``): each runs in its own process
group, which is killed on every stop and at interpreter exit, and on Linux the kernel kills it when
its parent dies.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from toolbus import wire
from toolbus.aterm import ATerm, Environment, as_term, parse
from toolbus.descriptors import ToolDescriptor
from toolbus.errors import SignatureError, ToolBusError, ToolCrashed, ToolTimeout, TransactionError, brief
from toolbus.signatures import Signature

log = logging.getLogger("toolbus.instances")

_tool_ids = itertools.count(1)
#: Finished transaction ids remembered to reject their reuse (oldest forgotten first).
FINISHED_MEMORY = 100_000


@dataclass(eq=False)
class Transaction:
    """One eval, do or event under its transaction id; the kinds of tool receive the requests."""

    id: Any
    kind: str  # "eval", "do" or "event"
    call: ATerm | None = None
    signature: Signature | None = None
    deadline: float | None = None
    state: str = "queued"  # queued -> sent -> done
    value: ATerm | None = None
    error: BaseException | None = None
    offer: _Offer | None = None


@dataclass(eq=False)
class _Offer:
    term: ATerm  # exactly as the tool sent it
    signature: Signature
    generation: int
    tool_id: int | None  # the running tool that emitted it
    taken_by: Any = None


class ToolInstance:
    """One running tool: the six operations of the ToolBus/tool interface, plus ``eval``/``do``.

    Thread-safe: every operation holds the instance's lock.
    """

    def __init__(self, descriptor: ToolDescriptor):
        self.descriptor = descriptor
        self.name = descriptor.name
        self.signatures = descriptor.signatures
        self.tool_id: int | None = None  # id of the running tool; a new one on every start
        self.requests = 0  # requests delivered to the running tool
        self.starts = 0  # tools started so far
        self._cond = threading.Condition(threading.RLock())
        self._transactions: dict[Any, Transaction] = {}
        self._finished: OrderedDict[Any, None] = OrderedDict()
        self._outbox: deque[Transaction] = deque()
        self._current: Transaction | None = None
        self._generation = 0
        self._alive = False
        self._terminated = False
        self._offers: list[_Offer] = []
        self._gate: wire.EventGate[tuple[ATerm, Signature]] = wire.EventGate()
        self._event_errors: deque[SignatureError] = deque()

    def __repr__(self) -> str:
        state = "terminated" if self._terminated else "running" if self._alive else "stopped"
        return f"<{type(self).__name__} {self.name} id={self.tool_id} {state} requests={self.requests}>"

    # ---- the six operations ----------------------------------------------------------------------

    def snd_eval_to_tool(self, id: Any, call: ATerm | str, timeout: float | None = None) -> None:
        """Send an eval under transaction ``id``; its value is taken with ``get_value_from_tool``."""
        call = as_term(call)
        sig = self.signatures.check_eval(call)
        self._submit(Transaction(id, "eval", call, sig, _deadline(timeout)))

    def get_value_from_tool(self, id: Any, pattern: ATerm | str, env: Environment) -> bool:
        """True (and ``env`` bound) once the value for ``id`` has arrived and matches ``pattern``.

        Raises the call's error (``ToolCrashed``, ``ToolTimeout``, ``ToolError``, ``SignatureError``)
        when it failed.
        """
        with self._cond:
            txn = self._transaction(id, "eval")
            self._pump()
            self._check_deadline(txn)
            if txn.state != "done":
                return False
            if txn.error is not None:
                self._finish(txn)
                raise txn.error
            if env.match(pattern, txn.value):
                self._finish(txn)
                return True
            return False

    def snd_do_to_tool(self, id: Any, call: ATerm | str) -> None:
        """Send a do under transaction ``id`` (no value; the id is finished when the tool is done)."""
        call = as_term(call)
        sig = self.signatures.check_do(call)
        self._submit(Transaction(id, "do", call, sig, None))

    def get_event_from_tool(self, id: Any, pattern: ATerm | str, env: Environment) -> bool:
        """Take the earliest offered event matching ``pattern``; transaction ``id`` now owns it.

        An event that fitted no event signature is reported here once, as a ``SignatureError``.
        """
        with self._cond:
            self._pump()
            if self._event_errors:
                raise self._event_errors.popleft()
            self._check_new_id(id)
            for offer in self._offers:
                if offer.taken_by is None and env.match(pattern, offer.term):
                    offer.taken_by = id
                    self._transactions[id] = Transaction(id, "event", offer=offer, state="done")
                    return True
            return False

    def snd_ack_to_tool(self, id: Any, result: ATerm | str) -> None:
        """Acknowledge the event taken under ``id``; the next held event of its symbol is offered."""
        result = as_term(result)
        with self._cond:
            txn = self._transaction(id, "event")
            offer = txn.offer
            self.signatures.check_ack(offer.signature, result)
            self._finish(txn)
            if offer in self._offers:
                self._offers.remove(offer)
            if offer.generation != self._generation or not self._alive:
                raise TransactionError(
                    f"tool {self.name} was restarted since it emitted {offer.term}; the ack cannot be delivered"
                )
            try:
                self._send_ack(offer.term, result)
            finally:
                self._release(offer.term)  # the ack was given: even a failing receiver frees the symbol

    def terminate(self, id: Any = None, msg: str = "") -> None:
        """Stop the tool for good; returns once it has exited (killed after a short grace period)."""
        with self._cond:
            if self._terminated:
                return
            self._terminated = True
            log.info("tool %s: terminate (%s) %s", self.name, id, msg)
            self._stop_tool(msg or "terminate", graceful=True)
            error = ToolCrashed(f"tool {self.name} was terminated before it answered")
            for txn in [self._current, *self._outbox]:
                if txn is not None and txn.state != "done":
                    self._complete(txn, error=error)
            self._outbox.clear()
            self._cond.notify_all()

    # ---- conveniences ------------------------------------------------------------------------------

    def eval(self, call: ATerm | str, timeout: float | None = None) -> ATerm:
        """Send an eval, wait for its value and return it (raises the call's error)."""
        id = object()
        self.snd_eval_to_tool(id, call, timeout)
        env = Environment()
        with self._cond:
            self._wait(self._transactions[id])
            self.get_value_from_tool(id, _VALUE, env)
        return env["V"]

    def do(self, call: ATerm | str, wait: bool = False, timeout: float | None = None) -> None:
        """Send a do under a fresh transaction id.

        With ``wait``, return once the tool has done it, raising its error (the Celery task of a do
        waits, so that a failed do shows as a failed task and recycling counts it).
        """
        call = as_term(call)
        txn = Transaction(object(), "do", call, self.signatures.check_do(call), _deadline(timeout))
        self._submit(txn)
        if wait:
            self._wait(txn)
            if txn.error is not None:
                raise txn.error

    def _wait(self, txn: Transaction) -> None:
        """Deliver queued requests and wait until ``txn`` is answered (or times out)."""
        with self._cond:
            while True:
                self._pump()
                self._check_deadline(txn)
                if txn.state == "done":
                    return
                self._cond.wait(None if txn.deadline is None else max(0.0, txn.deadline - time.monotonic()))

    def wait_for_event(
        self, pattern: ATerm | str, timeout: float | None = None, id: Any = None
    ) -> tuple[Any, Environment] | None:
        """Wait until an event matching ``pattern`` is offered; take it under ``id`` (a fresh one by
        default). Returns (id, env), or None after ``timeout``."""
        deadline = _deadline(timeout)
        id = object() if id is None else id
        with self._cond:
            while True:
                env = Environment()
                if self.get_event_from_tool(id, pattern, env):
                    return id, env
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)

    @property
    def alive(self) -> bool:
        return self._alive

    def emitter_of(self, id: Any) -> int | None:
        """The ``tool_id`` of the running tool that emitted the event taken under ``id``.

        The tool may have been replaced since it was taken: whoever passes the event on (the worker's
        event channel) must name the tool that can receive its ack, not the one running now.
        """
        with self._cond:
            return self._transaction(id, "event").offer.tool_id

    @property
    def offered_events(self) -> list[ATerm]:
        """Events offered and not yet taken, in arrival order."""
        with self._cond:
            return [o.term for o in self._offers if o.taken_by is None]

    # ---- bookkeeping -------------------------------------------------------------------------------

    def _check_new_id(self, id: Any) -> None:
        if self._terminated:
            raise ToolBusError(f"tool {self.name} was terminated")
        if id in self._transactions:
            raise TransactionError(f"tool {self.name}: transaction {id!r} is still in use")
        if id in self._finished:
            raise TransactionError(f"tool {self.name}: transaction {id!r} is already finished")

    def _transaction(self, id: Any, kind: str) -> Transaction:
        txn = self._transactions.get(id)
        if txn is None:
            if id in self._finished:
                raise TransactionError(f"tool {self.name}: transaction {id!r} is already finished")
            raise TransactionError(f"tool {self.name}: unknown transaction {id!r}")
        if txn.kind != kind:
            raise TransactionError(f"tool {self.name}: transaction {id!r} is an {txn.kind}, not an {kind}")
        return txn

    def _finish(self, txn: Transaction) -> None:
        self._transactions.pop(txn.id, None)
        self._finished[txn.id] = None
        if len(self._finished) > FINISHED_MEMORY:
            self._finished.popitem(last=False)

    def _submit(self, txn: Transaction) -> None:
        with self._cond:
            self._check_new_id(txn.id)
            self._transactions[txn.id] = txn
            self._outbox.append(txn)
            self._pump()

    def _pump(self) -> None:
        """Deliver queued requests while the tool is free (lock held)."""
        while self._current is None and self._outbox and not self._terminated:
            txn = self._outbox.popleft()
            if txn.deadline is not None and time.monotonic() >= txn.deadline:
                self._expire(txn)
                continue
            try:
                restart = self.descriptor.restart_frequency
                if self._alive and restart and self.requests >= restart:
                    log.info("tool %s: restart after %d requests", self.name, self.requests)
                    self._stop_tool("restart", graceful=True)
                if self._alive and self._leaving():
                    # It said snd-disconnect while idle and its I/O thread has not reported yet:
                    # the request goes to a fresh tool rather than failing with the old one.
                    log.warning("tool %s left; starting a fresh one", self.name)
                    self._stop_tool("left", graceful=False)
                if not self._alive:
                    self._start_tool()
            except ToolCrashed as e:
                self._complete(txn, error=e)
                continue
            self._current = txn
            txn.state = "sent"
            self.requests += 1
            try:
                self._deliver(txn, self._generation)
            except SignatureError as e:
                # The call has no wire form (wire.frame): nothing was sent, and the tool is still
                # free for the next request. Left as the current request, it would block them all.
                if self._current is txn:
                    self.requests -= 1
                    self._complete(txn, error=e)

    def _complete(
        self, txn: Transaction, value: ATerm | None = None, error: BaseException | None = None
    ) -> None:
        """A request is answered (lock held)."""
        txn.state = "done"
        txn.value = value
        txn.error = error
        if self._current is txn:
            self._current = None
        if txn.kind == "do":
            self._finish(txn)
            if error is not None:
                log.error("tool %s: do %s failed: %s", self.name, txn.call, error)
        self._cond.notify_all()

    def _answer(
        self, generation: int, value: ATerm | None = None, error: BaseException | None = None
    ) -> None:
        """The running tool answered its current request (value for an eval, None for a do)."""
        with self._cond:
            txn = self._current
            if generation != self._generation or txn is None:
                return  # a replaced tool's late answer
            if txn.kind == "eval" and error is None:
                try:
                    self.signatures.check_value(txn.signature, value)
                except SignatureError as e:
                    value, error = None, e
            self._complete(txn, value, error)

    def _check_deadline(self, txn: Transaction) -> None:
        if txn.deadline is None or txn.state == "done" or time.monotonic() < txn.deadline:
            return
        if txn is self._current:
            log.warning("tool %s: %s overran its timeout; killing the tool", self.name, brief(txn.call))
            self._stop_tool("timeout", graceful=False)
            self._complete(
                txn,
                error=ToolTimeout(
                    f"tool {self.name}: no value for {brief(txn.call)} within the timeout; the tool was replaced"
                ),
            )
            self._restart_for_events()
        else:
            self._outbox.remove(txn)
            self._expire(txn)

    def _expire(self, txn: Transaction) -> None:
        """A request still queued at its deadline fails without ever being sent (lock held)."""
        self._complete(
            txn, error=ToolTimeout(f"tool {self.name}: {brief(txn.call)} timed out before it was sent")
        )

    # ---- events ------------------------------------------------------------------------------------

    def _event(self, generation: int, event: ATerm) -> None:
        """The tool emitted an event."""
        with self._cond:
            if generation != self._generation:
                return
            try:
                sig = self.signatures.check_event(event)
            except SignatureError as e:
                log.error("%s", e)
                self._event_errors.append(e)
                self._cond.notify_all()
                return
            if not self._gate.admit(event, (event, sig)):
                log.debug("tool %s: event %s held back until the previous one is acked", self.name, event)
                return
            self._offers.append(_Offer(event, sig, generation, self.tool_id))
            self._cond.notify_all()

    def _release(self, acked: ATerm) -> None:
        """An event was acked: the next one held back behind it, if any, is offered."""
        held = self._gate.acknowledged(acked)
        if held is not None:
            event, sig = held
            self._offers.append(_Offer(event, sig, self._generation, self.tool_id))
            self._cond.notify_all()

    def _new_generation(self) -> None:
        """The tool was replaced: its untaken events leave the offer, held ones are dropped."""
        self._generation += 1
        self._offers = [o for o in self._offers if o.taken_by is not None]
        self._gate.clear()

    # ---- start, stop, crash ------------------------------------------------------------------------

    def _start_tool(self) -> None:
        self._new_generation()
        self.tool_id = next(_tool_ids)
        self.requests = 0
        self.starts += 1
        self._launch(self._generation)
        self._alive = True

    def _stop_tool(self, msg: str, graceful: bool) -> None:
        if self._alive:
            self._alive = False
            self._shutdown(msg, graceful)
        self._new_generation()

    def _crashed(self, generation: int, error: ToolCrashed) -> None:
        """The tool died by itself (called from its I/O thread)."""
        with self._cond:
            if generation != self._generation or not self._alive:
                return
            log.error("%s", error)
            self._alive = False
            self._new_generation()
            if self._current is not None:
                self._complete(self._current, error=error)
            self._restart_for_events()

    def _restart_for_events(self) -> None:
        """A tool that declares events is restarted at once, so that it can emit them again."""
        if self.signatures.events and not self._terminated:
            threading.Thread(
                target=self._ensure_started, name=f"toolbus-restart-{self.name}", daemon=True
            ).start()

    def _ensure_started(self) -> None:
        with self._cond:
            if not self._alive and not self._terminated:
                try:
                    self._start_tool()
                except ToolCrashed as e:
                    log.error("%s", e)

    # ---- what each kind of tool does ---------------------------------------------------------------

    def _leaving(self) -> bool:
        """True when the running tool can take no request although it has not been reported gone."""
        return False

    def _launch(self, generation: int) -> None:
        raise NotImplementedError

    def _shutdown(self, msg: str, graceful: bool) -> None:
        raise NotImplementedError

    def _deliver(self, txn: Transaction, generation: int) -> None:
        raise NotImplementedError

    def _send_ack(self, event: ATerm, result: ATerm) -> None:
        raise NotImplementedError


_VALUE = parse("V?")


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def start_tool(descriptor: ToolDescriptor) -> ToolInstance:
    """Start the tool a descriptor declares: an ``InternalTool`` or an ``ExternalTool``.

    The tool is started now, so a tool that cannot start fails here (``ToolCrashed``).
    """
    # The kinds of tool are built on this module, so they are imported here, not at its top.
    from toolbus.external import ExternalTool
    from toolbus.internal import InternalTool

    instance = InternalTool(descriptor) if descriptor.internal else ExternalTool(descriptor)
    with instance._cond:
        instance._start_tool()
    return instance


__all__ = ["ToolInstance", "Transaction", "start_tool"]
