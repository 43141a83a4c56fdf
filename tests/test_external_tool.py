"""External tools (docs/toolbus.md §4, §5) as real processes speaking the wire protocol over loopback TCP.

The tools: examples/tools/calc.py and clock.py through ``toolbus.adapter``, and the small tools in
tests/tools/ that report on themselves (probe.py) or misbehave (exit_at_once.py, refuse.py,
garbage.py, deaf.py). Every call here has a timeout; processes are awaited with bounded polls only.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import REPO, group_gone, pid_gone, script_command, wait_until, write_tools

from toolbus import external, load_tools, start_tool
from toolbus.aterm import Environment, parse
from toolbus.errors import (
    ProtocolError,
    SignatureError,
    ToolBusError,
    ToolCrashed,
    ToolTimeout,
    TransactionError,
)
from toolbus.external import ExternalTool
from toolbus.wire import ToolState

pytestmark = pytest.mark.process

TIMEOUT = 20  # seconds: the timeout of every call that is expected to answer
QUICK = 10  # seconds: "at once", with room for a slow machine; far below TIMEOUT and START_TIMEOUT

PROBE_SIGNATURES = [
    "eval(stamp, <list(<int>)>)",
    "do(poke)",
    "eval(argv, <list(<str>)>)",
    "eval(cwd, <str>)",
    "eval(crash(<int>), <int>)",
    "eval(fail(<str>), <int>)",
    "eval(hang, <int>)",
    "eval(spawn, <int>)",
    "do(emit(<int>))",
    "do(burst(<int>))",
    "eval(acks, <list>)",
    "eval(leave(<bool>), <int>)",
    "do(vanish)",
    "event(note(<int>), <term>)",
]
CALC_SIGNATURES = ["eval(compute(<str>), <int>)", "do(store(<str>, <int>))"]
CLOCK_SIGNATURES = ["eval(now, <str>)", "do(tick(<int>))", "event(show-time(<str>), <term>)"]


@pytest.fixture(autouse=True)
def importable_toolbus(monkeypatch):
    """Tool processes import toolbus (and examples) from this checkout, wherever they start."""
    paths = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))


@pytest.fixture
def start(tmp_path):
    """start(command, signatures, restart_frequency=0): the tool started from a tmp tools.toml."""
    started: list[ExternalTool] = []

    def _start(command, signatures=PROBE_SIGNATURES, restart_frequency=0, name="probe"):
        path = write_tools(
            tmp_path,
            {
                name: {
                    "tool_name": command,
                    "host_name": "localhost",
                    "restart_frequency": restart_frequency,
                    "function_signatures": signatures,
                }
            },
        )
        instance = start_tool(load_tools(path)[name])
        started.append(instance)
        return instance

    yield _start
    for instance in started:
        instance.terminate("cleanup", "end of test")
        assert instance.pid is None or pid_gone(instance.pid)


@pytest.fixture
def probe(start):
    return start(script_command("probe.py"))


@pytest.fixture
def calc(start):
    return start("{python} -m examples.tools.calc", CALC_SIGNATURES, name="calc")


@pytest.fixture
def clock(start):
    return start("{python} -m examples.tools.clock", CLOCK_SIGNATURES, name="clock")


def stamp(tool) -> tuple[int, int]:
    """(pid, requests served by that process) from the probe."""
    pid, served = tool.eval("stamp", timeout=TIMEOUT).match("[<int>,<int>]")
    return pid, served


def take_event(tool, pattern: str, timeout: float = TIMEOUT):
    taken = tool.wait_for_event(pattern, timeout=timeout)
    assert taken is not None, f"no event {pattern} within {timeout} s"
    return taken


# ---- the protocol, through the example tools -------------------------------------------------------


def test_calc_eval_and_do(calc):
    assert isinstance(calc, ExternalTool)
    assert calc.alive and calc.pid > 0
    assert calc.eval('compute("1+2")', timeout=TIMEOUT) == parse("3")
    calc.do('store("x", 5)')
    assert calc.eval('compute("x*2")', timeout=TIMEOUT) == parse("10")
    assert calc.requests == 3


def test_calc_six_operations(calc):
    calc.snd_do_to_tool("d1", 'store("y", 20)')
    calc.snd_eval_to_tool("t1", 'compute("y+1")', timeout=TIMEOUT)
    calc.snd_eval_to_tool("t2", 'compute("y+2")', timeout=TIMEOUT)  # queued behind t1
    env = Environment()
    wait_until(lambda: calc.get_value_from_tool("t2", "B?", env), what="the value of t2")
    assert not calc.get_value_from_tool("t1", "0", env)  # arrived, does not match: stays pending
    assert calc.get_value_from_tool("t1", "A?", env)
    assert (env["A"], env["B"]) == (parse("21"), parse("22"))
    with pytest.raises(TransactionError, match="finished"):
        calc.get_value_from_tool("t1", "A?", env)
    with pytest.raises(TransactionError, match="unknown"):
        calc.get_value_from_tool("t3", "A?", env)


def test_many_threads_share_one_tool(calc):
    def work(k):
        return [calc.eval(f'compute("{k}*100+{i}")', timeout=TIMEOUT) for i in range(10)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, range(4)))
    assert results == [[parse(str(k * 100 + i)) for i in range(10)] for k in range(4)]
    assert calc.requests == 40


def test_calls_are_checked_before_they_reach_the_tool(probe):
    pid, _ = stamp(probe)
    for call in ("stamp(1)", "nosuch", "poke"):
        with pytest.raises(SignatureError, match="tool probe"):
            probe.eval(call, timeout=TIMEOUT)
    with pytest.raises(SignatureError):
        probe.do("emit(x)")
    assert stamp(probe) == (pid, 2)  # the tool saw none of them
    assert probe.requests == 2


def test_value_of_the_wrong_type(start):
    tool = start(script_command("probe.py"), ["eval(cwd, <int>)", "eval(stamp, <list(<int>)>)"])
    pid = tool.pid
    with pytest.raises(SignatureError, match="result type"):
        tool.eval("cwd", timeout=TIMEOUT)
    assert stamp(tool) == (pid, 1)  # the same process goes on


def test_launch_arguments(probe):
    argv = [str(a.match("<str>")[0]) for a in probe.eval("argv", timeout=TIMEOUT)]
    assert argv[0::2] == ["-TB_HOST", "-TB_PORT", "-TB_TOOL_NAME", "-TB_TOOL_ID"]
    host, port, name, tool_id = argv[1::2]
    assert host == "127.0.0.1"
    assert port.isdigit() and 0 < int(port) < 65536
    assert name == "probe"
    assert tool_id.isdigit() and int(tool_id) > 0
    assert int(tool_id) == probe.tool_id


def test_tool_ids_are_fresh_on_every_start(start):
    tool = start(script_command("probe.py"), restart_frequency=1)
    ids = []
    for _ in range(3):
        argv = [str(a.match("<str>")[0]) for a in tool.eval("argv", timeout=TIMEOUT)]
        ids.append(int(argv[argv.index("-TB_TOOL_ID") + 1]))
    assert len(set(ids)) == 3 and all(i > 0 for i in ids)


def test_runs_in_the_directory_of_tools_toml(probe, tmp_path):
    assert probe.eval("cwd", timeout=TIMEOUT).match("<str>")[0] == str(tmp_path.resolve())


# ---- restart ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3])
def test_restart_boundaries(start, n):
    tool = start(script_command("probe.py"), restart_frequency=n)
    pids = []
    for i in range(3 * n + 2):
        if i % 3 == 1:
            tool.do("poke")  # a do is a request too
            continue
        pid, served = stamp(tool)
        assert served == i % n + 1  # never more than n requests per process
        pids.append((i // n, pid))
    by_round: dict[int, set[int]] = {}
    for round_, pid in pids:
        by_round.setdefault(round_, set()).add(pid)
    assert all(len(p) == 1 for p in by_round.values())  # the pid changes exactly every n requests
    distinct = [next(iter(p)) for _, p in sorted(by_round.items())]
    assert len(set(distinct)) == len(distinct)
    assert all(pid_gone(pid) for pid in distinct[:-1])  # replaced processes are gone


def test_restart_counts_only_delivered_requests(start):
    tool = start(script_command("probe.py"), restart_frequency=2)
    pid, _ = stamp(tool)
    with pytest.raises(SignatureError):
        tool.eval("stamp(1)")
    assert stamp(tool) == (pid, 2)
    assert stamp(tool)[0] != pid


# ---- crashes ---------------------------------------------------------------------------------------


def test_crash_mid_eval_fails_at_once(probe):
    pid, _ = stamp(probe)
    began = time.monotonic()
    with pytest.raises(ToolCrashed) as info:
        probe.eval("crash(7)", timeout=60)
    assert time.monotonic() - began < QUICK
    error = info.value
    assert type(error) is ToolCrashed
    assert error.exit_status == 7
    assert "exit status 7" in str(error)
    assert "crashing on purpose with status 7" in str(error)
    assert "crashing on purpose with status 7" in error.stderr_tail
    assert pid_gone(pid)
    new_pid, served = stamp(probe)  # a fresh process serves the next request
    assert new_pid != pid and served == 1


def test_crash_through_get_value(probe):
    probe.snd_eval_to_tool("t1", "crash(3)", timeout=60)
    env = Environment()
    with pytest.raises(ToolCrashed, match="exit status 3"):
        wait_until(lambda: probe.get_value_from_tool("t1", "V?", env), timeout=QUICK)
    with pytest.raises(TransactionError, match="finished"):
        probe.get_value_from_tool("t1", "V?", env)


def test_exception_in_an_adapter_tool_is_a_crash_with_its_traceback(calc):
    with pytest.raises(ToolCrashed) as info:
        calc.eval('compute("1/0")', timeout=60)
    assert "ZeroDivisionError" in str(info.value)
    assert "exit status 1" in str(info.value)
    assert info.value.exit_status == 1
    assert calc.eval('compute("6*7")', timeout=TIMEOUT) == parse("42")


def test_queued_request_after_a_crash_gets_a_fresh_tool(probe):
    pid, _ = stamp(probe)
    probe.snd_eval_to_tool("boom", "crash(1)", timeout=60)
    probe.snd_eval_to_tool("next", "stamp", timeout=TIMEOUT)  # queued behind the crash
    env = Environment()
    with pytest.raises(ToolCrashed):
        wait_until(lambda: probe.get_value_from_tool("boom", "V?", env), timeout=QUICK)
    wait_until(lambda: probe.get_value_from_tool("next", "V?", env), timeout=TIMEOUT)
    new_pid, served = env["V"].match("[<int>,<int>]")
    assert new_pid != pid and served == 1


def test_tool_with_events_is_restarted_at_once_after_a_crash(probe):
    pid = probe.pid
    with pytest.raises(ToolCrashed):
        probe.eval("crash(1)", timeout=60)
    wait_until(lambda: probe.alive and probe.pid != pid, timeout=QUICK, what="the restart")


def test_tool_that_exits_before_connecting(start):
    began = time.monotonic()
    with pytest.raises(ToolCrashed) as info:
        start(script_command("exit_at_once.py"), ["eval(f, <int>)"])
    assert time.monotonic() - began < QUICK
    assert type(info.value) is ToolCrashed
    assert info.value.exit_status == 3
    assert "exit status 3" in str(info.value)
    assert "no licence for this tool" in str(info.value)


def test_command_that_does_not_exist(start, tmp_path):
    with pytest.raises(ToolCrashed, match="cannot start"):
        start(str(tmp_path / "no-such-tool"), ["eval(f, <int>)"])


@pytest.mark.parametrize("mode", ["disconnect", "close"])
def test_tool_that_refuses_its_signature(start, mode):
    began = time.monotonic()
    with pytest.raises(ToolCrashed) as info:
        start(script_command("refuse.py", mode), ["eval(f(<int>), <int>)", "event(e, <term>)"])
    assert time.monotonic() - began < QUICK
    message = str(info.value)
    assert "signature" in message
    assert "I do not accept rec-do(signature([rec-eval(f(<int>))],[snd-event(e)]))" in message
    assert "exit status 2" in message


@pytest.mark.parametrize(
    "mode, message", [("absent", "did not connect within 0.5 s"), ("silent", "did not finish the handshake")]
)
def test_tool_that_does_not_start_in_time(start, monkeypatch, mode, message):
    monkeypatch.setattr(external, "START_TIMEOUT", 0.5)
    with pytest.raises(ToolCrashed, match=message) as info:
        start(script_command("refuse.py", mode), ["eval(f, <int>)"])
    assert "killed by SIGKILL" in str(info.value)
    assert info.value.exit_status == -9


def test_tool_that_introduces_itself_under_another_name(start):
    with pytest.raises(ProtocolError) as info:
        start(script_command("refuse.py", "impostor"), ["eval(f, <int>)"])
    message = str(info.value)
    assert message.startswith("tool probe broke the wire protocol during the handshake")
    assert "someone-else" in message


@pytest.mark.parametrize("linger, status", [("false", "exit status 0"), ("true", "killed by SIGKILL")])
def test_tool_that_disconnects_mid_eval(probe, linger, status):
    pid = probe.pid
    with pytest.raises(ToolCrashed, match=f"disconnected; {status}") as info:
        probe.eval(f"leave({linger})", timeout=60)
    assert type(info.value) is ToolCrashed
    assert pid_gone(pid)
    assert stamp(probe)[0] != pid


def test_request_after_the_tool_left_while_idle_gets_a_fresh_tool(start):
    tool = start(script_command("probe.py"), ["do(vanish)", "eval(stamp, <list(<int>)>)"])
    pid = tool.pid
    tool.do("vanish")
    # White box: wait until the bus has read snd-disconnect; the tool lingers, so the crash report
    # (after the grace period) comes later, and the next request arrives in between.
    wait_until(lambda: tool._conn.state is ToolState.CLOSED, timeout=QUICK, what="the snd-disconnect")
    new_pid, served = stamp(tool)
    assert new_pid != pid and served == 1
    assert pid_gone(pid)


def test_terminate_after_a_crash(calc):
    pid = calc.pid
    with pytest.raises(ToolCrashed):
        calc.eval('compute("1/0")', timeout=60)
    calc.terminate("t", "bye")  # no tool runs; nothing to stop, nothing to raise
    assert pid_gone(pid) and group_gone(pid)
    assert not calc.alive


# ---- protocol errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, message",
    [
        ("header", "header must be 11 digits"),
        ("utf8", "not UTF-8"),
        ("aterm", "not an ATerm"),
        ("kind", r"unknown message snd-bogus\(1\)"),
        ("void", "sent snd-void in state blocked-eval"),
    ],
)
def test_garbage_is_a_protocol_error(start, mode, message):
    signatures = ["eval(ok, <int>)", "eval(garbage(<str>), <int>)", "do(poke)"]
    tool = start(script_command("garbage.py"), signatures, name="garbage")
    pid = tool.pid
    assert tool.eval("ok", timeout=TIMEOUT) == parse("1")
    began = time.monotonic()
    with pytest.raises(ProtocolError, match=message) as info:
        tool.eval(f'garbage("{mode}")', timeout=60)
    assert time.monotonic() - began < QUICK
    assert isinstance(info.value, ToolCrashed)
    assert str(info.value).startswith("tool garbage broke the wire protocol: ")
    assert f"sending {mode} garbage" in str(info.value)  # its stderr
    assert pid_gone(pid)  # a tool that broke the protocol is killed
    assert tool.eval("ok", timeout=TIMEOUT) == parse("1")  # the bus stays usable: a fresh tool
    assert tool.pid != pid


def test_value_when_no_eval_is_pending(start, caplog):
    tool = start(script_command("garbage.py"), ["eval(ok, <int>)", "do(poke)"], name="garbage")
    pid = tool.pid
    with caplog.at_level(logging.ERROR, logger="toolbus.instances"):
        tool.do("poke")  # answered with snd-value
        assert tool.eval("ok", timeout=TIMEOUT) == parse("1")  # waits for the broken do; a fresh tool
    assert tool.pid != pid
    assert pid_gone(pid)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("snd-value(1)" in e and "blocked-do" in e for e in errors), errors


# ---- timeouts --------------------------------------------------------------------------------------


def test_timeout_kills_and_replaces_the_tool(probe):
    pid, _ = stamp(probe)
    began = time.monotonic()
    with pytest.raises(ToolTimeout, match="hang"):
        probe.eval("hang", timeout=0.5)
    assert 0.5 <= time.monotonic() - began < QUICK
    assert pid_gone(pid)
    assert group_gone(pid)
    new_pid, served = stamp(probe)
    assert new_pid != pid and served == 1


def test_timeout_through_get_value(probe):
    pid = probe.pid
    probe.snd_eval_to_tool("t1", "hang", timeout=0.3)
    env = Environment()
    with pytest.raises(ToolTimeout):
        wait_until(lambda: probe.get_value_from_tool("t1", "V?", env), timeout=QUICK)
    assert pid_gone(pid)
    assert stamp(probe)[0] != pid


def test_request_that_times_out_in_the_queue(probe):
    probe.snd_eval_to_tool("slow", "hang", timeout=1.0)
    probe.snd_eval_to_tool("queued", "stamp", timeout=0.2)
    env = Environment()
    with pytest.raises(ToolTimeout, match="before it was sent"):
        wait_until(lambda: probe.get_value_from_tool("queued", "V?", env), timeout=QUICK)
    with pytest.raises(ToolTimeout):
        wait_until(lambda: probe.get_value_from_tool("slow", "V?", env), timeout=QUICK)


# ---- terminate and what is left behind -------------------------------------------------------------


def test_terminate_leaves_nothing_behind(probe):
    pid = probe.pid
    pgid = os.getpgid(pid)
    assert pgid == pid  # its own process group
    stamp(probe)
    probe.terminate("t", "bye")
    assert pid_gone(pid)  # terminate returned after the process exited
    assert group_gone(pgid)
    assert not probe.alive
    with pytest.raises(ToolBusError, match="terminated"):
        probe.eval("stamp", timeout=TIMEOUT)


def test_terminate_kills_a_tool_that_does_not_listen(probe):
    pid = probe.pid
    probe.snd_eval_to_tool("t1", "hang", timeout=60)
    began = time.monotonic()
    probe.terminate("t2", "bye")
    assert time.monotonic() - began < QUICK
    assert pid_gone(pid) and group_gone(pid)
    with pytest.raises(ToolCrashed, match="terminated"):
        probe.get_value_from_tool("t1", "V?", Environment())


def test_child_process_is_gone_after_terminate(probe):
    pid = probe.pid
    child = probe.eval("spawn", timeout=TIMEOUT).match("<int>")[0]
    assert not pid_gone(child)
    probe.terminate("t", "bye")
    wait_until(lambda: pid_gone(child), timeout=QUICK, what=f"the child {child} to go")
    assert group_gone(pid)


def test_child_process_is_gone_after_a_crash(probe):
    pid = probe.pid
    child = probe.eval("spawn", timeout=TIMEOUT).match("<int>")[0]
    with pytest.raises(ToolCrashed):
        probe.eval("crash(5)", timeout=60)
    wait_until(lambda: pid_gone(child), timeout=QUICK, what=f"the child {child} to go")
    assert group_gone(pid)


def test_child_process_is_gone_after_a_timeout(probe):
    pid = probe.pid
    child = probe.eval("spawn", timeout=TIMEOUT).match("<int>")[0]
    with pytest.raises(ToolTimeout):
        probe.eval("hang", timeout=0.3)
    wait_until(lambda: pid_gone(child), timeout=QUICK, what=f"the child {child} to go")
    assert group_gone(pid)


# ---- events ----------------------------------------------------------------------------------------


def test_clock_offers_one_show_time_at_a_time(clock):
    clock.do("tick(3)")
    for i in range(3):
        id, env = take_event(clock, "show-time(T?)")
        assert env["T"].match("<str>") is not None
        # Messages arrive in order: once `now` is answered, every event sent before it is here.
        assert clock.eval("now", timeout=TIMEOUT).match("<str>") is not None
        assert clock.offered_events == []  # the next show-time waits for this ack
        assert not clock.get_event_from_tool(f"extra{i}", "show-time(<str>)", Environment())
        clock.snd_ack_to_tool(id, '"ok"')
    clock.eval("now", timeout=TIMEOUT)
    assert clock.offered_events == []


def test_acks_reach_the_tool_with_the_event(probe):
    probe.do("emit(2)")
    id, _ = take_event(probe, "note(1)")
    probe.snd_ack_to_tool(id, "thanks(1)")
    id, _ = take_event(probe, "note(2)")
    probe.snd_ack_to_tool(id, '"two"')
    assert probe.eval("acks", timeout=TIMEOUT) == parse('[ack(note(1),thanks(1)), ack(note(2),"two")]')


def test_bus_holds_back_events_a_tool_sends_early(probe):
    probe.do("burst(3)")  # three note events at once, past the adapter
    stamp(probe)  # everything the tool sent before this answer has arrived
    assert probe.offered_events == [parse("note(1)")]
    for i in (1, 2, 3):
        id, env = take_event(probe, "note(N?)", timeout=0)  # offered at once on the previous ack
        assert env["N"] == parse(str(i))
        assert probe.offered_events == []
        probe.snd_ack_to_tool(id, "ok")


def test_event_sent_right_after_the_handshake(start):
    tool = start(script_command("probe.py", "--emit-at-start"))
    id, _ = take_event(tool, "note(0)")
    tool.snd_ack_to_tool(id, "ok")
    assert tool.eval("acks", timeout=TIMEOUT) == parse("[ack(note(0),ok)]")


def test_event_glued_to_the_handshake(start):
    tool = start(script_command("eager.py"), ["eval(ok, <int>)", "event(note(<int>), <term>)"])
    id, _ = take_event(tool, "note(0)", timeout=QUICK)
    tool.snd_ack_to_tool(id, "ok")
    assert tool.eval("ok", timeout=TIMEOUT) == parse("1")


def test_events_of_a_restarted_tool(start):
    tool = start(script_command("probe.py"), restart_frequency=1)
    tool.do("emit(2)")
    id, _ = take_event(tool, "note(1)")
    pid = tool.pid
    stamp(tool)  # the tool is replaced before this request
    assert tool.pid != pid
    assert tool.offered_events == []  # note(2), held back by the old tool, is gone with it
    with pytest.raises(TransactionError, match="restarted"):
        tool.snd_ack_to_tool(id, "ok")


def test_events_of_a_crashed_tool(probe):
    probe.do("emit(1)")
    id, _ = take_event(probe, "note(1)")
    with pytest.raises(ToolCrashed):
        probe.eval("crash(1)", timeout=60)
    with pytest.raises(TransactionError, match="restarted"):
        probe.snd_ack_to_tool(id, "ok")


# ---- a tool that stops reading ----------------------------------------------------------------------

DEAF_SIGNATURES = ["eval(stamp, <list(<int>)>)", "eval(deafen, <int>)", "eval(echo(<str>), <int>)"]
#: More than the kernel buffers of a loopback connection hold (about 4 MB here).
UNREADABLE = 8_000_000


@pytest.mark.parametrize("timeout", [None, 1.0], ids=["no-timeout", "timeout"])
def test_a_tool_that_stops_reading_cannot_wedge_its_instance(start, monkeypatch, timeout):
    """A request the tool does not take is given up after the call's timeout, or after SEND_TIMEOUT
    when the call has none: the tool is killed, the caller is told (ToolTimeout, or ToolCrashed
    saying why), and the next request gets a fresh tool."""
    monkeypatch.setattr(external, "SEND_TIMEOUT", 1.0)
    deaf = start(script_command("deaf.py"), DEAF_SIGNATURES, name="deaf")
    pid = deaf.pid
    assert deaf.eval("deafen", timeout=TIMEOUT) == parse(str(pid))
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(deaf.eval, f'echo("{"x" * UNREADABLE}")', timeout)
        try:
            error = call.exception(timeout=QUICK)
        except TimeoutError:
            os.kill(pid, 9)  # unblocks the send, so that the test fails instead of hanging
            pytest.fail("the instance is still sending to a tool that stopped reading")
    if timeout is None:
        assert isinstance(error, ToolCrashed), error
        assert "stopped reading" in str(error) and "killed by SIGKILL" in str(error)
    else:
        assert isinstance(error, ToolTimeout), error
    wait_until(lambda: pid_gone(pid), timeout=QUICK, what="the tool that stopped reading to be gone")
    fresh, _, served = deaf.eval("stamp", timeout=TIMEOUT).match("[<int>,<int>,<int>]")
    assert fresh != pid and served == 1
