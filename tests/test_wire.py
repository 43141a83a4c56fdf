"""The sans-IO wire protocol (docs/toolbus.md §5): framing, messages and the bus's state table. No sockets here."""

from __future__ import annotations

import pytest

from toolbus.aterm import parse
from toolbus.errors import ProtocolError, ToolCrashed
from toolbus.wire import (
    HEADER_LENGTH,
    MAX_MESSAGE,
    Ack,
    BusSide,
    Connect,
    Disconnect,
    Do,
    Emission,
    Eval,
    EventGate,
    FrameReader,
    Interface,
    Terminate,
    ToolSide,
    ToolState,
    Value,
    Void,
    frame,
    from_term,
    to_term,
)

INTERFACE = Interface(
    (parse("rec-eval(f(<int>))"), parse("rec-do(g(<str>))")), (parse("snd-event(e(<int>))"),)
)


def say(bus: BusSide, text: str):
    """The tool sends ``text``; returns what the bus makes of it."""
    bus.receive_data(frame(parse(text)))
    return bus.next_message()


F1 = Eval(parse("f(1)"))
GA = Do(parse('g("a")'))


def bus_in(state: ToolState) -> BusSide:
    """A BusSide taken along the normal life of a tool to ``state``."""
    bus = BusSide("calc")
    if state is not ToolState.CONNECTING:
        assert say(bus, "snd-connect(calc, 1)") == Connect("calc", 1)
    if state not in (ToolState.CONNECTING, ToolState.CONNECTED):
        bus.send(INTERFACE)
    if state not in (ToolState.CONNECTING, ToolState.CONNECTED, ToolState.HANDSHAKE):
        assert say(bus, "snd-void") == Void()
    last = {
        ToolState.BLOCKED_EVAL: F1,
        ToolState.BLOCKED_DO: GA,
        ToolState.CLOSING: Terminate("bye"),
    }.get(state)
    if last is not None:
        bus.send(last)
    if state is ToolState.CLOSED:
        say(bus, "snd-disconnect")
    assert bus.state is state
    return bus


def read(data: bytes, max_message: int = MAX_MESSAGE):
    reader = FrameReader(max_message)
    reader.feed(data)
    return reader.next_term()


# --------------------------------------------------------------------------------------------------
# Framing


@pytest.mark.parametrize(
    "text", ["f", 'snd-value("a\\"b\\n")', "rec-do(signature([rec-eval(f(<int>))],[]))", "[1,2.5,x{a}]"]
)
def test_frame_round_trip(text):
    assert read(frame(parse(text))) == parse(text)


def test_header_is_11_digits_and_a_colon():
    data = frame(parse("snd-void"))
    assert data == b"00000000020:snd-void"
    assert data[:11].isdigit() and data[11:12] == b":" and HEADER_LENGTH == 12


def test_length_counts_the_whole_message_in_bytes():
    text = 'snd-value("é€𝄞")'  # 16 characters, 22 bytes in UTF-8
    data = frame(parse(text))
    assert int(data[:11]) == len(data) == HEADER_LENGTH + len(text.encode("utf-8")) == 34
    assert data[12:].decode("utf-8") == text


@pytest.mark.parametrize(
    "message", [Connect("calc", 3), Value(parse('"x"')), Void(), Emission(parse("e(1)")), Disconnect()]
)
def test_tool_messages_round_trip(message):
    assert from_term(to_term(message)) == message
    assert read(ToolSide().send(message)) == to_term(message)


@pytest.mark.parametrize(
    "message",
    [INTERFACE, F1, GA, Ack(parse("e(1)"), parse("ok")), Terminate("bye")],
)
def test_bus_messages_round_trip(message):
    assert from_term(to_term(message)) == message
    tool = ToolSide()
    tool.receive_data(frame(to_term(message)))
    assert tool.next_message() == message


def test_split_delivery_byte_by_byte():
    bus = bus_in(ToolState.HANDSHAKE)
    data = frame(parse("snd-void"))
    for i, byte in enumerate(data):
        assert bus.next_message() is None, i
        bus.receive_data(bytes([byte]))
    assert bus.next_message() == Void()
    assert bus.next_message() is None
    assert bus.state is ToolState.READY


def test_several_messages_in_one_chunk():
    bus = bus_in(ToolState.READY)
    fourth = frame(parse("snd-event(e(3))"))
    bus.receive_data(b"".join(frame(parse(f"snd-event(e({i}))")) for i in range(3)) + fourth[:4])
    assert [bus.next_message() for _ in range(3)] == [Emission(parse(f"e({i})")) for i in range(3)]
    assert bus.next_message() is None  # the start of the fourth message waits for the rest
    bus.receive_data(fourth[4:])
    assert bus.next_message() == Emission(parse("e(3)"))


# --------------------------------------------------------------------------------------------------
# Bad bytes: each is a ProtocolError with a clear message


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"0000000001a:f", r"header must be 11 digits and ':'"),
        (b"abc", r"header must be 11 digits and ':'"),  # noticed before a whole header has arrived
        (b"00000000013;f", r"header must be 11 digits and ':'"),
        (b"00000000013 f", r"header must be 11 digits and ':'"),
        (b"00000000005:", r"message length 5 is shorter than its own header"),
        (b"99999999999:", rf"message length 99999999999 exceeds the limit of {MAX_MESSAGE} bytes"),
        (b"00000000015:\xff\xfeA", r"message is not UTF-8"),
        (b"00000000016:f((1", r"message is not an ATerm"),
        (b"00000000014:f)", r"message is not an ATerm"),
    ],
)
def test_bad_bytes(data, error):
    with pytest.raises(ProtocolError, match=error):
        read(data)


def test_length_over_a_custom_limit():
    assert read(frame(parse("f(123)")), max_message=18) == parse("f(123)")
    with pytest.raises(ProtocolError, match="message length 19 exceeds the limit of 18 bytes"):
        read(frame(parse("f(1234)")), max_message=18)


def test_protocol_error_is_a_crash():
    assert issubclass(ProtocolError, ToolCrashed)


@pytest.mark.parametrize(
    "text", ["snd-hello", "snd-value(1, 2)", '"snd-void"', "snd-connect(calc, x)", "[snd-void]"]
)
def test_unknown_message_kind(text):
    with pytest.raises(ProtocolError, match="unknown message"):
        from_term(parse(text))
    with pytest.raises(ProtocolError, match="unknown message"):
        say(bus_in(ToolState.READY), text)


def test_connect_needs_an_unquoted_name():
    with pytest.raises(ProtocolError, match="unknown message"):
        say(bus_in(ToolState.CONNECTING), 'snd-connect("calc", 1)')


def test_bus_may_not_send_tool_messages():
    for message in [Connect("calc", 1), Value(parse("1")), Void(), Emission(parse("e")), Disconnect()]:
        with pytest.raises(ProtocolError, match="message of the tool"):
            BusSide("calc").send(message)


def test_tool_may_not_send_bus_messages():
    for text in ["rec-eval(f(1))", "rec-do(g(1))", "rec-ack-event(e(1), ok)", 'rec-terminate("x")']:
        with pytest.raises(ProtocolError, match="sent a bus message"):
            say(bus_in(ToolState.READY), text)
    tool = ToolSide()
    tool.receive_data(frame(parse("snd-void")))
    with pytest.raises(ProtocolError, match="the bus sent a tool message"):
        tool.next_message()


def test_value_when_no_eval_is_pending():
    with pytest.raises(ProtocolError, match=r"tool calc sent snd-value\(1\) in state ready; expected"):
        say(bus_in(ToolState.READY), "snd-value(1)")


def test_value_during_a_do():
    bus = bus_in(ToolState.READY)
    bus.send(GA)
    with pytest.raises(ProtocolError, match=r"snd-value\(1\) in state blocked-do; expected snd-void"):
        say(bus, "snd-value(1)")


def test_void_during_an_eval():
    bus = bus_in(ToolState.READY)
    bus.send(F1)
    with pytest.raises(ProtocolError, match="snd-void in state blocked-eval; expected snd-value"):
        say(bus, "snd-void")


@pytest.mark.parametrize("state", [ToolState.CONNECTING, ToolState.CONNECTED, ToolState.HANDSHAKE])
def test_events_before_the_handshake(state):
    with pytest.raises(ProtocolError, match=rf"sent snd-event\(e\(1\)\) in state {state.value}"):
        say(bus_in(state), "snd-event(e(1))")


def test_connection_closed_mid_message():
    bus = bus_in(ToolState.READY)
    bus.receive_data(frame(parse("snd-event(e(1))"))[:-1])
    bus.receive_data(b"")
    with pytest.raises(ProtocolError, match="closed the connection in the middle of a message"):
        bus.next_message()


def test_bus_may_not_send_out_of_turn():
    bus = bus_in(ToolState.CONNECTED)
    with pytest.raises(ProtocolError, match="cannot send Eval to tool calc in state connected"):
        bus.send(F1)
    bus = bus_in(ToolState.READY)
    bus.send(F1)
    with pytest.raises(ProtocolError, match="cannot send Do to tool calc in state blocked-eval"):
        bus.send(GA)  # one request at a time


# --------------------------------------------------------------------------------------------------
# The state table


def test_full_life():
    bus = BusSide("calc")
    assert bus.state is ToolState.CONNECTING
    assert bus.next_message() is None
    assert say(bus, "snd-connect(calc, 1)") == Connect("calc", 1)
    assert bus.state is ToolState.CONNECTED
    assert bus.send(INTERFACE) == frame(
        parse("rec-do(signature([rec-eval(f(<int>)),rec-do(g(<str>))],[snd-event(e(<int>))]))")
    )
    assert bus.state is ToolState.HANDSHAKE
    assert say(bus, "snd-void") == Void()
    assert bus.state is ToolState.READY
    assert bus.send(F1) == frame(parse("rec-eval(f(1))"))
    assert bus.state is ToolState.BLOCKED_EVAL
    assert say(bus, "snd-value(2)") == Value(parse("2"))
    assert bus.state is ToolState.READY
    assert bus.send(GA) == frame(parse('rec-do(g("a"))'))
    assert bus.state is ToolState.BLOCKED_DO
    assert say(bus, "snd-void") == Void()
    assert bus.state is ToolState.READY
    assert bus.send(Terminate("bye")) == frame(parse('rec-terminate("bye")'))
    assert bus.state is ToolState.CLOSING
    assert say(bus, "snd-event(e(9))") == Emission(parse("e(9)"))  # late words of the tool are dropped
    assert bus.state is ToolState.CLOSING
    bus.receive_data(b"")
    assert bus.next_message() == Disconnect()
    assert bus.state is ToolState.CLOSED
    assert bus.next_message() is None


@pytest.mark.parametrize("state", [ToolState.READY, ToolState.BLOCKED_EVAL, ToolState.BLOCKED_DO])
def test_events_and_acks_while_ready_or_blocked(state):
    bus = bus_in(state)
    assert say(bus, "snd-event(e(1))") == Emission(parse("e(1)"))
    assert bus.state is state
    assert bus.send(Ack(parse("e(1)"), parse("ok"))) == frame(parse("rec-ack-event(e(1),ok)"))
    assert bus.state is state


@pytest.mark.parametrize(
    "state",
    [
        ToolState.CONNECTING,
        ToolState.HANDSHAKE,
        ToolState.READY,
        ToolState.BLOCKED_EVAL,
        ToolState.BLOCKED_DO,
        ToolState.CLOSING,
    ],
)
def test_disconnect_on_eof(state):
    bus = bus_in(state)
    bus.receive_data(b"")
    assert bus.next_message() == Disconnect()
    assert bus.state is ToolState.CLOSED
    assert bus.next_message() is None


def test_snd_disconnect():
    bus = bus_in(ToolState.READY)
    assert say(bus, "snd-disconnect") == Disconnect()
    assert bus.state is ToolState.CLOSED


@pytest.mark.parametrize("state", [s for s in ToolState if s is not ToolState.CLOSED])
def test_terminate_from_every_live_state(state):
    bus = bus_in(state)
    bus.send(Terminate("stop"))
    assert bus.state is ToolState.CLOSING


def test_nothing_can_be_sent_once_closed():
    with pytest.raises(ProtocolError, match="cannot send Terminate to tool calc in state closed"):
        bus_in(ToolState.CLOSED).send(Terminate("stop"))


# ---- events: at most one unacknowledged per symbol ---------------------------------------------------


def test_the_first_event_of_a_symbol_passes_and_later_ones_wait_for_its_ack_in_order():
    gate = EventGate()
    assert gate.admit(parse("e(1)"), "first")
    assert not gate.admit(parse("e(2)"), "second")
    assert not gate.admit(parse("e(3)"), "third")
    assert gate.acknowledged(parse("e(1)")) == "second"
    assert gate.acknowledged(parse("e(2)")) == "third"
    assert gate.acknowledged(parse("e(3)")) is None
    assert gate.admit(parse("e(4)"), "fourth")


def test_events_of_different_symbols_do_not_wait_for_each_other():
    gate = EventGate()
    for text in ("e(1)", "e(1,2)", '"e"(1)', "f(1)", "e", "[e]"):
        assert gate.admit(parse(text), text)


def test_events_of_a_replaced_tool_are_forgotten():
    gate = EventGate()
    assert gate.admit(parse("e(1)"), "first")
    assert not gate.admit(parse("e(2)"), "second")
    gate.clear()
    assert gate.admit(parse("e(3)"), "third")
