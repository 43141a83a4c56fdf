"""Calls through Celery keep to their caller's deadline (docs/toolbus.md §6.4, docs/reliability.md):
an internal tool's call that overruns is stopped at the deadline -- also when it waited for a free
worker child first, and also when it holds the GIL -- and an external tool that stops reading its
input cannot wedge its instance. Each time the caller gets ``ToolTimeout`` and the next call is
served by a fresh, working instance.

One launcher (Redis db 11), one worker child: ``counter`` is the internal Counter, ``deaf`` an
external tool (tests/tools/deaf.py) that can be told to stop reading.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import pid_gone, script_command, wait_until
from worker_support import counter, eval_in_thread, running

from toolbus.aterm import make, parse
from toolbus.errors import ToolTimeout
from worker.bus import Bus

pytestmark = pytest.mark.process

GROUP = "deadlines"
TIMEOUT = 20  # seconds: the timeout of every call expected to answer
#: The deadline of the calls that overrun it.
SHORT = 3.0
#: Bytes of a call that a tool which stops reading cannot take: more than the kernel buffers of a
#: loopback connection hold (about 4 MB here).
UNREADABLE = 8_000_000

DEAF_SIGNATURES = ["eval(stamp, <list(<int>)>)", "eval(deafen, <int>)", "eval(echo(<str>), <int>)"]


@pytest.fixture(scope="module")
def launcher(tmp_path_factory):
    tools = {
        "counter": counter(),
        "deaf": {
            "tool_name": script_command("deaf.py"),
            "host_name": GROUP,
            "restart_frequency": 0,
            "function_signatures": DEAF_SIGNATURES,
        },
    }
    with running(tmp_path_factory.mktemp("deadlines"), tools, group=GROUP, db=11, concurrency=1) as launcher:
        yield launcher


@pytest.fixture(scope="module")
def bus(launcher) -> Bus:
    return launcher.bus()


def stamp(bus: Bus) -> tuple[int, int]:
    """(pid of the worker child serving ``counter``, requests its instance has served)."""
    pid, served = bus.eval("counter", "stamp", timeout=TIMEOUT).match("[<int>,<int>]")
    return pid, served


def ended(marker: Path) -> int:
    """Wait until the worker child that ran the call which wrote ``marker`` has ended; its pid."""
    child = int(marker.read_text())
    wait_until(lambda: pid_gone(child), timeout=15, what=f"worker child {child}, which overran, to end")
    return child


# ---- internal tools ---------------------------------------------------------------------------------


@pytest.mark.parametrize("call", ["nap", "hold"])
def test_an_internal_call_that_overruns_is_stopped_at_its_deadline(bus, tmp_path, call):
    """The call would end 2 s after its deadline (``hold`` holds the GIL meanwhile, as a C extension
    can): it is stopped at the deadline, never runs to its end, and the next call finds a fresh
    instance in a fresh worker child."""
    marker = tmp_path / call
    with pytest.raises(ToolTimeout):
        bus.eval("counter", make(f"{call}(<str>,<real>)", str(marker), SHORT + 2), timeout=SHORT)
    child = ended(marker)
    assert not Path(f"{marker}.done").exists(), "the call ran on after its caller was told ToolTimeout"
    pid, served = stamp(bus)
    assert pid != child and served == 1


def test_the_deadline_counts_from_the_call_not_from_when_a_worker_child_took_it(bus, tmp_path):
    """The only child is busy for 3 s; a call with a 5 s timeout waits for it, starts about 3 s in,
    and would run until about 7 s: it is stopped at its deadline, 5 s after it was made."""
    first, second = tmp_path / "first", tmp_path / "second"
    busy, outcome = eval_in_thread(bus, "counter", make("nap(<str>,<real>)", str(first), 3.0), TIMEOUT)
    wait_until(first.exists, timeout=TIMEOUT, what="the first call to start")
    with pytest.raises(ToolTimeout):
        bus.eval("counter", make("nap(<str>,<real>)", str(second), 4.0), timeout=5.0)
    busy.join(TIMEOUT)
    assert "value" in outcome, outcome
    assert second.exists(), "the second call did not start before its deadline: nothing was tested"
    ended(second)
    assert not Path(f"{second}.done").exists(), "the call ran on after its caller was told ToolTimeout"
    assert stamp(bus)[1] == 1


# ---- external tools ---------------------------------------------------------------------------------


def test_an_external_tool_that_stops_reading_is_replaced_at_the_deadline(bus):
    """The call is more than the connection can buffer, and the tool reads none of it: the send
    gives up at the deadline, the tool is killed, and the next call gets a fresh tool from the same
    worker child (the child was never stuck)."""
    deaf, child, _ = bus.eval("deaf", "stamp", timeout=TIMEOUT).match("[<int>,<int>,<int>]")
    assert bus.eval("deaf", "deafen", timeout=TIMEOUT) == parse(str(deaf))
    with pytest.raises(ToolTimeout):
        bus.eval("deaf", make("echo(<str>)", "x" * UNREADABLE), timeout=SHORT)
    wait_until(
        lambda: pid_gone(deaf), timeout=15, what=f"the tool that stopped reading ({deaf}) to be killed"
    )
    fresh, parent, served = bus.eval("deaf", "stamp", timeout=TIMEOUT).match("[<int>,<int>,<int>]")
    assert (fresh != deaf, parent, served) == (True, child, 1)
    assert bus.eval("deaf", make("echo(<str>)", "abc"), timeout=TIMEOUT) == parse("3")
