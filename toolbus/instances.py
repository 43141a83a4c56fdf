"""Tool instances: one running tool, inside this process (``InternalTool``) or outside it
(``ExternalTool``, any executable speaking the wire protocol).

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

External tools never outlive their owner: each runs in its own process group, which is killed on
every stop and at interpreter exit, and on Linux the kernel kills it when its parent dies.
"""

from __future__ import annotations

import atexit
import ctypes
import itertools
import logging
import os
import queue
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from toolbus import wire
from toolbus.aterm import ATerm, ATermAppl, Environment, parse, term
from toolbus.descriptors import ToolDescriptor, takes_bus
from toolbus.errors import (
    ProtocolError,
    SignatureError,
    ToolBusError,
    ToolCrashed,
    ToolError,
    ToolTimeout,
    TransactionError,
)
from toolbus.signatures import Signature, from_python, to_python

log = logging.getLogger("toolbus.instances")

_tool_ids = itertools.count(1)
#: How long a stopping tool gets between rec-terminate and the kill.
GRACE_PERIOD = 1.0
#: How long an external tool may take to connect and accept its signature.
START_TIMEOUT = 15.0
#: Lines of a tool's stderr kept for crash reports.
STDERR_TAIL_LINES = 20
#: Finished transaction ids remembered to reject their reuse (oldest forgotten first).
FINISHED_MEMORY = 100_000


@dataclass(eq=False)
class _Transaction:
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
    symbol: tuple
    tool_id: int | None  # the running tool that emitted it
    taken_by: Any = None


def _symbol(t: ATerm) -> tuple:
    if isinstance(t, ATermAppl):
        return (t.name, len(t.args), t.quoted)
    return (str(t), 0, False)


def _as_term(value: ATerm | str) -> ATerm:
    return parse(value) if isinstance(value, str) else term(value)


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
        self._transactions: dict[Any, _Transaction] = {}
        self._finished: OrderedDict[Any, None] = OrderedDict()
        self._outbox: deque[_Transaction] = deque()
        self._current: _Transaction | None = None
        self._generation = 0
        self._alive = False
        self._terminated = False
        self._offers: list[_Offer] = []
        self._held: dict[tuple, deque[tuple[ATerm, Signature]]] = {}
        self._unacked: set[tuple] = set()
        self._event_errors: deque[SignatureError] = deque()

    def __repr__(self) -> str:
        state = "terminated" if self._terminated else "running" if self._alive else "stopped"
        return f"<{type(self).__name__} {self.name} id={self.tool_id} {state} requests={self.requests}>"

    # ---- the six operations ----------------------------------------------------------------------

    def snd_eval_to_tool(self, id: Any, call: ATerm | str, timeout: float | None = None) -> None:
        """Send an eval under transaction ``id``; its value is taken with ``get_value_from_tool``."""
        call = _as_term(call)
        sig = self.signatures.check_eval(call)
        self._submit(_Transaction(id, "eval", call, sig, _deadline(timeout)))

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
        call = _as_term(call)
        sig = self.signatures.check_do(call)
        self._submit(_Transaction(id, "do", call, sig, None))

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
                    self._transactions[id] = _Transaction(id, "event", offer=offer, state="done")
                    return True
            return False

    def snd_ack_to_tool(self, id: Any, result: ATerm | str) -> None:
        """Acknowledge the event taken under ``id``; the next held event of its symbol is offered."""
        result = _as_term(result)
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
                self._release(offer.symbol)  # the ack was given: even a failing receiver frees the symbol

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
        call = _as_term(call)
        txn = _Transaction(object(), "do", call, self.signatures.check_do(call), _deadline(timeout))
        self._submit(txn)
        if wait:
            self._wait(txn)
            if txn.error is not None:
                raise txn.error

    def _wait(self, txn: _Transaction) -> None:
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

    def _transaction(self, id: Any, kind: str) -> _Transaction:
        txn = self._transactions.get(id)
        if txn is None:
            if id in self._finished:
                raise TransactionError(f"tool {self.name}: transaction {id!r} is already finished")
            raise TransactionError(f"tool {self.name}: unknown transaction {id!r}")
        if txn.kind != kind:
            raise TransactionError(f"tool {self.name}: transaction {id!r} is an {txn.kind}, not an {kind}")
        return txn

    def _finish(self, txn: _Transaction) -> None:
        self._transactions.pop(txn.id, None)
        self._finished[txn.id] = None
        if len(self._finished) > FINISHED_MEMORY:
            self._finished.popitem(last=False)

    def _submit(self, txn: _Transaction) -> None:
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
                self._complete(
                    txn, error=ToolTimeout(f"tool {self.name}: {txn.call} timed out before it was sent")
                )
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
        self, txn: _Transaction, value: ATerm | None = None, error: BaseException | None = None
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

    def _check_deadline(self, txn: _Transaction) -> None:
        if txn.deadline is None or txn.state == "done" or time.monotonic() < txn.deadline:
            return
        if txn is self._current:
            log.warning("tool %s: %s overran its timeout; killing the tool", self.name, txn.call)
            self._stop_tool("timeout", graceful=False)
            self._complete(
                txn,
                error=ToolTimeout(
                    f"tool {self.name}: no value for {txn.call} within the timeout; the tool was replaced"
                ),
            )
            self._restart_for_events()
        else:
            self._outbox.remove(txn)
            self._complete(
                txn, error=ToolTimeout(f"tool {self.name}: {txn.call} timed out before it was sent")
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
            symbol = _symbol(event)
            if symbol in self._unacked:
                log.debug("tool %s: event %s held back until the previous one is acked", self.name, event)
                self._held.setdefault(symbol, deque()).append((event, sig))
                return
            self._unacked.add(symbol)
            self._offers.append(_Offer(event, sig, generation, symbol, self.tool_id))
            self._cond.notify_all()

    def _release(self, symbol: tuple) -> None:
        self._unacked.discard(symbol)
        held = self._held.get(symbol)
        if held:
            event, sig = held.popleft()
            self._unacked.add(symbol)
            self._offers.append(_Offer(event, sig, self._generation, symbol, self.tool_id))
            self._cond.notify_all()

    def _new_generation(self) -> None:
        """The tool was replaced: its untaken events leave the offer, held ones are dropped."""
        self._generation += 1
        self._offers = [o for o in self._offers if o.taken_by is not None]
        self._held.clear()
        self._unacked.clear()

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

    def _deliver(self, txn: _Transaction, generation: int) -> None:
        raise NotImplementedError

    def _send_ack(self, event: ATerm, result: ATerm) -> None:
        raise NotImplementedError


_VALUE = parse("V?")


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


# --------------------------------------------------------------------------------------------------
# Internal tools


class _BusHandle:
    """What an internal tool gets as ``bus``: ``bus.emit(event)`` sends an event."""

    def __init__(self, instance: ToolInstance, generation: int):
        self._instance = instance
        self._generation = generation

    def emit(self, event: ATerm | str | Any) -> None:
        self._instance._event(self._generation, _as_term(event))


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

    def _deliver(self, txn: _Transaction, generation: int) -> None:
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

    def _invoke(self, obj: Any, txn: _Transaction, generation: int) -> None:
        sig = txn.signature
        call = txn.call
        try:
            args = [to_python(a, t) for a, t in zip(call.args, sig.pattern.args)]
            result = getattr(obj, sig.method_name)(*args)
        except Exception as e:
            error = ToolError(f"tool {self.name}: {call} raised {type(e).__name__}: {e}")
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
                f"tool {self.name}: {call} returned {result!r}, which is not of the result type "
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


# --------------------------------------------------------------------------------------------------
# External tools


class ExternalTool(ToolInstance):
    """An executable in any language, speaking the wire protocol over loopback TCP.

    One I/O thread per running tool reads its socket, stdout and stderr.
    """

    def __init__(self, descriptor: ToolDescriptor):
        super().__init__(descriptor)
        self._process: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._conn: wire.BusSide | None = None
        # Callers send while the I/O thread reads, and wire.BusSide is not thread-safe: its state
        # table is guarded by _state_lock (held briefly, never while blocked on the socket), and
        # _send_lock keeps the bytes of concurrent sends in the order of their state changes.
        self._state_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._io_thread: threading.Thread | None = None
        self._stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    # ---- start -------------------------------------------------------------------------------------

    def _launch(self, generation: int) -> None:
        self._stderr_tail = deque(maxlen=STDERR_TAIL_LINES)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            port = listener.getsockname()[1]
            argv = self.descriptor.command + [
                "-TB_HOST", "127.0.0.1", "-TB_PORT", str(port),
                "-TB_TOOL_NAME", self.name, "-TB_TOOL_ID", str(self.tool_id),
            ]  # fmt: skip
            try:
                process = _spawn(argv, str(self.descriptor.base_dir))
            except OSError as e:
                raise ToolCrashed(f"tool {self.name}: cannot start {argv[0]!r}: {e.strerror or e}") from None
            self._process = process
            self._sock = None
            try:
                sock = self._accept(listener, process)
                self._handshake(sock)
            except ToolCrashed:
                _kill_group(process)
                if self._sock is not None:
                    self._sock.close()
                _close_pipes(process)
                raise
        finally:
            listener.close()
        self._io_thread = threading.Thread(
            target=self._io_loop, args=(generation, process, self._sock, self._conn, self._stderr_tail),
            name=f"toolbus-io-{self.name}-{self.tool_id}", daemon=True,
        )  # fmt: skip
        self._io_thread.start()

    def _start_failure(
        self, process: subprocess.Popen, what: str, error_class: type[ToolCrashed] = ToolCrashed
    ) -> ToolCrashed:
        """The error for a tool that did not start; the tool and its children are gone by then."""
        status = _reap(process, broke_protocol=error_class is ProtocolError)
        tail = _drain_nowait(process)
        return error_class(
            f"tool {self.name} {what}; {_status_text(status)}" + (f"; stderr:\n{tail}" if tail else ""),
            status,
            tail,
        )

    def _accept(self, listener: socket.socket, process: subprocess.Popen) -> socket.socket:
        deadline = time.monotonic() + START_TIMEOUT
        listener.settimeout(0.05)
        while True:
            try:
                sock, _ = listener.accept()
                break
            except TimeoutError:
                if process.poll() is not None:
                    raise self._start_failure(process, "exited before connecting") from None
                if time.monotonic() > deadline:
                    raise self._start_failure(
                        process, f"did not connect within {START_TIMEOUT:g} s"
                    ) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        return sock

    def _handshake(self, sock: socket.socket) -> None:
        conn = wire.BusSide(self.name)
        self._conn = conn
        sock.settimeout(START_TIMEOUT)
        try:
            message = self._read_message(sock, conn)
            if (
                not isinstance(message, wire.Connect)
                or message.tool_name != self.name
                or message.tool_id != self.tool_id
            ):
                raise ProtocolError(
                    f"it introduced itself as {message}; expected snd-connect({self.name},{self.tool_id})"
                )
            sigs = self.signatures
            inputs = tuple(ATermAppl("rec-eval", [s.pattern]) for s in sigs.evals) + tuple(
                ATermAppl("rec-do", [s.pattern]) for s in sigs.dos
            )
            outputs = tuple(ATermAppl("snd-event", [s.pattern]) for s in sigs.events)
            sock.sendall(conn.send(wire.Signature(inputs, outputs)))
            message = self._read_message(sock, conn)
            if isinstance(message, wire.Disconnect):
                raise self._start_failure(self._process, "refused its signature (disconnected)")
        except ProtocolError as e:
            raise self._start_failure(
                self._process,
                f"broke the wire protocol during the handshake: {self._unnamed(e)}",
                ProtocolError,
            ) from None
        except TimeoutError:
            raise self._start_failure(
                self._process, f"did not finish the handshake within {START_TIMEOUT:g} s"
            ) from None
        except OSError as e:
            raise self._start_failure(
                self._process, f"lost the connection during the handshake ({e})"
            ) from None
        sock.settimeout(None)

    def _unnamed(self, error: ProtocolError) -> str:
        """The text of a wire error without the leading "tool NAME", which the caller says first."""
        return str(error).removeprefix(f"tool {self.name} ")

    def _read_message(self, sock: socket.socket, conn: wire.BusSide) -> wire.Message:
        while True:
            message = conn.next_message()
            if message is not None:
                return message
            conn.receive_data(sock.recv(65536))

    # ---- running -----------------------------------------------------------------------------------

    def _leaving(self) -> bool:
        with self._state_lock:
            return self._conn is not None and self._conn.state in (
                wire.ToolState.CLOSING,
                wire.ToolState.CLOSED,
            )

    def _deliver(self, txn: _Transaction, generation: int) -> None:
        message = wire.Eval(txn.call) if txn.kind == "eval" else wire.Do(txn.call)
        self._send(message)

    def _send_ack(self, event: ATerm, result: ATerm) -> None:
        self._send(wire.Ack(event, result))

    def _send(self, message: wire.Message) -> None:
        with self._send_lock:
            try:
                with self._state_lock:
                    data = self._conn.send(message)
                self._sock.sendall(data)
            except (OSError, ProtocolError) as e:
                # The tool is gone or going (its connection closed, or it said snd-disconnect):
                # its I/O thread reports the crash with the exit status.
                log.debug("tool %s: cannot send %s: %s", self.name, type(message).__name__, e)

    def _dispatch(self, generation: int, conn: wire.BusSide) -> ToolCrashed | None:
        """Hand every whole message received so far to the instance.

        Returns the problem that ends the connection, if there is one.
        """
        while True:
            try:
                with self._state_lock:
                    message = conn.next_message()
            except ProtocolError as e:
                return ProtocolError(f"tool {self.name} broke the wire protocol: {self._unnamed(e)}")
            if message is None:
                return None
            if isinstance(message, wire.Value):
                self._answer(generation, message.value)
            elif isinstance(message, wire.Void):
                self._answer(generation)
            elif isinstance(message, wire.Event):
                self._event(generation, message.event)
            elif isinstance(message, wire.Disconnect):
                return ToolCrashed(f"tool {self.name} disconnected")

    def _io_loop(self, generation: int, process: subprocess.Popen, sock: socket.socket,
                 conn: wire.BusSide, tail: deque[str]) -> None:  # fmt: skip
        """Read the tool's socket, stdout and stderr until the connection ends; then report."""
        tool_log = logging.getLogger(f"toolbus.tool.{self.name}")
        sel = selectors.DefaultSelector()
        sel.register(sock, selectors.EVENT_READ, "sock")
        for stream, kind in ((process.stdout, "stdout"), (process.stderr, "stderr")):
            os.set_blocking(stream.fileno(), False)
            sel.register(stream, selectors.EVENT_READ, kind)
        partial = {"stdout": b"", "stderr": b""}
        try:
            # What the tool sent right after its handshake may have arrived with the handshake's
            # answer: it is buffered already, and no socket readiness will announce it.
            problem = self._dispatch(generation, conn)
            while problem is None:
                for key, _ in sel.select():
                    kind = key.data
                    if kind == "sock":
                        try:
                            data = sock.recv(262144)
                        except OSError:
                            data = b""
                        with self._state_lock:
                            conn.receive_data(data)
                        problem = self._dispatch(generation, conn)
                        if problem is not None:
                            break
                    else:
                        chunk = os.read(key.fileobj.fileno(), 65536)
                        if not chunk:
                            sel.unregister(key.fileobj)
                            continue
                        lines = (partial[kind] + chunk).split(b"\n")
                        partial[kind] = lines.pop()
                        for line in lines:
                            text = line.decode("utf-8", "replace")
                            if kind == "stderr":
                                tail.append(text)
                                tool_log.warning("%s", text)
                            else:
                                tool_log.info("%s", text)
            status = _reap(process, broke_protocol=isinstance(problem, ProtocolError))
            for stream, kind in ((process.stderr, "stderr"), (process.stdout, "stdout")):
                rest = partial[kind] + _read_available(stream)
                for line in rest.decode("utf-8", "replace").splitlines():
                    if kind == "stderr":
                        tail.append(line)
                        tool_log.warning("%s", line)
                    else:
                        tool_log.info("%s", line)
            text = "\n".join(tail)
            message = f"{problem}; {_status_text(status)}" + (f"; stderr:\n{text}" if text else "")
            self._crashed(generation, type(problem)(message, status, text))
        finally:
            sel.close()
            sock.close()
            _kill_group(process)  # nothing of the tool stays behind, children included
            _close_pipes(process)

    # ---- stop --------------------------------------------------------------------------------------

    def _shutdown(self, msg: str, graceful: bool) -> None:
        process, sock = self._process, self._sock
        if process is None:
            return
        if graceful:
            self._send(wire.Terminate(msg))
            try:
                process.wait(timeout=GRACE_PERIOD)
            except subprocess.TimeoutExpired:
                log.warning(
                    "tool %s did not exit within %.1f s of rec-terminate; killing it", self.name, GRACE_PERIOD
                )
        _kill_group(process)
        process.wait()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the I/O thread sees the end and exits
            except OSError:
                pass


def _status_text(status: int | None) -> str:
    if status is None:
        return "still running"
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


def _read_available(stream) -> bytes:
    try:
        return os.read(stream.fileno(), 1 << 20) or b""
    except (BlockingIOError, OSError, ValueError):
        return b""


def _drain(stream) -> str:
    data = _read_available(stream)
    lines = data.decode("utf-8", "replace").splitlines()
    return "\n".join(lines[-STDERR_TAIL_LINES:])


def _drain_nowait(process: subprocess.Popen | None) -> str:
    if process is None:
        return ""
    os.set_blocking(process.stderr.fileno(), False)
    return _drain(process.stderr)


def _close_pipes(process: subprocess.Popen) -> None:
    for stream in (process.stdout, process.stderr):
        try:
            stream.close()
        except OSError:
            pass


# --------------------------------------------------------------------------------------------------
# Processes that never outlive their owner

_live_processes: weakref.WeakSet[subprocess.Popen] = weakref.WeakSet()
_launchers: dict[int, ThreadPoolExecutor] = {}

if sys.platform.startswith("linux"):
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
    _PR_SET_PDEATHSIG = 1
else:  # pragma: no cover - the parent-death signal is Linux-only
    _prctl = None


def _child_setup(parent: int) -> None:
    """Runs in the child between fork and exec: die with the parent."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def _spawn(argv: list[str], cwd: str) -> subprocess.Popen:
    """Start a tool process in its own process group.

    Linux sends the parent-death signal when the *thread* that forked the child ends, so every
    process is forked by one long-lived launcher thread per process (not by short-lived threads).
    """
    pid = os.getpid()
    launcher = _launchers.get(pid)
    if launcher is None:
        launcher = _launchers[pid] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="toolbus-launcher")
    process = launcher.submit(
        subprocess.Popen, argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, start_new_session=True, preexec_fn=lambda: _child_setup(pid),
    ).result()  # fmt: skip
    _live_processes.add(process)
    return process


def _reap(process: subprocess.Popen, broke_protocol: bool) -> int:
    """Wait for a tool that is going (killed after the grace period), then kill its whole group:
    its children go too, before anyone hears of the crash. A tool that broke the protocol cannot
    be trusted to stop, so it is killed at once."""
    if broke_protocol:
        _kill_group(process)
    try:
        status = process.wait(timeout=GRACE_PERIOD)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        status = process.wait()
    _kill_group(process)
    return status


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@atexit.register
def _kill_all() -> None:
    for process in list(_live_processes):
        _kill_group(process)  # also when the leader has exited: its children may not have


# --------------------------------------------------------------------------------------------------


def start_tool(descriptor: ToolDescriptor) -> ToolInstance:
    """Start the tool a descriptor declares: an ``InternalTool`` or an ``ExternalTool``.

    The tool is started now, so a tool that cannot start fails here (``ToolCrashed``).
    """
    instance = InternalTool(descriptor) if descriptor.internal else ExternalTool(descriptor)
    with instance._cond:
        instance._start_tool()
    return instance


__all__ = ["ExternalTool", "InternalTool", "ToolInstance", "start_tool"]
