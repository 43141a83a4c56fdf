"""Internal tools (docs/toolbus.md §3, §4): Python objects inside the bus process, called by reflection.

The tool classes below are declared in tools.toml files as ``<this module>:<Class>``; every test
starts them through ``load_tools`` and ``start_tool`` as a deployment would.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import wait_until, write_tools

from toolbus import load_tools, start_tool
from toolbus.aterm import ATerm, Environment, make, parse
from toolbus.errors import (
    SignatureError,
    ToolBusError,
    ToolCrashed,
    ToolError,
    ToolTimeout,
    TransactionError,
)
from toolbus.internal import InternalTool

# ---- the tools -------------------------------------------------------------------------------------


class Calc:
    """Records every call, so that a test can tell whether anything ran."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.memory: dict[str, int] = {}
        self.terminated: list[str] = []

    def add(self, a, b):
        self.calls.append(("add", a, b))
        return a + b

    def store(self, name, value):
        self.calls.append(("store", name, value))
        self.memory[name] = value

    def recall(self, name):
        self.calls.append(("recall", name))
        return self.memory[name]

    def rec_terminate(self, msg):
        self.terminated.append(msg)


CALC_SIGNATURES = [
    "eval(add(<int>, <int>), <int>)",
    "do(store(<str>, <int>))",
    "eval(recall(<str>), <int>)",
]


class Types:
    """One method per signature type; ``seen`` holds the Python types the arguments arrived as."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, type]] = []

    def _saw(self, name, value):
        self.seen.append((name, type(value)))

    def next_int(self, n):
        self._saw("int", n)
        return n + 1

    def half(self, x):
        self._saw("real", x)
        return x / 2

    def whole(self, x):
        return int(x)  # a Python int for a <real> result

    def shout(self, s):
        self._saw("str", s)
        return s.upper() + "!"

    def negate(self, b):
        self._saw("bool", b)
        return not b

    def total(self, xs):
        self._saw("list", xs)
        self._saw("list element", xs[0])
        return sum(xs)

    def reverse(self, xs):
        return list(reversed(xs))

    def wrap(self, t):
        self._saw("term", t)
        return make("wrapped(<term>)", t)

    def first(self, xs):
        self._saw("untyped list", xs)
        return xs[0]

    def wrong(self):
        return "not an int"

    def nothing(self):
        return None

    def boom(self, message):
        raise ValueError(message)


TYPES_SIGNATURES = [
    "eval(next-int(<int>), <int>)",
    "eval(half(<real>), <real>)",
    "eval(whole(<real>), <real>)",
    "eval(shout(<str>), <str>)",
    "eval(negate(<bool>), <bool>)",
    "eval(total(<list(<int>)>), <int>)",
    "eval(reverse(<list(<int>)>), <list(<int>)>)",
    "eval(wrap(<term>), <term>)",
    "eval(first(<list>), <term>)",
    "eval(wrong, <int>)",
    "eval(nothing, <int>)",
    "eval(boom(<str>), <int>)",
]


class Counter:
    """Counts its instances (class attribute) and the requests each instance served."""

    instances = 0

    def __init__(self) -> None:
        type(self).instances += 1
        self.number = type(self).instances
        self.served = 0

    def count(self):
        self.served += 1
        return [self.number, self.served]

    def poke(self):
        self.served += 1


COUNTER_SIGNATURES = ["eval(count, <list(<int>)>)", "do(poke)"]


class Emitter:
    """Emits events through ``bus.emit``; acks arrive in ``rec_ack_event``."""

    instances = 0

    def __init__(self, bus) -> None:
        type(self).instances += 1
        self.bus = bus
        self.acks: list[tuple[ATerm, ATerm]] = []

    def note(self, n):
        for i in range(1, n + 1):
            self.bus.emit(make("note(<int>)", i))

    def alert(self, text):
        self.bus.emit(make("alert(<str>)", text))

    def stray(self):
        self.bus.emit("unknown-event(1)")

    def ping(self):
        return 1

    def rec_ack_event(self, event, result):
        if str(result) == '"refuse"':
            raise RuntimeError("I refuse this ack")
        self.acks.append((event, result))


class EagerEmitter(Emitter):
    """Emits an event from its constructor."""

    def __init__(self, bus) -> None:
        super().__init__(bus)
        bus.emit("note(0)")


EMITTER_SIGNATURES = [
    "do(note(<int>))",
    "do(alert(<str>))",
    "do(stray)",
    "eval(ping, <int>)",
    "event(note(<int>), <term>)",
    "event(alert(<str>), <str>)",
]


class Blocker:
    """``block`` waits until the test sets ``release``, so a timeout is certain without sleeping."""

    release = threading.Event()
    entered = threading.Event()
    instances = 0

    def __init__(self) -> None:
        type(self).instances += 1
        self.number = type(self).instances

    def block(self):
        type(self).entered.set()
        type(self).release.wait(30)
        return self.number

    def who(self):
        return self.number


BLOCKER_SIGNATURES = ["eval(block, <int>)", "eval(who, <int>)"]


class Greeter:
    """Takes the bus and an optional argument: still built as Class(bus)."""

    def __init__(self, bus, greeting="hello") -> None:
        self.bus = bus
        self.greeting = greeting

    def greet(self, name):
        self.bus.emit(make("greeted(<str>)", name))
        return f"{self.greeting} {name}"


class Plain:
    """Optional arguments only: built as Class()."""

    def __init__(self, a=1, b=2) -> None:
        self.total = a + b

    def total_(self):
        return self.total


class Broken:
    def __init__(self) -> None:
        raise RuntimeError("no database")

    def f(self):
        return 1


# ---- fixtures --------------------------------------------------------------------------------------


@pytest.fixture
def start(tmp_path):
    """start(Class, signatures, restart_frequency=0): the tool started from a tmp tools.toml."""
    started: list[InternalTool] = []

    def _start(cls, signatures, restart_frequency=0):
        path = write_tools(
            tmp_path,
            {
                "t": {
                    "tool_name": f"{__name__}:{cls.__name__}",
                    "host_name": "ToolBus",
                    "restart_frequency": restart_frequency,
                    "function_signatures": signatures,
                }
            },
        )
        instance = start_tool(load_tools(path)["t"])
        started.append(instance)
        return instance

    yield _start
    for instance in started:
        instance.terminate("cleanup", "end of test")


@pytest.fixture
def calc(start):
    return start(Calc, CALC_SIGNATURES)


@pytest.fixture
def types(start):
    return start(Types, TYPES_SIGNATURES)


@pytest.fixture
def emitter(start):
    Emitter.instances = 0
    return start(Emitter, EMITTER_SIGNATURES)


@pytest.fixture
def blocker(start):
    Blocker.release = threading.Event()
    Blocker.entered = threading.Event()
    Blocker.instances = 0
    yield start(Blocker, BLOCKER_SIGNATURES)
    Blocker.release.set()  # let an abandoned call finish


# ---- start -----------------------------------------------------------------------------------------


def test_start_tool_builds_an_internal_tool(calc):
    assert isinstance(calc, InternalTool)
    assert calc.alive
    assert calc.name == "t"
    assert calc.starts == 1
    assert calc.tool_id > 0


def test_constructor_with_the_bus_and_optional_arguments(start):
    tool = start(Greeter, ["eval(greet(<str>), <str>)", "event(greeted(<str>), <term>)"])
    assert tool.eval('greet("ann")') == parse('"hello ann"')
    assert tool.offered_events == [parse('greeted("ann")')]


def test_constructor_with_optional_arguments_only(start):
    tool = start(Plain, ["eval(total_, <int>)"])
    assert tool.eval("total_") == parse("3")


def test_constructor_failure_is_a_crash_at_start(start):
    with pytest.raises(ToolCrashed, match="no database"):
        start(Broken, ["eval(f, <int>)"])


# ---- the six operations ----------------------------------------------------------------------------


def test_eval_and_value_with_an_environment(calc):
    calc.snd_eval_to_tool("t1", "add(1, 2)")
    env = Environment()
    assert calc.get_value_from_tool("t1", "N?", env)
    assert env["N"] == parse("3")


def test_value_must_match_the_pattern(calc):
    calc.snd_eval_to_tool("t1", "add(2, 2)")
    env = Environment()
    assert not calc.get_value_from_tool("t1", "5", env)
    assert not calc.get_value_from_tool("t1", "<str>", env)
    assert "N" not in env
    assert calc.get_value_from_tool("t1", "4", env)  # still pending: another pattern takes it


def test_value_taken_by_a_second_pattern_binds_it(calc):
    calc.snd_eval_to_tool("t1", "add(20, 22)")
    env = Environment()
    assert not calc.get_value_from_tool("t1", "f(X?)", env)
    assert calc.get_value_from_tool("t1", "X?", env)
    assert env["X"] == parse("42")


def test_evals_are_independent_transactions(calc):
    calc.snd_eval_to_tool("a", "add(1, 1)")
    calc.snd_eval_to_tool("b", "add(2, 2)")
    env = Environment()
    assert calc.get_value_from_tool("b", "B?", env)
    assert calc.get_value_from_tool("a", "A?", env)
    assert (env["A"], env["B"]) == (parse("2"), parse("4"))


def test_do_then_eval(calc):
    calc.snd_do_to_tool("d1", 'store("x", 7)')
    calc.snd_eval_to_tool("e1", 'recall("x")')
    env = Environment()
    assert calc.get_value_from_tool("e1", "V?", env)
    assert env["V"] == parse("7")


def test_eval_and_do_conveniences(calc):
    calc.do('store("y", 5)')
    assert calc.eval('recall("y")', timeout=5) == parse("5")
    assert calc.eval(parse("add(1, 2)")) == parse("3")
    assert calc.requests == 3


@pytest.mark.parametrize("timeout", [None, 10])
def test_many_threads_share_one_tool(calc, timeout):
    def work(k):
        return [calc.eval(f"add({k * 100}, {i})", timeout=timeout) for i in range(25)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, range(4)))
    assert results == [[parse(str(k * 100 + i)) for i in range(25)] for k in range(4)]
    assert calc.requests == 100


def test_calls_accept_terms_and_text(calc):
    assert calc.eval(make("add(<int>, <int>)", 3, 4)) == parse("7")
    assert calc.eval("add( 3 , 4 )") == parse("7")


def test_events_and_acks(emitter):
    emitter.snd_do_to_tool("d", "note(1)")
    env = Environment()
    assert emitter.get_event_from_tool("ev1", "note(N?)", env)
    assert env["N"] == parse("1")
    emitter.snd_ack_to_tool("ev1", "done")
    obj = emitter._object
    assert obj.acks == [(parse("note(1)"), parse("done"))]
    assert isinstance(obj.acks[0][0], ATerm) and isinstance(obj.acks[0][1], ATerm)


def test_event_pattern_must_match(emitter):
    emitter.do('alert("fire")')
    env = Environment()
    assert not emitter.get_event_from_tool("ev1", "note(N?)", env)
    assert emitter.get_event_from_tool("ev1", "alert(T?)", env)  # the id was not used up
    assert env["T"] == parse('"fire"')
    emitter.snd_ack_to_tool("ev1", '"ok"')


def test_event_is_taken_once(emitter):
    emitter.do("note(1)")
    assert emitter.get_event_from_tool("a", "note(<int>)", Environment())
    assert not emitter.get_event_from_tool("b", "note(<int>)", Environment())
    assert emitter.offered_events == []


def test_event_emitted_by_the_constructor(start):
    tool = start(EagerEmitter, EMITTER_SIGNATURES)
    assert tool.offered_events == [parse("note(0)")]


def test_failing_rec_ack_event_is_a_tool_error(emitter):
    emitter.do('alert("a")')
    emitter.do('alert("b")')
    assert emitter.get_event_from_tool("e", "alert(<str>)", Environment())
    with pytest.raises(ToolError, match="I refuse this ack"):
        emitter.snd_ack_to_tool("e", '"refuse"')
    assert emitter.offered_events == [parse('alert("b")')]  # the ack still counts


def test_wait_for_event(emitter):
    emitter.do('alert("x")')
    taken = emitter.wait_for_event("alert(T?)", timeout=5)
    assert taken is not None
    id, env = taken
    assert env["T"] == parse('"x"')
    emitter.snd_ack_to_tool(id, '"ok"')
    assert emitter.wait_for_event("alert(T?)", timeout=0.05) is None


# ---- conversion by type ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, value, seen",
    [
        ("next-int(41)", "42", [("int", int)]),
        ("half(5.0)", "2.5", [("real", float)]),
        ('shout("hi")', '"HI!"', [("str", str)]),
        ("negate(true)", "false", [("bool", bool)]),
        ("negate(false)", "true", [("bool", bool)]),
        ("total([1, 2, 3])", "6", [("list", list), ("list element", int)]),
        ("reverse([1, 2, 3])", "[3, 2, 1]", []),
        ("reverse([])", "[]", []),
        ("wrap(f(x, [1]))", "wrapped(f(x, [1]))", [("term", type(parse("f(x)")))]),
        ("first([a, 2])", "a", [("untyped list", type(parse("[1]")))]),
        ("whole(2.0)", "2.0", []),
    ],
)
def test_conversion_by_type(types, call, value, seen):
    assert types.eval(call) == parse(value)
    assert types._object.seen == seen


def test_term_arguments_keep_their_annotations(types):
    assert types.eval("wrap(f{a})") == parse("wrapped(f{a})")


def test_exception_inside_the_tool_is_a_tool_error(types):
    types.snd_eval_to_tool("t1", 'boom("the disk is full")')
    with pytest.raises(ToolError, match="the disk is full") as info:
        types.get_value_from_tool("t1", "V?", Environment())
    assert "ValueError" in str(info.value)
    with pytest.raises(TransactionError):  # the error finished the transaction
        types.get_value_from_tool("t1", "V?", Environment())
    assert types.eval("next-int(1)") == parse("2")  # the tool goes on


def test_an_error_names_a_large_call_briefly(types):
    # A megabyte of argument would otherwise be copied into the message, every log line and the
    # stored task result that carry it.
    with pytest.raises(ToolError) as info:
        types.eval(make("boom(<str>)", "x" * 1_000_000))
    message = str(info.value)
    assert len(message) < 2_000 and 'boom("xxx' in message and "(1000008 characters)" in message


def test_exception_through_eval(types):
    with pytest.raises(ToolError, match="boom"):
        types.eval('boom("boom")')


def test_value_of_the_wrong_type_is_a_signature_error(types):
    with pytest.raises(SignatureError, match="not an int"):
        types.eval("wrong")


def test_none_for_a_typed_result_is_a_signature_error(types):
    with pytest.raises(SignatureError, match="nothing"):
        types.eval("nothing")


# ---- signatures are checked before anything runs ---------------------------------------------------


@pytest.mark.parametrize(
    "send, call",
    [
        ("eval", 'add("1", 2)'),
        ("eval", "add(1)"),
        ("eval", "add(1, 2.0)"),
        ("eval", "sub(1, 2)"),
        ("eval", 'store("x", 1)'),  # a do, sent as an eval
        ("do", "add(1, 2)"),  # an eval, sent as a do
        ("do", "store(x, 1)"),
        ("eval", "add(X?, 1)"),  # open term
    ],
)
def test_calls_not_fitting_the_signatures(calc, send, call):
    with pytest.raises(SignatureError, match="tool t"):
        if send == "eval":
            calc.snd_eval_to_tool("t1", call)
        else:
            calc.snd_do_to_tool("t1", call)
    assert calc._object.calls == []
    assert calc.requests == 0
    calc.snd_eval_to_tool("t1", "add(1, 1)")  # the rejected call did not use up the id
    assert calc.get_value_from_tool("t1", "2", Environment())


def test_signature_error_names_the_closest_signature(calc):
    with pytest.raises(SignatureError, match=r"closest signature: eval\(add\(<int>, <int>\), <int>\)"):
        calc.eval('add("a", 1)')


def test_event_fitting_no_signature_is_reported_to_the_next_caller(emitter):
    emitter.do("stray")
    with pytest.raises(SignatureError, match="unknown-event"):
        emitter.get_event_from_tool("e", "<term>", Environment())
    assert not emitter.get_event_from_tool("e", "<term>", Environment())  # reported once, never offered


def test_ack_of_the_wrong_type(emitter):
    emitter.do('alert("x")')
    assert emitter.get_event_from_tool("e", "alert(<str>)", Environment())
    with pytest.raises(SignatureError, match="ack"):
        emitter.snd_ack_to_tool("e", "1")  # alert acks are <str>
    assert emitter._object.acks == []
    emitter.snd_ack_to_tool("e", '"fine"')  # the transaction is still open
    assert emitter._object.acks == [(parse('alert("x")'), parse('"fine"'))]


# ---- transactions ----------------------------------------------------------------------------------


def test_unknown_transaction(calc):
    with pytest.raises(TransactionError, match="unknown"):
        calc.get_value_from_tool("nope", "V?", Environment())
    with pytest.raises(TransactionError, match="unknown"):
        calc.snd_ack_to_tool("nope", "x")


def test_transaction_in_use(calc):
    calc.snd_eval_to_tool("t1", "add(1, 2)")
    with pytest.raises(TransactionError, match="in use"):
        calc.snd_eval_to_tool("t1", "add(1, 2)")
    with pytest.raises(TransactionError, match="in use"):
        calc.snd_do_to_tool("t1", 'store("a", 1)')
    with pytest.raises(TransactionError, match="in use"):
        calc.get_event_from_tool("t1", "<term>", Environment())
    assert calc.requests == 1


def test_finished_transaction(calc):
    calc.snd_eval_to_tool("t1", "add(1, 2)")
    assert calc.get_value_from_tool("t1", "V?", Environment())
    with pytest.raises(TransactionError, match="finished"):
        calc.get_value_from_tool("t1", "V?", Environment())
    with pytest.raises(TransactionError, match="finished"):
        calc.snd_eval_to_tool("t1", "add(1, 2)")


def test_finished_do_transaction(calc):
    calc.snd_do_to_tool("d1", 'store("a", 1)')
    with pytest.raises(TransactionError, match="finished"):
        calc.snd_do_to_tool("d1", 'store("a", 1)')


def test_finished_event_transaction(emitter):
    emitter.do("note(1)")
    assert emitter.get_event_from_tool("e", "note(<int>)", Environment())
    emitter.snd_ack_to_tool("e", "ok")
    with pytest.raises(TransactionError, match="finished"):
        emitter.snd_ack_to_tool("e", "ok")
    with pytest.raises(TransactionError, match="finished"):
        emitter.get_event_from_tool("e", "<term>", Environment())


def test_transaction_kinds_do_not_mix(emitter):
    emitter.snd_eval_to_tool("v", "ping")
    emitter.do("note(1)")
    assert emitter.get_event_from_tool("e", "note(<int>)", Environment())
    with pytest.raises(TransactionError):
        emitter.snd_ack_to_tool("v", "ok")
    with pytest.raises(TransactionError):
        emitter.get_value_from_tool("e", "V?", Environment())


def test_any_hashable_is_an_id(calc):
    calc.snd_eval_to_tool(("job", 1), "add(1, 2)")
    calc.snd_eval_to_tool(7, "add(2, 2)")
    assert calc.get_value_from_tool(("job", 1), "3", Environment())
    assert calc.get_value_from_tool(7, "4", Environment())


# ---- restart ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3])
def test_restart_after_n_requests(start, n):
    Counter.instances = 0
    tool = start(Counter, COUNTER_SIGNATURES, restart_frequency=n)
    seen = []
    for i in range(3 * n + 1):
        if i % 2:
            tool.do("poke")
            seen.append(None)
        else:
            number, served = tool.eval("count").match("[<int>,<int>]")
            seen.append((number, served))
            assert number == i // n + 1  # a fresh object exactly after every n requests
            assert served == i % n + 1  # and it never serves more than n
    assert Counter.instances == 4
    assert tool.starts == 4


def test_no_restart_by_default(start):
    Counter.instances = 0
    tool = start(Counter, COUNTER_SIGNATURES)
    for _ in range(20):
        tool.do("poke")
    assert tool.eval("count") == parse("[1,21]")
    assert Counter.instances == 1


def test_rejected_calls_are_not_requests(start):
    Counter.instances = 0
    tool = start(Counter, COUNTER_SIGNATURES, restart_frequency=2)
    tool.eval("count")
    for _ in range(3):
        with pytest.raises(SignatureError):
            tool.eval("count(1)")
    assert tool.eval("count") == parse("[1,2]")
    assert tool.eval("count") == parse("[2,1]")


def test_old_object_is_told_to_terminate_on_restart(start):
    tool = start(Calc, CALC_SIGNATURES, restart_frequency=1)
    first = tool._object
    tool.eval("add(1, 1)")
    tool.eval("add(1, 1)")
    assert first.terminated == ["restart"]
    assert tool._object is not first


# ---- events: one unacknowledged event per symbol ---------------------------------------------------


def test_one_unacknowledged_event_per_symbol(emitter):
    emitter.do("note(3)")
    assert emitter.offered_events == [parse("note(1)")]
    for i in (1, 2, 3):
        env = Environment()
        assert emitter.get_event_from_tool(f"e{i}", "note(N?)", env)
        assert env["N"] == parse(str(i))
        assert not emitter.get_event_from_tool("later", "note(N?)", Environment())  # held back
        emitter.snd_ack_to_tool(f"e{i}", "ok")
    assert emitter.offered_events == []
    assert [str(e) for e, _ in emitter._object.acks] == ["note(1)", "note(2)", "note(3)"]


def test_different_symbols_are_independent(emitter):
    emitter.do("note(2)")
    emitter.do('alert("a")')
    emitter.do('alert("b")')
    assert emitter.offered_events == [parse("note(1)"), parse('alert("a")')]
    assert emitter.get_event_from_tool("a", "alert(<str>)", Environment())
    assert emitter.get_event_from_tool("n", "note(<int>)", Environment())  # a different symbol
    emitter.snd_ack_to_tool("n", "ok")
    assert emitter.offered_events == [parse("note(2)")]  # alert("b") waits for alert("a")
    emitter.snd_ack_to_tool("a", '"ok"')
    assert emitter.offered_events == [parse("note(2)"), parse('alert("b")')]


def test_taken_but_unacked_event_still_holds_back_its_symbol(emitter):
    emitter.do("note(2)")
    assert emitter.get_event_from_tool("e", "note(<int>)", Environment())
    assert emitter.offered_events == []


def test_events_of_a_restarted_tool_are_dropped(start):
    Emitter.instances = 0
    tool = start(Emitter, EMITTER_SIGNATURES, restart_frequency=1)
    tool.do("note(2)")  # note(1) offered, note(2) held back
    tool.do('alert("a")')  # the first object is replaced before this request
    assert Emitter.instances == 2
    assert tool.offered_events == [parse('alert("a")')]


def test_acking_an_event_of_a_restarted_tool(start):
    tool = start(Emitter, EMITTER_SIGNATURES, restart_frequency=1)
    tool.do("note(1)")
    assert tool.get_event_from_tool("e", "note(<int>)", Environment())
    first = tool._object
    assert tool.eval("ping") == parse("1")  # a fresh object
    with pytest.raises(TransactionError, match="restarted"):
        tool.snd_ack_to_tool("e", "ok")
    assert first.acks == [] and tool._object.acks == []
    with pytest.raises(TransactionError, match="finished"):
        tool.snd_ack_to_tool("e", "ok")


def test_the_fresh_tool_may_emit_the_same_symbol(start):
    tool = start(Emitter, EMITTER_SIGNATURES, restart_frequency=1)
    tool.do("note(1)")
    assert tool.get_event_from_tool("old", "note(<int>)", Environment())
    tool.do("note(1)")  # a fresh object: the old unacked note does not hold this one back
    assert tool.offered_events == [parse("note(1)")]


# ---- timeouts --------------------------------------------------------------------------------------


def test_timeout_discards_the_object(blocker):
    first = blocker._object
    with pytest.raises(ToolTimeout, match="block"):
        blocker.eval("block", timeout=0.2)
    assert Blocker.entered.is_set()
    assert blocker.eval("who", timeout=5) == parse("2")  # a fresh object; the old one still blocks
    assert blocker._object is not first
    Blocker.release.set()


def test_timeout_through_get_value(blocker):
    blocker.snd_eval_to_tool("t1", "block", timeout=0.2)
    assert Blocker.entered.wait(5)
    env = Environment()
    assert not blocker.get_value_from_tool("t1", "V?", env)
    with pytest.raises(ToolTimeout):  # get_value_from_tool is a poll: poll it past the deadline
        wait_until(lambda: blocker.get_value_from_tool("t1", "V?", env), timeout=5)
    assert blocker.eval("who") == parse("2")


def test_late_answer_of_a_discarded_object_is_ignored(blocker):
    with pytest.raises(ToolTimeout):
        blocker.eval("block", timeout=0.2)
    blocker.snd_eval_to_tool("t2", "who", timeout=5)
    Blocker.release.set()  # the old call now returns 1; nobody must see it
    env = Environment()
    wait_until(lambda: blocker.get_value_from_tool("t2", "V?", env), timeout=5, what="the value of who")
    assert env["V"] == parse("2")


def test_call_in_time_with_a_timeout(blocker):
    assert blocker.eval("who", timeout=5) == parse("1")
    Blocker.release.set()
    assert blocker.eval("block", timeout=5) == parse("1")
    assert Blocker.instances == 1


# ---- terminate -------------------------------------------------------------------------------------


def test_terminate(calc):
    obj = calc._object
    calc.terminate("t9", "bye")
    assert obj.terminated == ["bye"]
    assert not calc.alive
    with pytest.raises(ToolBusError, match="terminated"):
        calc.eval("add(1, 2)")
    calc.terminate("t10", "again")  # a no-op
    assert obj.terminated == ["bye"]


def test_terminate_fails_a_pending_call(blocker):
    blocker.snd_eval_to_tool("t1", "block", timeout=30)
    assert Blocker.entered.wait(5)
    blocker.terminate("t2", "bye")
    with pytest.raises(ToolCrashed, match="terminated"):
        blocker.get_value_from_tool("t1", "V?", Environment())
