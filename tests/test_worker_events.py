"""Events and acks through the Celery layer (docs/toolbus.md §6): ``get_event`` leases the earliest matching
event, an event not acked within its lease is offered again with the same id, one unacknowledged
event per symbol per instance, and an ack for an instance that is gone is a ``TransactionError``.

One launcher (Redis db 10). The shared worker has one child, so ``emitter`` (internal) and ``probe``
(external) have one instance each; ``remitter`` is an emitter recycled every 3 requests.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
from helpers import wait_until
from worker_support import emitter, probe, running

from toolbus.aterm import ATerm, parse
from toolbus.errors import ToolBusError, ToolCrashed, ToolTimeout, TransactionError
from worker.bus import Bus, Event
from worker.events import INSTANCE_TTL

pytestmark = pytest.mark.process

GROUP = "events"
N = 3
TIMEOUT = 20
#: How long to wait for an event that must not come.
ABSENT = 1.5


@pytest.fixture(scope="module")
def launcher(tmp_path_factory):
    tools = {"emitter": emitter(), "probe": probe(GROUP), "remitter": emitter(restart=N)}
    with running(tmp_path_factory.mktemp("events"), tools, group=GROUP, db=10, concurrency=1) as launcher:
        yield launcher


@pytest.fixture(scope="module")
def bus(launcher) -> Bus:
    return launcher.bus()


@pytest.fixture(autouse=True)
def nothing_left_offered(request):
    """Every test acks what it takes, so that the next one starts with no event on offer."""
    yield
    if "bus" in request.fixturenames:
        bus = request.getfixturevalue("bus")
        for tool in ("emitter", "probe"):
            try:
                ev = bus.get_event(tool, "E?", timeout=0.2)
            except ToolTimeout:
                continue
            bus.ack(ev, "left-over")
            pytest.fail(f"{tool}: {ev.term} was left on offer")


def acks(bus: Bus, tool: str) -> list[ATerm]:
    return list(bus.eval(tool, "acks", timeout=TIMEOUT))


def wait_for_acks(bus: Bus, tool: str, count: int) -> list[ATerm]:
    wait_until(lambda: len(acks(bus, tool)) >= count, TIMEOUT, f"{count} acks to reach {tool}")
    return acks(bus, tool)


def test_get_event_returns_the_event_and_the_ack_reaches_the_tool(bus):
    before = len(acks(bus, "emitter"))
    bus.do("emitter", "emit(1)")
    started = time.monotonic()
    ev = bus.get_event("emitter", "note(N?)", timeout=TIMEOUT)
    assert time.monotonic() - started < 5  # published between tasks, within a second or so
    assert isinstance(ev, Event)
    assert re.fullmatch(r"[0-9a-f]{32}", ev.id)
    assert ev.tool == "emitter"
    assert ev.term == parse("note(1)")
    assert ev.env["N"] == parse("1")
    assert bus.ack(ev, '"ok"') is None
    assert wait_for_acks(bus, "emitter", before + 1)[-1] == parse('ack(note(1),"ok")')


def test_events_of_an_external_tool(bus):
    before = len(acks(bus, "probe"))
    bus.do("probe", "emit(2)")
    for i in (1, 2):
        ev = bus.get_event("probe", "note(N?)", timeout=TIMEOUT)
        assert (ev.tool, ev.term) == ("probe", parse(f"note({i})"))
        bus.ack(ev, f"seen({i})")
    assert wait_for_acks(bus, "probe", before + 2)[-2:] == [
        parse("ack(note(1),seen(1))"),
        parse("ack(note(2),seen(2))"),
    ]


def test_one_unacknowledged_event_per_symbol(bus):
    bus.do("emitter", "emit(3)")
    first = bus.get_event("emitter", "note(N?)", timeout=TIMEOUT)
    assert first.term == parse("note(1)")
    with pytest.raises(ToolTimeout):
        bus.get_event("emitter", "note(N?)", timeout=ABSENT)  # note(2) waits for the ack of note(1)
    bus.ack(first, "ok")
    second = bus.get_event("emitter", "note(N?)", timeout=TIMEOUT)
    assert second.term == parse("note(2)") and second.id != first.id
    bus.ack(second, "ok")
    third = bus.get_event("emitter", "note(N?)", timeout=TIMEOUT)
    assert third.term == parse("note(3)")
    bus.ack(third, "ok")


def test_an_event_not_acked_within_its_lease_is_offered_again_with_the_same_id(bus):
    bus.do("emitter", "emit(1)")
    leased = bus.get_event("emitter", "note(N?)", timeout=TIMEOUT, lease=1.0)
    with pytest.raises(ToolTimeout):
        bus.get_event("emitter", "note(N?)", timeout=0.3)  # leased to the first caller
    again = bus.get_event("emitter", "note(N?)", timeout=TIMEOUT)
    assert again.id == leased.id
    assert again.term == leased.term == parse("note(1)")
    before = len(acks(bus, "emitter"))
    bus.ack(again, "once")
    assert wait_for_acks(bus, "emitter", before + 1)[-1] == parse("ack(note(1),once)")


def test_other_callers_keep_events_that_do_not_match_their_pattern(bus):
    bus.do("emitter", "emit(1)")
    with pytest.raises(ToolTimeout):
        bus.get_event("emitter", "note(7)", timeout=ABSENT)
    with pytest.raises(ToolTimeout):
        bus.get_event("probe", "note(N?)", timeout=0.3)  # another tool's stream
    ev = bus.get_event("emitter", "note(N?)", timeout=TIMEOUT)
    assert ev.term == parse("note(1)")
    bus.ack(ev, "ok")


def test_get_event_times_out_when_nothing_comes(bus):
    started = time.monotonic()
    with pytest.raises(ToolTimeout, match="no event"):
        bus.get_event("emitter", "note(N?)", timeout=1.0)
    assert 0.9 < time.monotonic() - started < 5


def test_get_event_of_an_unknown_tool(bus):
    with pytest.raises(ToolBusError, match="unknown tool"):
        bus.get_event("nosuch", "E?", timeout=1)


def test_an_ack_for_a_crashed_instance_is_a_transaction_error(bus):
    bus.do("probe", "emit(1)")
    ev = bus.get_event("probe", "note(N?)", timeout=TIMEOUT)
    with pytest.raises(ToolCrashed):
        bus.eval("probe", "crash(4)", timeout=TIMEOUT)
    with pytest.raises(TransactionError, match="recycled or has crashed"):
        bus.ack(ev, "too-late")
    # The fresh tool emits and is acked as usual.
    bus.do("probe", "emit(1)")
    fresh = bus.get_event("probe", "note(N?)", timeout=TIMEOUT)
    assert fresh.id != ev.id and fresh.instance != ev.instance
    bus.ack(fresh, "ok")


def test_an_ack_for_a_recycled_instance_is_a_transaction_error(bus):
    for _ in range(N + 1):  # until the instance has served N requests
        if bus.eval("remitter", "stamp", timeout=TIMEOUT).match("[<int>,<int>]")[1] == N:
            break
    bus.do("remitter", "emit(1)")  # request 1 of a fresh instance
    ev = bus.get_event("remitter", "note(N?)", timeout=TIMEOUT)
    for _ in range(N - 1):
        bus.eval("remitter", "stamp", timeout=TIMEOUT)  # requests 2..N: the instance is done
    with pytest.raises(TransactionError):
        bus.ack(ev, "too-late")
    # The next instance is not held back by the old one's unacknowledged note.
    bus.do("remitter", "emit(1)")
    fresh = bus.get_event("remitter", "note(N?)", timeout=TIMEOUT)
    assert fresh.id != ev.id and fresh.instance != ev.instance
    bus.ack(fresh, "ok")


def test_an_ack_for_an_instance_whose_child_was_killed_is_refused_once_its_key_expires(bus, launcher):
    """A child killed outright cannot say that its instances are gone: their keys expire within
    INSTANCE_TTL, and from then on acks for their events are refused."""
    for _ in range(N + 1):  # until the instance has served N requests
        if bus.eval("remitter", "stamp", timeout=TIMEOUT).match("[<int>,<int>]")[1] == N:
            break
    bus.do("remitter", "emit(1)")  # request 1 of a fresh child
    ev = bus.get_event("remitter", "note(N?)", timeout=TIMEOUT)
    pid = bus.eval("remitter", "stamp", timeout=TIMEOUT).match("[<int>,<int>]")[0]  # request 2
    assert f":{pid}:" in ev.instance
    os.kill(pid, signal.SIGKILL)
    refused = []

    def ack_refused() -> bool:
        try:
            bus.ack(ev, "late")
        except TransactionError:
            refused.append(True)
        return bool(refused)

    wait_until(ack_refused, INSTANCE_TTL + 5, "the ack to be refused")
    bus.do("remitter", "emit(1)")
    fresh = bus.get_event("remitter", "note(N?)", timeout=TIMEOUT)
    assert fresh.instance != ev.instance
    bus.ack(fresh, "ok")
