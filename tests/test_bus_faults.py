"""The ToolBus under faults nobody tried before: each test breaks one promise of docs/events.md and
docs/lifecycles.md the way a real fault would, with real worker processes and a real Redis.

- The workers reach Redis (events, acks, liveness keys, records) through a loopback TCP proxy
  (``tests/tcp_proxy.py``) that a test can cut; the broker, the result backend and the test's own
  buses reach it directly.
- Host group ``faults``. The shared worker has one child, which owns ``emitter`` (internal, with
  events) and ``counter`` (internal); ``slow`` (internal) has a worker of its own with one child.

Findings and outcomes: docs/reliability.md, "The ToolBus under faults nobody tried".
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from helpers import TEST_REDIS, wait_until
from tcp_proxy import TcpProxy
from worker_support import counter, emitter, eval_in_thread, running

from toolbus.aterm import make, parse
from toolbus.errors import TransactionError
from worker.bus import Bus
from worker.events import INSTANCE_TTL

pytestmark = pytest.mark.process

GROUP = "faults"
DB = 14
TIMEOUT = 30  # seconds: every call and event expected to come
#: How long a worker may take to notice and report a fault (redis-py retries for a few seconds).
REPORT_TIMEOUT = 60
#: Seconds a call naps while a test breaks something around it.
NAP = 5.0
#: Seconds a call runs that must outlast a worker's liveness keys (INSTANCE_TTL) by far.
NAP_LONG = INSTANCE_TTL + 6.0
#: Seconds a call holds the GIL: past the moment a caller gave up on the silent child (about 6 s).
HOLD = INSTANCE_TTL + 5.0


@pytest.fixture(scope="module")
def redis_proxy():
    """The workers' way to Redis: forwards to the tests' Redis server until cut."""
    server = urlsplit(TEST_REDIS)
    proxy = TcpProxy((server.hostname or "127.0.0.1", server.port or 6379))
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def launcher(tmp_path_factory, redis_proxy):
    tools = {"emitter": emitter(), "counter": counter(), "slow": counter(restart=1000)}
    events_url = f"redis://127.0.0.1:{redis_proxy.port}/{DB}"
    with running(
        tmp_path_factory.mktemp("faults"), tools, group=GROUP, db=DB, concurrency=1, events_url=events_url
    ) as launcher:
        yield launcher


@pytest.fixture(scope="module")
def bus(launcher) -> Bus:
    return launcher.bus()


@pytest.fixture(autouse=True)
def connected(redis_proxy):
    """Every test starts and ends with the workers connected to Redis."""
    redis_proxy.restore()
    yield
    redis_proxy.restore()


class LogWatch:
    """What the launcher's log (every worker writes to it) says from now on."""

    def __init__(self, launcher):
        self.path = launcher.log_path
        self.start = len(self.path.read_bytes())

    def text(self) -> str:
        return self.path.read_bytes()[self.start :].decode("utf-8", "replace")

    def says(self, needle: str) -> bool:
        return needle in self.text()


def acks(bus: Bus, tool: str) -> list:
    return list(bus.eval(tool, "acks", timeout=TIMEOUT))


def wait_for_acks(bus: Bus, tool: str, count: int) -> list:
    """Until ``tool`` has received ``count`` acks in all; returns them."""
    wait_until(lambda: len(acks(bus, tool)) >= count, TIMEOUT, f"{count} acks to reach {tool}")
    return acks(bus, tool)


def exchange(bus: Bus, tool: str, pattern: str = "note(N?)", result: str = "ok"):
    """Take the next event of ``tool`` and ack it; returns the event."""
    event = bus.get_event(tool, pattern, timeout=TIMEOUT)
    bus.ack(event, result)
    return event


# ---- 1. Redis away from the worker ---------------------------------------------------------------------


def test_events_taken_while_the_worker_is_cut_off_from_redis_arrive_once_it_is_back(
    bus, launcher, redis_proxy, tmp_path
):
    """The relay takes an event from the instance, then cannot publish it: it keeps trying until
    Redis is back -- long after redis-py has given up -- and the symbol's later events follow.

    The events are emitted by a call that then naps, holding its instance: the relay can take them
    only once the call has ended, which is after the cut."""
    bus.do("emitter", "emit(1)")
    before = len(acks(bus, "emitter"))
    exchange(bus, "emitter")  # the relay is running
    wait_for_acks(bus, "emitter", before + 1)  # and no note is held back by an ack on its way
    marker = tmp_path / "nap"
    log = LogWatch(launcher)
    bus.do("emitter", make("emit_and_nap(<int>,<str>,<real>)", 2, str(marker), NAP))
    wait_until(marker.exists, TIMEOUT, "the call to emit and nap")
    redis_proxy.cut()
    wait_until(
        lambda: (
            log.says("tool emitter: cannot publish") or log.says("tool emitter: publishing events failed")
        ),
        REPORT_TIMEOUT,
        f"the worker to report that it cannot publish:\n{log.text()}",
        interval=0.2,
    )
    assert Path(f"{marker}.done").exists()  # the events were taken after the cut
    redis_proxy.restore()
    assert exchange(bus, "emitter").term == parse("note(1)")
    assert exchange(bus, "emitter").term == parse("note(2)")  # held back until note(1) was acked


# ---- 2. A long call in the worker child -----------------------------------------------------------------


def test_a_long_internal_call_does_not_make_its_instance_look_dead(bus, tmp_path):
    """An internal call runs under its instance's lock for longer than an instance key lives
    (INSTANCE_TTL): the instance is alive all the while, so its events stay on offer and an ack for
    one of them is taken.

    The time the call lasts is the fault itself: the test acts once that time has passed, while the
    call (a plain sleep, ``NAP_LONG`` s) is still running, and checks that it still is."""
    before = len(acks(bus, "emitter"))
    bus.do("emitter", "emit(1)")
    leased = bus.get_event("emitter", "note(N?)", timeout=TIMEOUT, lease=1.0)  # published
    marker = tmp_path / "nap"
    thread, outcome = eval_in_thread(
        bus, "emitter", make("nap(<str>,<real>)", str(marker), NAP_LONG), TIMEOUT
    )
    wait_until(marker.exists, TIMEOUT, "the call to start")
    running_since = time.monotonic()
    wait_until(
        lambda: time.monotonic() - running_since > INSTANCE_TTL + 1.0,
        TIMEOUT,
        "the call to outlast an instance key",
        interval=0.1,
    )
    again = bus.get_event("emitter", "note(N?)", timeout=TIMEOUT)  # the lease ran out: offered again
    assert (again.id, again.term) == (leased.id, parse("note(1)"))
    bus.ack(again, "during-the-call")
    assert not Path(f"{marker}.done").exists(), "the call ended before the test acked: make NAP_LONG longer"
    thread.join(TIMEOUT)
    assert "value" in outcome, outcome
    assert wait_for_acks(bus, "emitter", before + 1)[-1] == parse("ack(note(1),during-the-call)")


def test_a_call_holding_the_gil_past_the_process_key_expiry_is_not_reported_crashed(bus, tmp_path):
    """A call that never lets go of the GIL (C code: here a foreign call through PyDLL) starves every
    other thread of its worker child, the one that refreshed the child's process key among them.
    The caller must not take the silence for a crash: the child is alive, and the value comes."""
    marker = tmp_path / "hold"
    value = bus.eval("counter", make("hold(<str>,<real>)", str(marker), HOLD), timeout=TIMEOUT)
    assert value == parse(Path(marker).read_text())  # the pid of the child that held the GIL
    assert Path(f"{marker}.done").exists()


def test_a_task_published_twice_runs_once(bus):
    """redis-py retries a command whose reply was lost, so a call's message can reach the queue twice
    under one task id (a retried LPUSH, played here by sending the same message twice). The call runs
    once, and the caller gets the value of that run."""
    queue = bus.tools["counter"].queue
    pid, served = bus.eval("counter", "stamp", timeout=TIMEOUT).match("[<int>,<int>]")
    task_id = uuid.uuid4().hex
    message = {"tool": "counter", "call": "stamp", "deadline": time.time() + TIMEOUT}
    for _ in range(2):
        bus.app.send_task("toolbus.eval", kwargs=message, queue=queue, task_id=task_id)
    result = bus.app.AsyncResult(task_id)
    assert parse(result.get(timeout=TIMEOUT)).match("[<int>,<int>]") == [pid, served + 1]
    # One child serves the queue in order: the copy was handled before the next call.
    assert bus.eval("counter", "stamp", timeout=TIMEOUT).match("[<int>,<int>]") == [pid, served + 2]
    assert parse(result.get(timeout=TIMEOUT)).match("[<int>,<int>]") == [pid, served + 1]


# ---- 3. Two callers and one event -------------------------------------------------------------------------


def test_an_ack_after_the_lease_ran_out_and_another_caller_took_the_event_is_refused(bus):
    """Caller A's lease runs out, caller B leases the event again: A's late ack is refused to A with
    a clear error, and B's ack is the one the tool receives."""
    before = len(acks(bus, "emitter"))
    bus.do("emitter", "emit(1)")
    first = bus.get_event("emitter", "note(N?)", timeout=TIMEOUT, lease=1.0)
    second = bus.get_event("emitter", "note(N?)", timeout=TIMEOUT)  # once the first lease has run out
    assert second.id == first.id
    with pytest.raises(TransactionError, match="another caller has leased the event again"):
        bus.ack(first, "from-a")
    bus.ack(second, "from-b")
    bus.ack(second, "from-b")  # the same caller again (a retry after a lost reply): nothing more is sent
    bus.do("emitter", "emit(1)")  # its ack comes behind anything queued for the first note
    assert exchange(bus, "emitter", result="next").term == parse("note(1)")
    assert wait_for_acks(bus, "emitter", before + 2)[before:] == [
        parse("ack(note(1),from-b)"),
        parse("ack(note(1),next)"),
    ]
