"""Restart by worker recycling (docs/toolbus.md §6): a tool with ``restart_frequency = N`` has a worker of its
own whose child serves at most N tasks and is replaced together with its tool instance; eval_many
ships at most N calls per task; a child killed mid-call is ``ToolCrashed`` at the caller at once.

One launcher (Redis db 9): ``recycled`` is the internal Counter with N = 3, ``precycled`` the external
probe with N = 2.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from helpers import pid_gone, wait_until
from worker_support import counter, eval_in_thread, is_below, probe, running

from toolbus.aterm import make, parse
from toolbus.errors import SignatureError, ToolCrashed
from worker.bus import Bus

pytestmark = pytest.mark.process

GROUP = "recycling"
N_INTERNAL = 3
N_EXTERNAL = 2
TIMEOUT = 20
#: A child killed mid-call is reported well before the call's own timeout.
LOST_TIMEOUT = 60


@pytest.fixture(scope="module")
def launcher(tmp_path_factory):
    tools = {"recycled": counter(restart=N_INTERNAL), "precycled": probe(GROUP, restart=N_EXTERNAL)}
    with running(tmp_path_factory.mktemp("recycling"), tools, group=GROUP, db=9) as launcher:
        yield launcher


@pytest.fixture(scope="module")
def bus(launcher) -> Bus:
    return launcher.bus()


def stamp(bus: Bus, tool: str) -> tuple[int, int]:
    pid, served = bus.eval(tool, "stamp", timeout=TIMEOUT).match("[<int>,<int>]")
    return pid, served


def fresh_cycle(bus: Bus, tool: str, n: int) -> int:
    """Call ``stamp`` until the tool's instance has served exactly ``n`` requests, so that the next
    request goes to a fresh instance; returns the pid that served them."""
    for _ in range(n + 1):
        pid, served = stamp(bus, tool)
        assert served <= n
        if served == n:
            return pid
    raise AssertionError(f"{tool} never reached {n} requests")


def check_cycles(stamps: list[tuple[int, int]], n: int, fresh_processes: bool = True) -> None:
    """Starting from a fresh instance: n requests per instance, then a fresh instance counting from 1
    (with ``fresh_processes``, in a process of its own)."""
    expected_counts = [i % n + 1 for i in range(len(stamps))]
    assert [served for _, served in stamps] == expected_counts, stamps
    cycles = [stamps[i : i + n] for i in range(0, len(stamps), n)]
    for cycle in cycles:
        assert len({pid for pid, _ in cycle}) == 1, f"one process per cycle: {stamps}"
    pids = [cycle[0][0] for cycle in cycles]
    if fresh_processes:
        assert len(set(pids)) == len(pids), f"a fresh process for every cycle: {stamps}"


def test_an_internal_instance_serves_n_requests_then_a_fresh_child_takes_over(bus, launcher):
    before = fresh_cycle(bus, "recycled", N_INTERNAL)
    stamps = [stamp(bus, "recycled") for _ in range(2 * N_INTERNAL + 1)]
    check_cycles(stamps, N_INTERNAL)
    assert before not in {pid for pid, _ in stamps}
    for pid, _ in stamps:
        assert pid not in launcher.worker_pids().values()  # the tool lives in the pool child


def test_an_external_tool_is_a_fresh_process_after_n_requests(bus, launcher):
    fresh_cycle(bus, "precycled", N_EXTERNAL)
    stamps = [stamp(bus, "precycled") for _ in range(2 * N_EXTERNAL + 1)]
    check_cycles(stamps, N_EXTERNAL)
    worker = launcher.worker_pids()["toolbus-precycled"]
    for pid, _ in stamps[:-1]:
        wait_until(lambda pid=pid: pid_gone(pid), 10, f"the replaced tool process {pid} to end")
    assert is_below(stamps[-1][0], worker)  # the current one runs under the tool's worker


def test_dos_count_as_requests(bus):
    fresh_cycle(bus, "recycled", N_INTERNAL)
    bus.app.AsyncResult(bus.do("recycled", "poke")).get(timeout=TIMEOUT)
    pid, served = stamp(bus, "recycled")
    assert served == 2
    pid_next, served_next = stamp(bus, "recycled")
    assert (pid_next, served_next) == (pid, 3)
    assert stamp(bus, "recycled")[0] != pid


def test_a_task_refused_by_the_signature_check_never_lets_an_instance_serve_more(bus):
    fresh_cycle(bus, "recycled", N_INTERNAL)
    raw = bus.app.send_task(
        "toolbus.eval", kwargs={"tool": "recycled", "call": "stamp(1)"}, queue="toolbus.recycled"
    )
    with pytest.raises(SignatureError):
        raw.get(timeout=TIMEOUT)
    stamps = [stamp(bus, "recycled") for _ in range(N_INTERNAL + 1)]
    assert all(served <= N_INTERNAL for _, served in stamps), stamps
    for (pid_a, served_a), (pid_b, served_b) in zip(stamps, stamps[1:]):
        assert (pid_b == pid_a and served_b == served_a + 1) or served_b == 1, stamps


@pytest.mark.parametrize("tool,n", [("recycled", N_INTERNAL), ("precycled", N_EXTERNAL)])
def test_eval_many_ships_at_most_n_calls_per_task(bus, monkeypatch, tool, n):
    """A child may run N batches of N calls before it is recycled: the instance restarts after N
    requests all the same (a fresh object for an internal tool, a fresh process for an external one)."""
    fresh_cycle(bus, tool, n)
    sizes = []
    send = bus._send

    def recording_send(task, tool_name, args):
        sizes.append(len(args["calls"]))
        return send(task, tool_name, args)

    monkeypatch.setattr(bus, "_send", recording_send)
    results = bus.eval_many(tool, ["stamp"] * (2 * n + 1), timeout=TIMEOUT)
    assert sizes == [n, n, 1]
    stamps = [tuple(r.match("[<int>,<int>]")) for r in results]
    check_cycles(stamps, n, fresh_processes=tool == "precycled")


def test_eval_many_values_stay_in_order_across_chunks(bus):
    calls = [make("add(<int>,<int>)", i, 100) for i in range(3 * N_INTERNAL + 2)]
    assert bus.eval_many("recycled", calls, timeout=TIMEOUT) == [
        parse(str(i + 100)) for i in range(len(calls))
    ]


# ---- a child killed mid-call ------------------------------------------------------------------------


def test_a_child_killed_mid_eval_is_tool_crashed_at_once(bus, launcher, tmp_path):
    marker = tmp_path / "napping"
    thread, outcome = eval_in_thread(bus, "recycled", make("nap(<str>,<real>)", str(marker), 300.0), 120)
    wait_until(marker.exists, TIMEOUT, "the nap to start in a worker child")
    child = int(Path(marker).read_text())
    assert is_below(child, launcher.worker_pids()["toolbus-recycled"])
    killed = time.monotonic()
    os.kill(child, signal.SIGKILL)
    thread.join(LOST_TIMEOUT)
    assert not thread.is_alive(), "the caller is still waiting for a killed child"
    assert isinstance(outcome.get("error"), ToolCrashed), outcome
    assert "lost" in str(outcome["error"])
    assert outcome["at"] - killed < 15, "reported when the child was lost, not at the call's timeout"
    pid, served = stamp(bus, "recycled")
    assert pid != child and served == 1  # a fresh child with a fresh instance, and no re-run


def test_a_child_killed_mid_eval_takes_its_tool_process_along(bus, launcher):
    pid, served = stamp(bus, "precycled")
    if served == N_EXTERNAL:  # the next request goes to a fresh child: start one
        pid, served = stamp(bus, "precycled")
    thread, outcome = eval_in_thread(bus, "precycled", "hang", 120)
    wait_until(lambda: _running(launcher, "hang"), TIMEOUT, "the hanging call to start")
    tool_process = pid
    child = _parent(tool_process)
    assert is_below(child, launcher.worker_pids()["toolbus-precycled"])
    killed = time.monotonic()
    os.kill(child, signal.SIGKILL)
    thread.join(LOST_TIMEOUT)
    assert not thread.is_alive()
    assert isinstance(outcome.get("error"), ToolCrashed), outcome
    assert outcome["at"] - killed < 15
    wait_until(lambda: pid_gone(tool_process), 10, "the killed child's tool process to end")
    assert stamp(bus, "precycled")[1] == 1


def _running(launcher, what: str) -> list:
    active = launcher.control.inspect(timeout=0.5).active() or {}
    return [t for tasks in active.values() for t in tasks if what in str(t.get("kwargs"))]


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
