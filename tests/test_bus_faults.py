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

from pathlib import Path
from urllib.parse import urlsplit

import pytest
from helpers import TEST_REDIS, wait_until
from tcp_proxy import TcpProxy
from worker_support import counter, emitter, running

from toolbus.aterm import make, parse
from worker.bus import Bus

pytestmark = pytest.mark.process

GROUP = "faults"
DB = 14
TIMEOUT = 30  # seconds: every call and event expected to come
#: How long a worker may take to notice and report a fault (redis-py retries for a few seconds).
REPORT_TIMEOUT = 60
#: Seconds a call naps while a test breaks something around it.
NAP = 5.0


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
