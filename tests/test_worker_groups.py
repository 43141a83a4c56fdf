"""Host groups (docs/toolbus.md §6): ``python -m worker tools --host G`` runs the tools pinned to G plus every
internal tool, so a tool pinned to one group never runs in the other.

Two launchers, groups ``alpha`` and ``beta``, share one broker (Redis db 12).
"""

from __future__ import annotations

import contextlib

import pytest
from worker_support import counter, is_below, probe, running

from toolbus.aterm import parse

pytestmark = pytest.mark.process

TIMEOUT = 20
CALLS = 6


@pytest.fixture(scope="module")
def launchers(tmp_path_factory):
    directory = tmp_path_factory.mktemp("groups")
    tools = {"counter": counter(), "pa": probe("alpha"), "pb": probe("beta"), "pb2": probe("beta", restart=2)}
    with contextlib.ExitStack() as stack:
        alpha = stack.enter_context(running(directory, tools, group="alpha", db=12, concurrency=1))
        beta = stack.enter_context(
            running(directory, tools, group="beta", db=12, concurrency=1, flush_db=False)
        )
        yield {"alpha": alpha, "beta": beta}


@pytest.fixture(scope="module")
def bus(launchers):
    return launchers["alpha"].bus()


def stamp_pid(bus, tool: str) -> int:
    return bus.eval(tool, "stamp", timeout=TIMEOUT).match("[<int>,<int>]")[0]


@pytest.mark.parametrize(
    "tool,group,other", [("pa", "alpha", "beta"), ("pb", "beta", "alpha"), ("pb2", "beta", "alpha")]
)
def test_a_pinned_tool_runs_only_in_its_group(bus, launchers, tool, group, other):
    for _ in range(CALLS):
        pid = stamp_pid(bus, tool)
        assert is_below(pid, launchers[group].pid), f"{tool} ran outside host group {group}"
        assert not is_below(pid, launchers[other].pid)


def test_each_group_consumes_only_its_own_queues(launchers):
    for group, launcher in launchers.items():
        queues = launcher.control.inspect(timeout=2).active_queues() or {}
        mine = {
            name: {q["name"] for q in qs} for name, qs in queues.items() if name in launcher.worker_names()
        }
        assert set(mine) == set(launcher.worker_names())
        consumed = set().union(*mine.values())
        assert "toolbus.counter" in consumed  # internal tools run in every group
        pinned = {"alpha": {"toolbus.pa"}, "beta": {"toolbus.pb", "toolbus.pb2"}}
        assert pinned[group] <= consumed
        for other, queues_of_other in pinned.items():
            if other != group:
                assert not consumed & queues_of_other


def test_internal_tools_are_served_by_both_groups(bus, launchers):
    assert bus.eval_many("counter", [f"add({i},{i})" for i in range(20)], timeout=TIMEOUT) == [
        parse(str(2 * i)) for i in range(20)
    ]
    owners = set()
    for _ in range(40):
        pid = stamp_pid(bus, "counter")
        owners |= {group for group, launcher in launchers.items() if is_below(pid, launcher.pid)}
        if owners == {"alpha", "beta"}:
            break
    assert owners == {"alpha", "beta"}


def test_the_workers_know_their_group(launchers):
    for group, launcher in launchers.items():
        for pid in launcher.worker_pids().values():
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
            assert env[b"TOOLCALL_HOST_GROUP"] == group.encode()
