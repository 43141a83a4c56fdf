"""Fault injection: results are stored exactly once, and calls end, whatever dies on the way.

Each scenario has a fast variant (``make test``) and a full one (``TOOLCALL_CHAOS=full``, ``make
chaos``); sizes are ``variant(fast, full)``. Findings and figures: docs/reliability.md.

1. **The callbacks worker killed.** N result fetches against a slow vendor, while the Procfile's
   ``callbacks`` worker (a separate process, thread pool of 32) is killed with SIGKILL K times, each
   time while fetches are under way, and restarted. Recovery: a killed worker's messages are gone
   (``task_acks_late`` is off, and Redis would hand back reserved ones only after its visibility
   timeout), so the ``beat`` process's sweep re-queues every owed fetch once its claim's lease has
   run out.
2. **The broker restarted or wiped.** A private Redis (broker, result backend, the portal's Redis)
   is killed and restarted empty mid-storm (the full variant also reports results while it is
   down); or wiped with FLUSHALL mid-storm. Everything it held is re-queued from the database by the
   sweep. The restart used to make the worker exit most times (kombu 5.7.0, ``KOMBU_RESTORE_CRASH``,
   fixed by turning Redis's ack emulation off): that storm still supervises the worker, and two
   tests pin the fixes (the worker survives restarts; ``/result/`` answers promptly while Redis is
   down).
3. **A tool worker killed as a whole.** A tool call under way when the main process of its worker
   is killed with SIGKILL (the kernel takes the pool child and the tool along) is ``ToolCrashed``
   at the caller, before its timeout; the launcher restarts the worker and the next call works. A
   pool *child* killed mid-call is covered by tests/test_worker_recycling.py
   (``test_a_child_killed_mid_eval_*``); tests/test_worker_calls.py covers a crashing tool.
4. **The database drops the worker's connections.** On PostgreSQL, every connection of the callbacks
   worker is terminated (``pg_terminate_backend``) repeatedly mid-storm, each time while one of them
   is in a statement or transaction.

What "nothing lost" means, checked after every storm: every ToolCall has exactly one result row
(none late), is ``finished-ok`` with exactly the happy path's log (docs/toolbus.md §6), and every fetch record
is ``done``; every report got its 200.

Every process, Redis server and database made here is removed again, also when a test fails.
Nothing is skipped in CI (``CI=true``): a missing redis-server or PostgreSQL fails there.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from chaos_support import (
    POLL_SECS,
    ChaosLauncher,
    RedisServer,
    Storm,
    StormConfig,
    collect_results,
    spread,
    variant,
)
from helpers import CALLBACKS_KEY, UNACKED_KEY, pid_gone, wait_until, write_tools
from portal_support import scratch_postgres_database, unavailable
from sqlalchemy.engine import make_url
from worker_support import counter, eval_in_thread, is_below, probe

from toolbus.aterm import make
from toolbus.errors import ToolCrashed

pytestmark = pytest.mark.process

#: Fast variants shorten the claim's lease so that a killed worker's fetches come back within
#: seconds; the full ones keep production's (120 s), which is then how long recovery takes.
CLAIM_SECS = variant(10.0, None)
#: The longest a storm may wait for anything: with production's lease, the lease plus the sweep.
PATIENCE = variant(90.0, 300.0)


def storm_config(results: int, **overrides) -> StormConfig:
    return StormConfig(results=results, claim_secs=CLAIM_SECS, patience=PATIENCE, **overrides)


# ---- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(name="broker")
def broker_fixture(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own: broker, result backend and the portal's Redis."""
    if not RedisServer.installed():
        unavailable("redis-server is not installed")
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(name="storms")
def storms_fixture(tmp_path: Path) -> Iterator[Callable[..., Storm]]:
    """Makes storms; stops every process of each at the end, whatever happened."""
    made: list[Storm] = []

    def make(
        database_url: str, broker: RedisServer, config: StormConfig, supervised: bool = False, **setup
    ) -> Storm:
        storm = Storm(tmp_path / f"storm-{len(made) + 1}", database_url, broker, config, supervised)
        made.append(storm)
        storm.setup(**setup)
        return storm

    yield make
    failures = []
    for storm in made:
        try:
            storm.close()
        except AssertionError as e:
            failures.append(str(e))
    collect_results()  # before the broker fixture stops Redis
    assert not failures, failures


@pytest.fixture(name="chaos_postgres")
def chaos_postgres_fixture() -> Iterator[str]:
    """A PostgreSQL database of the test's own (``chaos_<random>``), dropped at the end."""
    with scratch_postgres_database("chaos") as url:
        yield url


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'chaos.sqlite3'}"


def settle_and_check(storm: Storm) -> None:
    storm.wait_settled()
    outcome = storm.outcome()
    print(f"\n{outcome.summary()}")
    assert outcome.problems() == [], outcome.summary()


# ---- 1. the callbacks worker killed -----------------------------------------------------------------

KILL_RESULTS = variant(100, 500)
KILLS = variant(4, 20)


@pytest.mark.timeout(variant(170, 1500))
def test_every_result_is_stored_once_although_the_callbacks_worker_is_killed_again_and_again(
    broker, storms, tmp_path
):
    storm = storms(sqlite_url(tmp_path), broker, storm_config(KILL_RESULTS))
    storm.start_worker()
    storm.start_beat()
    storm.report_in_background(storm.tokens)
    for mark in spread(KILL_RESULTS, KILLS):
        storm.wait_fetch_held(mark)  # the kill lands on a fetch under way, however fast the others end
        storm.kill_worker()
        storm.vendor.release()
        storm.start_worker()  # as a supervisor does
    settle_and_check(storm)
    print(f"kills: {storm.kills}")
    assert len(storm.kills) == KILLS
    assert sum(kill.in_flight for kill in storm.kills) >= KILLS


# ---- 2. the broker restarted or wiped ---------------------------------------------------------------

BROKER_RESULTS = variant(100, 500)
BROKER_FAULTS = variant(1, 3)
#: Results reported while the broker is down, at each restart: the portal answers 200 and owes the
#: fetch, but cannot queue its message. Each such report waits ~19 s for Celery's result backend to
#: give up (see test_a_report_while_the_broker_is_down_is_answered_promptly), so the fast variant
#: restarts the broker at once instead.
REPORTED_WHILE_DOWN = variant(0, 8)
#: A vendor this slow keeps messages waiting in the broker for the fault to lose.
BROKER_VENDOR_DELAY = 1.0
#: kombu 5.7.0's Redis transport makes the worker exit on a lost broker connection (below).
KOMBU_RESTORE_CRASH = (
    "kombu 5.7.0 (Redis transport): when the broker connection is lost while the consumer waits in BRPOP "
    "holding reserved messages, Celery closes the channel twice; the second close restores the unacked "
    "messages through a transport already detached from its connection (AttributeError: 'NoneType' object "
    "has no attribute 'hostname'), which Celery treats as unrecoverable: the worker exits with status 1. "
    "Fixed by broker_transport_options ack_emulation=False (celeryconfig.py)."
)


#: Reported at once before each fault: more than the worker takes at once (32 running, 32 reserved),
#: so that messages wait in the queue when the fault strikes.
BURST = 80


@pytest.mark.timeout(variant(120, 900))
def test_every_result_is_stored_although_the_broker_restarts_empty_mid_storm(broker, storms, tmp_path):
    """The worker is supervised here (restarted when it exits, as systemd or Kubernetes would do):
    the broker restart often makes it exit (KOMBU_RESTORE_CRASH); what is checked is that no result is
    lost, including those reported while the broker was down."""
    held = BROKER_FAULTS * REPORTED_WHILE_DOWN
    results = BROKER_RESULTS + BROKER_FAULTS * BURST + held
    config = storm_config(results, vendor_delay=BROKER_VENDOR_DELAY)
    storm = storms(sqlite_url(tmp_path), broker, config, supervised=True)
    first = storm.tokens[:BROKER_RESULTS]
    bursts = storm.tokens[BROKER_RESULTS : BROKER_RESULTS + BROKER_FAULTS * BURST]
    later = storm.tokens[BROKER_RESULTS + BROKER_FAULTS * BURST :]
    storm.start_worker()
    storm.start_beat()
    storm.report_in_background(first)
    outages = []
    for fault, mark in enumerate(spread(BROKER_RESULTS, BROKER_FAULTS)):
        storm.wait_stored(mark)
        with storm.consumption_paused():
            storm.report(bursts[fault * BURST : (fault + 1) * BURST])
            queued, reserved = storm.broker_messages()
            collect_results()
            broker.kill()
            started = time.monotonic()
            storm.report(later[fault * REPORTED_WHILE_DOWN : (fault + 1) * REPORTED_WHILE_DOWN])
            down = time.monotonic() - started
            broker.start()  # on the same port, empty: nothing was persisted
        outages.append(
            {
                "at_stored": mark,
                "queued_lost": queued,
                "reserved": reserved,
                "reported_while_down": REPORTED_WHILE_DOWN,
                "down_secs": round(down, 1),
            }
        )
    settle_and_check(storm)
    print(f"outages: {outages}; worker exits (restarted by the supervisor): {storm.exits}")
    # The restart lost queued messages, and the reports made while it was down never had one: the
    # sweep re-queued their fetches from the database.
    assert sum(outage["queued_lost"] for outage in outages) > 0
    assert storm.outcome().requeued >= max(held, 1)


@pytest.mark.timeout(variant(120, 900))
def test_every_result_is_stored_although_the_broker_is_wiped_mid_storm(broker, storms, tmp_path):
    results = BROKER_RESULTS + BROKER_FAULTS * BURST
    storm = storms(sqlite_url(tmp_path), broker, storm_config(results, vendor_delay=BROKER_VENDOR_DELAY))
    first, bursts = storm.tokens[:BROKER_RESULTS], storm.tokens[BROKER_RESULTS:]
    storm.start_worker()
    storm.start_beat()
    storm.report_in_background(first)
    wipes = []
    for fault, mark in enumerate(spread(BROKER_RESULTS, BROKER_FAULTS)):
        storm.wait_stored(mark)
        with storm.consumption_paused():
            storm.report(bursts[fault * BURST : (fault + 1) * BURST])
            client = broker.client()
            try:
                wipe = client.pipeline(transaction=True)  # counted and wiped at once
                queued, reserved, _ = wipe.llen(CALLBACKS_KEY).hlen(UNACKED_KEY).flushall().execute()
            finally:
                client.close()
        wipes.append({"at_stored": mark, "queued_lost": queued, "reserved": reserved})
    settle_and_check(storm)
    print(f"wipes: {wipes}")
    # Queued messages were lost (a reserved one also runs from the worker's memory) and the sweep
    # re-queued their fetches from the database.
    assert sum(wipe["queued_lost"] for wipe in wipes) > 0 and storm.outcome().requeued > 0


#: Attempts at restarting the broker while the worker waits holding reserved messages: each one
#: makes the worker exit about four times in five (a race between two sockets noticing the loss).
RESTART_ATTEMPTS = 5
RESTART_BATCH = 40


def waiting_with_work_in_hand(storm: Storm) -> bool:
    """The worker has taken every queued message and waits for more while fetches are under way
    (with 32 threads and more reports than that, it also holds some not yet started)."""
    queued, _ = storm.broker_messages()
    return queued == 0 and storm.vendor.in_flight() > 0


@pytest.mark.timeout(variant(120, 300))
def test_the_callbacks_worker_survives_broker_restarts_while_it_holds_reserved_messages(
    broker, storms, tmp_path
):
    config = storm_config(RESTART_ATTEMPTS * RESTART_BATCH, vendor_delay=BROKER_VENDOR_DELAY)
    storm = storms(sqlite_url(tmp_path), broker, config)
    storm.start_worker()
    storm.start_beat()
    for attempt in range(RESTART_ATTEMPTS):
        storm.report(storm.tokens[attempt * RESTART_BATCH : (attempt + 1) * RESTART_BATCH])
        wait_until(
            lambda: waiting_with_work_in_hand(storm),
            PATIENCE,
            "the worker to wait for messages with fetches under way",
            interval=0.005,
        )
        collect_results()
        broker.restart()
        storm.wait_stored((attempt + 1) * RESTART_BATCH)  # fails at once if the worker has exited
    settle_and_check(storm)


#: Longer than a vendor's HTTP client may wait for /result/ (the answer needs no broker).
REPORT_PATIENCE = 5.0


class SlowReport(AssertionError):
    """The vendor waited longer for its 200 than it may."""


@pytest.mark.timeout(60)
def test_a_report_while_the_broker_is_down_is_answered_promptly(broker, storms, tmp_path):
    storm = storms(sqlite_url(tmp_path), broker, storm_config(2))
    storm.report(storm.tokens[:1])  # the portal's Celery app is connected, as in production
    collect_results()
    broker.kill()
    reporting = threading.Thread(target=storm.report, args=(storm.tokens[1:],), daemon=True)
    reporting.start()
    reporting.join(REPORT_PATIENCE)
    answered = not reporting.is_alive()
    broker.start()  # the blocked report reconnects and ends
    reporting.join(30)
    assert storm.report_errors == []
    if not answered:
        raise SlowReport(f"the vendor waited more than {REPORT_PATIENCE:g} s for its 200")


# ---- 3. a tool worker killed as a whole -------------------------------------------------------------

TOOL_GROUP = "chaos"
#: The timeout of the calls under way when their worker is killed: ToolCrashed must come before it.
CALL_TIMEOUT = variant(60.0, 90.0)
#: Calls killed this way, per kind of tool.
TOOL_KILLS = variant(1, 5)
#: A call expected to answer.
TIMEOUT = 30.0


@pytest.fixture(scope="module", name="tool_redis")
def tool_redis_fixture(tmp_path_factory) -> Iterator[RedisServer]:
    if not RedisServer.installed():
        unavailable("redis-server is not installed")
    server = RedisServer(tmp_path_factory.mktemp("chaos-tools-redis"))
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module", name="launcher")
def launcher_fixture(tmp_path_factory, tool_redis) -> Iterator[ChaosLauncher]:
    """The internal Counter and the external probe, both on the shared worker with one child."""
    path = write_tools(
        tmp_path_factory.mktemp("chaos-tools"), {"counter": counter(), "probe": probe(TOOL_GROUP)}
    )
    launcher = ChaosLauncher(path, TOOL_GROUP, tool_redis.url(), concurrency=1)
    launcher.start()
    try:
        launcher.wait_ready()
        yield launcher
    finally:
        collect_results()
        launcher.stop()


def stamp(bus, tool: str) -> tuple[int, int]:
    """(pid of the process serving ``tool``, requests its instance has served)."""
    pid, served = bus.eval(tool, "stamp", timeout=TIMEOUT).match("[<int>,<int>]")
    return pid, served


def kill_worker_main_process(launcher: ChaosLauncher, child: int, outcome: dict) -> int:
    """SIGKILL the main process of the shared worker running ``child``; returns its pid."""
    main = launcher.worker_pids()["toolbus-shared"]
    assert is_below(child, main), f"{child} is not a child of the shared worker {main}"
    outcome["killed"] = time.monotonic()
    os.kill(main, signal.SIGKILL)
    return main


def check_crashed_before_timeout(thread: threading.Thread, outcome: dict) -> None:
    thread.join(CALL_TIMEOUT + 30)
    assert not thread.is_alive(), "the caller is still waiting"
    assert isinstance(outcome.get("error"), ToolCrashed), outcome  # ToolTimeout would be the timeout's doing
    assert outcome["at"] < outcome["started"] + CALL_TIMEOUT, (
        "reported at the timeout, not when the worker died"
    )
    print(
        f"ToolCrashed {outcome['at'] - outcome['killed']:.1f} s after the kill (call timeout {CALL_TIMEOUT:g} s)"
    )


def wait_restarted(launcher: ChaosLauncher, killed: int) -> None:
    """Until the launcher has restarted the killed worker and it answers a ping."""
    wait_until(
        lambda: launcher.worker_pids().get("toolbus-shared") not in (None, killed),
        60,
        f"the launcher to restart the shared worker:\n{launcher.log()}",
        interval=POLL_SECS,
    )
    launcher.wait_ready()


@pytest.mark.timeout(variant(120, 600))
def test_an_internal_call_whose_worker_is_killed_as_a_whole_is_tool_crashed_before_its_timeout(
    launcher, tmp_path
):
    bus = launcher.bus()
    for kill in range(TOOL_KILLS):
        marker = tmp_path / f"nap-{kill}"  # written by the nap once it runs in the worker child
        thread, outcome = eval_in_thread(
            bus, "counter", make("nap(<str>,<real>)", str(marker), 10 * CALL_TIMEOUT), CALL_TIMEOUT
        )
        wait_until(marker.exists, TIMEOUT, "the nap to start in a worker child")
        child = int(marker.read_text())
        marker.unlink()
        killed = kill_worker_main_process(launcher, child, outcome)
        check_crashed_before_timeout(thread, outcome)
        wait_until(lambda child=child: pid_gone(child), 15, "the kernel to end the orphaned child")
        wait_restarted(launcher, killed)
        pid, served = stamp(bus, "counter")
        assert pid != child and served == 1  # a fresh child with a fresh instance
        assert not marker.exists()  # at most once: the nap was not run again


@pytest.mark.timeout(variant(120, 600))
def test_an_external_call_whose_worker_is_killed_as_a_whole_is_tool_crashed_before_its_timeout(launcher):
    bus = launcher.bus()
    for _ in range(TOOL_KILLS):
        tool_process, _ = stamp(bus, "probe")  # one child: this process serves the next call too
        thread, outcome = eval_in_thread(bus, "probe", "hang", CALL_TIMEOUT)
        wait_until(lambda: running(launcher, "hang"), TIMEOUT, "the hanging call to start", interval=0.1)
        killed = kill_worker_main_process(launcher, parent_of(tool_process), outcome)
        check_crashed_before_timeout(thread, outcome)
        wait_until(lambda gone=tool_process: pid_gone(gone), 15, "the tool process to end with its worker")
        wait_restarted(launcher, killed)
        pid, served = stamp(bus, "probe")
        assert pid != tool_process and served == 1


def running(launcher: ChaosLauncher, what: str) -> bool:
    active = launcher.control.inspect(timeout=0.5).active() or {}
    return any(what in str(task.get("kwargs")) for tasks in active.values() for task in tasks)


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


# ---- 4. the database drops the worker's connections --------------------------------------------------

CUT_RESULTS = variant(100, 500)
CUTS = variant(5, 20)
#: The worker's connections are told apart from the portal's by their application_name.
WORKER_APPLICATION = "chaos-callbacks"


@pytest.mark.timeout(variant(170, 1500))
def test_every_result_is_stored_once_although_the_database_drops_the_workers_connections(
    chaos_postgres, broker, storms
):
    # chaos_postgres first: it is dropped last, after the storm's worker has stopped
    worker_url = make_url(chaos_postgres).update_query_dict({"application_name": WORKER_APPLICATION})
    storm = storms(
        chaos_postgres,
        broker,
        storm_config(CUT_RESULTS),
        worker_database_url=worker_url.render_as_string(hide_password=False),
    )
    storm.start_worker()
    storm.start_beat()
    storm.report_in_background(storm.tokens)
    for mark in spread(CUT_RESULTS, CUTS):
        storm.wait_stored(mark)
        storm.cut_worker_connections(WORKER_APPLICATION)
    settle_and_check(storm)
    print(f"cuts: {storm.cuts}")
    assert len(storm.cuts) == CUTS
    assert sum(cut.busy for cut in storm.cuts) > 0  # the cuts hit statements and transactions under way
