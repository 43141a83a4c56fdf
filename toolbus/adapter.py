"""The tool side of the wire protocol: an external tool in Python is a class plus one call.

    from toolbus.adapter import run

    class Calc:
        def compute(self, expr: str) -> int:        # eval(compute(<str>), <int>)
            return eval_arithmetic(expr)

    if __name__ == "__main__":
        run(Calc)

``run`` reads the ``-TB_*`` arguments the bus starts the tool with, connects, answers the handshake
and serves calls until ``rec-terminate`` or the end of the connection. A call ``get-text(...)`` goes
to method ``get_text``; arguments arrive as Python values by their signature type (``<int>`` -> int,
``<str>`` -> str, ``<list(T)>`` -> list, ``<term>``/``<list>``/user types -> the ATerm); results are
converted naturally (int, float, bool, str, list, or an ATerm). A method that raises ends the tool:
its traceback goes to stderr, and the bus reports the crash with it.

A class whose constructor takes one argument gets a ``ToolConnection``: ``bus.emit(event)`` sends an
event (at most one unacknowledged per event symbol: later ones are held back until the ack), and the
ack arrives as a call of ``rec_ack_event(event, result)`` when the class has that method.
"""

from __future__ import annotations

import socket
import sys
import threading
import traceback
from typing import Any

from toolbus import wire
from toolbus.aterm import ATerm, as_term, term
from toolbus.descriptors import takes_bus
from toolbus.errors import brief
from toolbus.signatures import method_name, to_python


def parse_arguments(argv: list[str]) -> dict[str, str]:
    """The ``-TB_HOST``, ``-TB_PORT``, ``-TB_TOOL_NAME`` and ``-TB_TOOL_ID`` values (others are ignored)."""
    wanted = {"-TB_HOST": "host", "-TB_PORT": "port", "-TB_TOOL_NAME": "name", "-TB_TOOL_ID": "id"}
    found = {}
    for flag, value in zip(argv, argv[1:]):
        if flag in wanted:
            found[wanted[flag]] = value
    missing = [flag for flag, key in wanted.items() if key not in found]
    if missing:
        raise SystemExit(f"this is a ToolBus tool: start it from the bus (missing {', '.join(missing)})")
    return found


class ToolConnection:
    """The tool's connection to the bus; handed to tools as ``bus``."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._side = wire.ToolSide()
        self._lock = threading.Lock()
        self._gate: wire.EventGate[ATerm] = wire.EventGate()
        # Events may be sent only after the handshake; a tool that emits earlier (from its
        # constructor, or from a thread of its own) has them kept here until then.
        self._ready = False
        self._early: list[ATerm] = []

    def send(self, message: wire.Message) -> None:
        data = self._side.send(message)
        with self._lock:
            self._sock.sendall(data)

    def emit(self, event: ATerm | str | Any) -> None:
        """Send an event; held back while an earlier event of the same symbol is unacknowledged."""
        event = as_term(event)
        with self._lock:
            if not self._gate.admit(event, event):
                return
            if not self._ready:
                self._early.append(event)
                return
            self._sock.sendall(self._side.send(wire.Emission(event)))

    def _accept_signature(self) -> None:
        """Answer the signature; from now on events go out, the early ones first."""
        with self._lock:
            self._sock.sendall(self._side.send(wire.Void()))
            self._ready = True
            for event in self._early:
                self._sock.sendall(self._side.send(wire.Emission(event)))
            self._early.clear()

    def _acked(self, event: ATerm) -> None:
        with self._lock:
            held = self._gate.acknowledged(event)
            if held is not None:
                self._sock.sendall(self._side.send(wire.Emission(held)))

    def receive(self) -> wire.Message | None:
        """The next message from the bus; None when the connection has closed."""
        while True:
            message = self._side.next_message()
            if message is not None:
                return message
            data = self._sock.recv(262144)
            if not data:
                return None
            self._side.receive_data(data)


def run(tool: type | Any, argv: list[str] | None = None) -> None:
    """Serve ``tool`` (a class, or an object) on the bus that started this process."""
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    sock = socket.create_connection((args["host"], int(args["port"])))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    bus = ToolConnection(sock)
    if isinstance(tool, type):
        tool = tool(bus) if takes_bus(tool) else tool()
    try:
        _serve(tool, bus, args["name"], int(args["id"]))
    finally:
        sock.close()


def _serve(tool: Any, bus: ToolConnection, name: str, tool_id: int) -> None:
    bus.send(wire.Connect(name, tool_id))
    interface = bus.receive()
    if not isinstance(interface, wire.Interface):
        raise SystemExit(f"{name}: expected the signature from the bus, got {interface}")
    # (name, arity) -> argument types, from the rec-eval(P)/rec-do(P) patterns of the signature
    types = {}
    for entry in interface.inputs:
        pattern = entry.args[0]
        types[(pattern.name, len(pattern.args))] = pattern.args
    bus._accept_signature()
    while True:
        message = bus.receive()
        if message is None:
            return
        if isinstance(message, (wire.Eval, wire.Do)):
            call = message.call
            result = _call(tool, call, types.get((call.name, len(call.args)), ()))
            bus.send(wire.Value(term(result)) if isinstance(message, wire.Eval) else wire.Void())
        elif isinstance(message, wire.Ack):
            receive = getattr(tool, "rec_ack_event", None)
            if callable(receive):
                receive(message.event, message.result)
            bus._acked(message.event)
        elif isinstance(message, wire.Terminate):
            stop = getattr(tool, "rec_terminate", None)
            if callable(stop):
                stop(message.message)
            return


def _call(tool: Any, call: ATerm, types: tuple) -> Any:
    name = method_name(call.name)
    method = getattr(tool, name, None)
    try:
        if method is None:
            raise AttributeError(f"{type(tool).__name__} has no method {name}() for {brief(call)}")
        args = [to_python(a, t) for a, t in zip(call.args, types)] if types else list(call.args)
        return method(*args)
    except Exception:
        # The protocol has no error answer: the tool ends, and the bus reports the crash with this.
        traceback.print_exc()
        sys.stderr.flush()
        raise SystemExit(1) from None
