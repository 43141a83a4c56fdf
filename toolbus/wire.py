"""The wire protocol between the bus and an external tool, without any I/O (sans-IO).

Bytes go in through ``receive_data``, messages come out of ``next_message``; messages to send are
turned into bytes by ``send``. Nothing here touches a socket or a process: the socket code in
``toolbus.external`` (bus side) and ``toolbus.adapter`` (tool side) is a thin shell around this.

Framing: every message is ``LLLLLLLLLLL:`` + the ATerm text in UTF-8, where the 11 zero-padded
decimal digits give the length in bytes of the whole message, header included.

The tool's state as the bus sees it is one table, ``TRANSITIONS``: (state, message) -> next state.
A message the table does not allow in the current state is a ``ProtocolError``.

Events flow under one more rule, ``EventGate``: at most one unacknowledged event per event symbol.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

from toolbus.aterm import ATerm, ATermAppl, ATermInt, ATermList, ParseError, _appl, _list, parse
from toolbus.errors import ProtocolError, SignatureError

HEADER_LENGTH = 12  # 11 digits and ':'
#: Largest message accepted from a peer. A bogus length must not make us buffer gigabytes.
MAX_MESSAGE = 64 * 1024 * 1024


def frame(message: ATerm) -> bytes:
    """The bytes of one message: header and canonical ATerm text.

    Raises SignatureError for a term whose text has no UTF-8 form: a quoted name may hold any
    character in memory, a lone surrogate too (JSON can carry one), but such a term cannot travel.
    """
    text = str(message)
    try:
        body = text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise SignatureError(
            f"{text[:200]} cannot be sent to a tool: its text is not UTF-8 "
            f"({e.reason}: {text[e.start : e.end]!r} at character {e.start})"
        ) from None
    return b"%011d:" % (len(body) + HEADER_LENGTH) + body


class FrameReader:
    """Splits a byte stream into ATerm messages."""

    def __init__(self, max_message: int = MAX_MESSAGE):
        self._buffer = bytearray()
        self._max = max_message

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a whole message."""
        return len(self._buffer)

    def next_term(self) -> ATerm | None:
        """The next whole message, or None until more bytes arrive. Raises ProtocolError."""
        buf = self._buffer
        if len(buf) < HEADER_LENGTH:
            if buf and not buf[: min(len(buf), 11)].isdigit():
                raise ProtocolError(f"message header must be 11 digits and ':', got {bytes(buf[:12])!r}")
            return None
        header = bytes(buf[:HEADER_LENGTH])
        if not header[:11].isdigit() or header[11:12] != b":":
            raise ProtocolError(f"message header must be 11 digits and ':', got {header!r}")
        length = int(header[:11])
        if length < HEADER_LENGTH:
            raise ProtocolError(f"message length {length} is shorter than its own header")
        if length > self._max:
            raise ProtocolError(f"message length {length} exceeds the limit of {self._max} bytes")
        if len(buf) < length:
            return None
        body = bytes(buf[HEADER_LENGTH:length])
        del buf[:length]
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProtocolError(
                f"message is not UTF-8 ({e.reason} at byte {e.start}): {body[:60]!r}"
            ) from None
        try:
            return parse(text)
        except ParseError as e:
            raise ProtocolError(f"message is not an ATerm: {e}") from None


# --------------------------------------------------------------------------------------------------
# Messages


@dataclass(frozen=True)
class Connect:
    """tool -> bus, first: ``snd-connect(<name>, <id>)``."""

    tool_name: str
    tool_id: int


@dataclass(frozen=True)
class Interface:
    """bus -> tool, first: ``rec-do(signature([rec-eval(P)..., rec-do(P)...], [snd-event(E)...]))``.

    The tool's whole interface: every call it may receive and every event it may send, which it
    accepts with ``snd-void``. Not called Signature: a ``toolbus.signatures.Signature`` is one
    declared eval, do or event, and this message carries them all.
    """

    inputs: tuple[ATerm, ...]  # rec-eval(P) and rec-do(P) terms
    outputs: tuple[ATerm, ...]  # snd-event(E) terms


@dataclass(frozen=True)
class Eval:
    """bus -> tool: ``rec-eval(Call)``, answered by exactly one Value."""

    call: ATerm


@dataclass(frozen=True)
class Do:
    """bus -> tool: ``rec-do(Call)``, answered by Void."""

    call: ATerm


@dataclass(frozen=True)
class Value:
    """tool -> bus: ``snd-value(V)``."""

    value: ATerm


@dataclass(frozen=True)
class Void:
    """tool -> bus: ``snd-void``, the answer to the signature and to a do."""


@dataclass(frozen=True)
class Emission:
    """tool -> bus: ``snd-event(E)``, any time after the handshake: the tool emits an event. (The
    application takes it as a ``worker.events.Event``; this is the message that carries it.)"""

    event: ATerm


@dataclass(frozen=True)
class Ack:
    """bus -> tool: ``rec-ack-event(E, Result)``, E exactly as the tool sent it."""

    event: ATerm
    result: ATerm


@dataclass(frozen=True)
class Terminate:
    """bus -> tool: ``rec-terminate(Msg)``; the tool closes the connection and exits."""

    message: str


@dataclass(frozen=True)
class Disconnect:
    """tool -> bus: ``snd-disconnect``, or the connection closed."""


Message = Connect | Interface | Eval | Do | Value | Void | Emission | Ack | Terminate | Disconnect
_BUS_MESSAGES = (Interface, Eval, Do, Ack, Terminate)  # the rest come from the tool


def to_term(message: Message) -> ATerm:
    """The ATerm of a message."""
    if isinstance(message, Eval):
        return _appl("rec-eval", (message.call,), False)
    if isinstance(message, Do):
        return _appl("rec-do", (message.call,), False)
    if isinstance(message, Value):
        return _appl("snd-value", (message.value,), False)
    if isinstance(message, Void):
        return _appl("snd-void", (), False)
    if isinstance(message, Emission):
        return _appl("snd-event", (message.event,), False)
    if isinstance(message, Ack):
        return _appl("rec-ack-event", (message.event, message.result), False)
    if isinstance(message, Terminate):
        return _appl("rec-terminate", (_appl(message.message, (), True),), False)
    if isinstance(message, Connect):
        return _appl("snd-connect", (_appl(message.tool_name, (), False), ATermInt(message.tool_id)), False)
    if isinstance(message, Interface):
        sig = _appl("signature", (_list(message.inputs), _list(message.outputs)), False)
        return _appl("rec-do", (sig,), False)
    if isinstance(message, Disconnect):
        return _appl("snd-disconnect", (), False)
    raise TypeError(f"not a wire message: {message!r}")


def from_term(t: ATerm) -> Message:
    """The message an ATerm carries. Raises ProtocolError for a term that is no known message."""
    if isinstance(t, ATermAppl) and not t.quoted:
        name, args = t.name, t.args
        if name == "snd-value" and len(args) == 1:
            return Value(args[0])
        if name == "snd-void" and not args:
            return Void()
        if name == "snd-event" and len(args) == 1:
            return Emission(args[0])
        if name == "rec-eval" and len(args) == 1:
            return Eval(args[0])
        if name == "rec-do" and len(args) == 1:
            sig = args[0]
            if (
                isinstance(sig, ATermAppl)
                and sig.name == "signature"
                and len(sig.args) == 2
                and all(isinstance(a, ATermList) for a in sig.args)
            ):
                return Interface(tuple(sig.args[0]), tuple(sig.args[1]))
            return Do(sig)
        if name == "rec-ack-event" and len(args) == 2:
            return Ack(args[0], args[1])
        if name == "rec-terminate" and len(args) == 1:
            msg = args[0]
            return Terminate(msg.name if isinstance(msg, ATermAppl) and msg.is_string else str(msg))
        if name == "snd-connect" and len(args) == 2:
            tname, tid = args
            if (
                isinstance(tname, ATermAppl)
                and not tname.quoted
                and not tname.args
                and isinstance(tid, ATermInt)
            ):
                return Connect(tname.name, tid.value)
        if name == "snd-disconnect" and not args:
            return Disconnect()
    raise ProtocolError(f"unknown message {str(t)[:200]}")


# --------------------------------------------------------------------------------------------------
# The tool's state, as the bus sees it


class ToolState(Enum):
    CONNECTING = "connecting"  # waiting for snd-connect
    CONNECTED = "connected"  # snd-connect received; the bus sends the signature next
    HANDSHAKE = "handshake"  # signature sent, waiting for snd-void
    READY = "ready"  # no request outstanding
    BLOCKED_EVAL = "blocked-eval"  # rec-eval sent, waiting for snd-value
    BLOCKED_DO = "blocked-do"  # rec-do sent, waiting for snd-void
    CLOSING = "closing"  # rec-terminate sent; whatever else the tool says is dropped
    CLOSED = "closed"  # the tool disconnected


#: (state, message type) -> next state. Sent and received messages share the table: their types
#: never overlap (Eval/Do/Ack/Interface/Terminate go to the tool; the rest come from it).
TRANSITIONS: dict[tuple[ToolState, type], ToolState] = {
    (ToolState.CONNECTING, Connect): ToolState.CONNECTED,
    (ToolState.CONNECTED, Interface): ToolState.HANDSHAKE,
    (ToolState.HANDSHAKE, Void): ToolState.READY,
    (ToolState.READY, Eval): ToolState.BLOCKED_EVAL,
    (ToolState.READY, Do): ToolState.BLOCKED_DO,
    (ToolState.BLOCKED_EVAL, Value): ToolState.READY,
    (ToolState.BLOCKED_DO, Void): ToolState.READY,
    (ToolState.READY, Emission): ToolState.READY,
    (ToolState.BLOCKED_EVAL, Emission): ToolState.BLOCKED_EVAL,
    (ToolState.BLOCKED_DO, Emission): ToolState.BLOCKED_DO,
    (ToolState.READY, Ack): ToolState.READY,
    (ToolState.BLOCKED_EVAL, Ack): ToolState.BLOCKED_EVAL,
    (ToolState.BLOCKED_DO, Ack): ToolState.BLOCKED_DO,
    (ToolState.CLOSING, Value): ToolState.CLOSING,
    (ToolState.CLOSING, Void): ToolState.CLOSING,
    (ToolState.CLOSING, Emission): ToolState.CLOSING,
}
# Terminate is allowed from every live state, Disconnect from every state.
for _state in ToolState:
    if _state is not ToolState.CLOSED:
        TRANSITIONS[(_state, Terminate)] = ToolState.CLOSING
    TRANSITIONS[(_state, Disconnect)] = ToolState.CLOSED
del _state

_EXPECTED = {
    ToolState.CONNECTING: "snd-connect",
    ToolState.CONNECTED: "nothing before the signature is sent",
    ToolState.HANDSHAKE: "snd-void (the answer to the signature)",
    ToolState.READY: "snd-event or snd-disconnect (no request is outstanding)",
    ToolState.BLOCKED_EVAL: "snd-value, snd-event or snd-disconnect",
    ToolState.BLOCKED_DO: "snd-void, snd-event or snd-disconnect",
    ToolState.CLOSING: "the connection to close",
    ToolState.CLOSED: "nothing (the tool disconnected)",
}


class BusSide:
    """The bus's end of one tool connection: framing plus the state table.

    >>> conn = BusSide("calc")
    >>> conn.receive_data(frame(parse("snd-connect(calc, 1)")))
    >>> conn.next_message()
    Connect(tool_name='calc', tool_id=1)
    """

    def __init__(self, tool_name: str, max_message: int = MAX_MESSAGE):
        self.tool_name = tool_name
        self.state = ToolState.CONNECTING
        self._reader = FrameReader(max_message)
        self._closed = False  # the peer closed the connection

    def _advance(self, message: Message, sending: bool) -> None:
        self.state = self._next_state(message, sending)

    def _next_state(self, message: Message, sending: bool) -> ToolState:
        """The state after ``message``; ProtocolError when the table does not allow it."""
        key = (self.state, type(message))
        nxt = TRANSITIONS.get(key)
        if nxt is None:
            if sending:
                raise ProtocolError(
                    f"cannot send {type(message).__name__} to tool {self.tool_name} in state {self.state.value}"
                )
            raise ProtocolError(
                f"tool {self.tool_name} sent {str(to_term(message))[:200]} in state {self.state.value}; "
                f"expected {_EXPECTED[self.state]}"
            )
        return nxt

    def send(self, message: Message) -> bytes:
        """The bytes to write for ``message``; advances the state (ProtocolError if not allowed,
        SignatureError if the message has no UTF-8 text -- then the state is left as it was, since
        nothing will be sent)."""
        if not isinstance(message, _BUS_MESSAGES):
            raise ProtocolError(f"{type(message).__name__} is a message of the tool, not of the bus")
        nxt = self._next_state(message, sending=True)
        data = frame(to_term(message))
        self.state = nxt
        return data

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the tool; ``b""`` means the connection closed."""
        if data:
            self._reader.feed(data)
        else:
            self._closed = True

    def next_message(self) -> Message | None:
        """The next message from the tool, or None until more data arrives.

        Raises ProtocolError for bytes that are no message, or a message the state does not allow.
        At end of stream, returns Disconnect (also for an unannounced close).
        """
        t = self._reader.next_term()
        if t is None:
            if self._closed and self.state is not ToolState.CLOSED:
                if self._reader.pending:
                    raise ProtocolError(
                        f"tool {self.tool_name} closed the connection in the middle of a message"
                    )
                message: Message = Disconnect()
                self._advance(message, sending=False)
                return message
            return None
        message = from_term(t)
        if isinstance(message, _BUS_MESSAGES):
            raise ProtocolError(f"tool {self.tool_name} sent a bus message: {str(t)[:200]}")
        self._advance(message, sending=False)
        return message


class ToolSide:
    """The tool's end of the connection (used by ``toolbus.adapter`` and in tests)."""

    def __init__(self, max_message: int = MAX_MESSAGE):
        self._reader = FrameReader(max_message)

    def send(self, message: Message) -> bytes:
        return frame(to_term(message))

    def receive_data(self, data: bytes) -> None:
        self._reader.feed(data)

    def next_message(self) -> Message | None:
        t = self._reader.next_term()
        if t is None:
            return None
        message = from_term(t)
        if not isinstance(message, _BUS_MESSAGES):
            raise ProtocolError(f"the bus sent a tool message: {str(t)[:200]}")
        return message


# --------------------------------------------------------------------------------------------------
# Events: at most one unacknowledged event per event symbol

_Held = TypeVar("_Held")


def event_symbol(event: ATerm) -> tuple:
    """An event's symbol, (name, arity, quoted); a term that is no application is its own symbol."""
    if isinstance(event, ATermAppl):
        return (event.name, len(event.args), event.quoted)
    return (str(event), 0, False)


class EventGate(Generic[_Held]):
    """The rule that a tool has at most one unacknowledged event per event symbol.

    The earliest event of a symbol passes; later ones of that symbol are held back, in order, until
    it is acknowledged, and then the next one passes. Both ends keep the rule: the tool side
    (``toolbus.adapter``) holds its own events back, and the bus (``toolbus.instances``) holds back
    any a tool sends early. What is held is up to the caller: the event, or the event with its
    signature.
    """

    def __init__(self) -> None:
        # symbol -> what waits behind its unacknowledged event; a symbol is here while it has one
        self._waiting: dict[tuple, deque[_Held]] = {}

    def admit(self, event: ATerm, held: _Held) -> bool:
        """True when ``event`` passes now; otherwise ``held`` waits for the symbol's acknowledgement."""
        symbol = event_symbol(event)
        waiting = self._waiting.get(symbol)
        if waiting is None:
            self._waiting[symbol] = deque()
            return True
        waiting.append(held)
        return False

    def acknowledged(self, event: ATerm) -> _Held | None:
        """``event`` was acknowledged: what waited next behind it, which passes now; None if nothing."""
        symbol = event_symbol(event)
        waiting = self._waiting.get(symbol)
        if waiting:
            return waiting.popleft()
        self._waiting.pop(symbol, None)
        return None

    def clear(self) -> None:
        """Forget every event, passed or waiting (the tool that emitted them was replaced)."""
        self._waiting.clear()
