"""Calls through Celery (docs/toolbus.md §6): eval, do, eval_many, errors at the caller, signature checks on
both sides, many concurrent callers, and the ``python -m worker`` command line.

One launcher (Redis db 8) serves the whole module: the shared worker runs the internal tools and the
external probe of host group ``calls``.
"""

from __future__ import annotations

import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import celery
import pytest
from helpers import wait_until
from worker_support import PYTHON, calc, client_env, counter, probe, running

from toolbus.aterm import make, parse
from toolbus.errors import (
    SignatureError,
    ToolBusError,
    ToolCrashed,
    ToolError,
    ToolTimeout,
)
from worker.bus import Bus

pytestmark = pytest.mark.process

GROUP = "calls"
TIMEOUT = 20  # seconds: the timeout of every call expected to answer


@pytest.fixture(scope="module")
def launcher(tmp_path_factory):
    tools = {"calc": calc(), "counter": counter(), "probe": probe(GROUP)}
    with running(tmp_path_factory.mktemp("calls"), tools, group=GROUP, db=8, concurrency=2) as launcher:
        yield launcher


def stamp(bus: Bus, tool: str) -> tuple[int, int]:
    """(pid of the process serving ``tool``, requests its instance has served)."""
    pid, served = bus.eval(tool, "stamp", timeout=TIMEOUT).match("[<int>,<int>]")
    return pid, served


@pytest.fixture(scope="module")
def bus(launcher) -> Bus:
    return launcher.bus()


# ---- eval and do ------------------------------------------------------------------------------------


def test_the_bus_has_its_own_app_configured_from_the_environment(bus, launcher):
    assert bus.app is not celery.current_app
    assert bus.app.conf.broker_url == bus.app.conf.result_backend == launcher.env["REDIS_URL"]
    assert set(bus.tools) == {"calc", "counter", "probe"}


def test_eval_returns_the_value_as_a_term(bus):
    assert bus.eval("calc", 'compute("1+2*3")', timeout=TIMEOUT) == parse("7")
    assert bus.eval("counter", make("add(<int>,<int>)", 20, 22), timeout=TIMEOUT) == parse("42")


def test_eval_of_an_external_tool(bus, launcher):
    pid, served = stamp(bus, "probe")
    assert served >= 1
    assert pid not in launcher.worker_pids().values()  # a tool process of its own


def test_a_call_is_known_by_its_tool_in_flower_and_the_worker_statistics(bus):
    """Every call is a toolbus.eval task; its shadow name (Flower's list, the logs, the statistics)
    names the tool, so calls of different tools can be told apart at a glance."""
    bus.eval("calc", 'compute("2*2")', timeout=TIMEOUT)
    stats = bus.app.control.inspect(timeout=5).stats() or {}
    names = {name for worker in stats.values() for name in (worker.get("total") or {})}
    assert "toolbus.eval:calc" in names, names


def test_another_celery_app_on_the_same_redis_database_does_not_see_our_workers(bus):
    """Celery's keys carry the project's prefix: a project of its own on the same Redis database
    (database 0 is everybody's default) neither sees our workers nor gets our tasks."""
    ours = bus.app.control.inspect(timeout=2).stats() or {}
    stranger = celery.Celery("stranger", broker=bus.app.conf.broker_url, backend=bus.app.conf.result_backend)
    assert ours and not (stranger.control.inspect(timeout=2).stats() or {})


def test_do_returns_at_once_and_runs_as_a_task(bus):
    task_id = bus.do("counter", "poke")
    assert isinstance(task_id, str)
    result = bus.app.AsyncResult(task_id)
    assert result.get(timeout=TIMEOUT) is None
    assert result.state == "SUCCESS"


def test_a_failed_do_shows_as_a_failed_task(bus):
    result = bus.app.AsyncResult(bus.do("counter", 'trip("on purpose")'))
    with pytest.raises(ToolError, match="on purpose"):
        result.get(timeout=TIMEOUT)
    assert result.state == "FAILURE"


# ---- errors at the caller ---------------------------------------------------------------------------


def test_an_exception_in_an_internal_tool_is_a_tool_error(bus):
    with pytest.raises(ToolError, match=r"RuntimeError: broken on purpose"):
        bus.eval("counter", 'fail("broken on purpose")', timeout=TIMEOUT)
    assert bus.eval("counter", "add(1,1)", timeout=TIMEOUT) == parse("2")


def test_a_crashing_tool_is_tool_crashed_with_exit_status_and_stderr(bus):
    started = time.monotonic()
    with pytest.raises(ToolCrashed) as caught:
        bus.eval("probe", "crash(3)", timeout=TIMEOUT)
    assert time.monotonic() - started < TIMEOUT / 2  # at once, not at the timeout
    error = caught.value
    assert error.exit_status == 3
    assert "crashing on purpose with status 3" in error.stderr_tail
    assert "exit status 3" in str(error) and "crashing on purpose" in str(error)
    # Whichever child serves next has a running tool (a fresh one where the crash was).
    for _ in range(4):
        assert stamp(bus, "probe")[0] > 0


def test_an_internal_tool_overrunning_its_timeout_is_tool_timeout(bus, tmp_path):
    started = time.monotonic()
    with pytest.raises(ToolTimeout):
        bus.eval("counter", make("nap(<str>,<real>)", str(tmp_path / "nap"), 30.0), timeout=2)
    assert time.monotonic() - started < 10
    assert bus.eval("counter", "add(2,2)", timeout=TIMEOUT) == parse("4")


def test_a_hanging_external_tool_is_tool_timeout_and_is_replaced(bus):
    started = time.monotonic()
    with pytest.raises(ToolTimeout):
        bus.eval("probe", "hang", timeout=2)
    assert time.monotonic() - started < 10
    for _ in range(4):  # both children answer: the hanging tool was killed and replaced
        assert stamp(bus, "probe")[0] > 0


def test_the_timeout_counts_the_time_in_the_queue(bus, tmp_path):
    """Both children are busy for 6 s: a call with a 2 s timeout gets ToolTimeout after about 2 s
    and is not run late."""
    naps = [
        threading.Thread(
            target=bus.eval,
            args=("counter", make("nap(<str>,<real>)", str(tmp_path / f"nap{i}"), 6.0)),
            kwargs={"timeout": TIMEOUT},
        )
        for i in range(2)
    ]
    for nap in naps:
        nap.start()
    try:
        wait_until(lambda: all((tmp_path / f"nap{i}").exists() for i in range(2)), 15, "both naps to start")
        started = time.monotonic()
        with pytest.raises(ToolTimeout):
            bus.eval("counter", "add(1,2)", timeout=2)
        assert time.monotonic() - started < 5
    finally:
        for nap in naps:
            nap.join(TIMEOUT)


def test_an_unknown_tool_is_refused_before_queueing(bus):
    with pytest.raises(ToolBusError, match="unknown tool 'nosuch'"):
        bus.eval("nosuch", "stamp", timeout=TIMEOUT)


# ---- signatures, on both sides ----------------------------------------------------------------------


def test_the_client_checks_signatures_before_queueing(bus, monkeypatch):
    sent = []
    monkeypatch.setattr(bus.app, "send_task", lambda *a, **k: sent.append((a, k)))
    with pytest.raises(SignatureError, match=r"counter.*add\(<int>, ?<int>\)"):
        bus.eval("counter", 'add("1", 2)', timeout=TIMEOUT)
    with pytest.raises(SignatureError):
        bus.do("counter", "poke(1)")
    with pytest.raises(SignatureError):
        bus.eval("counter", "poke")  # a do is not an eval
    assert sent == []


def test_the_worker_checks_signatures_again(bus):
    """A raw task that skipped the client's check is refused by the worker with SignatureError."""
    result = bus.app.send_task(
        "toolbus.eval",
        kwargs={"tool": "counter", "call": 'add("1",2)', "deadline": time.time() + TIMEOUT},
        queue="toolbus.counter",
    )
    with pytest.raises(SignatureError, match="add"):
        result.get(timeout=TIMEOUT)
    result = bus.app.send_task(
        "toolbus.do", kwargs={"tool": "counter", "call": "poke(1)"}, queue="toolbus.counter"
    )
    with pytest.raises(SignatureError, match="poke"):
        result.get(timeout=TIMEOUT)


# ---- eval_many and many callers ---------------------------------------------------------------------


def test_eval_many_returns_values_in_order_with_errors_in_their_slots(bus):
    calls = [make("add(<int>,<int>)", i, 1) for i in range(10)]
    calls[3] = parse('fail("slot three")')
    calls[7] = parse('add("x", 1)')  # refused by the client's check
    results = bus.eval_many("counter", calls, timeout=TIMEOUT)
    assert len(results) == 10
    for i, value in enumerate(results):
        if i == 3:
            assert isinstance(value, ToolError) and "slot three" in str(value)
        elif i == 7:
            assert isinstance(value, SignatureError)
        else:
            assert value == parse(str(i + 1))


def test_eval_many_of_nothing_is_nothing(bus):
    assert bus.eval_many("counter", [], timeout=TIMEOUT) == []


def test_200_concurrent_evals_from_threads_return_the_right_values(bus):
    def call(i):
        return bus.eval("counter", make("add(<int>,<int>)", i, i), timeout=60)

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(call, range(200)))
    assert results == [parse(str(2 * i)) for i in range(200)]


def test_200_sends_then_collect_in_order(bus):
    sent = [
        bus.app.send_task(
            "toolbus.eval",
            kwargs={"tool": "calc", "call": f'compute("{i}*3")', "deadline": time.time() + 60},
            queue="toolbus.calc",
        )
        for i in range(200)
    ]
    assert [r.get(timeout=60) for r in sent] == [str(3 * i) for i in range(200)]


# ---- the command line -------------------------------------------------------------------------------


def _cli(launcher, *args: str) -> subprocess.CompletedProcess:
    env = {**launcher.env, **client_env(launcher.tools_path, launcher.db)}
    return subprocess.run(
        [PYTHON, "-m", "worker", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_cli_eval_prints_the_value(launcher):
    done = _cli(launcher, "eval", "calc", 'compute("6*7")')
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "42"


def test_cli_eval_prints_the_error_and_exits_1(launcher):
    done = _cli(launcher, "eval", "counter", 'fail("cli says no")')
    assert done.returncode == 1
    assert done.stdout == ""
    assert "ToolError" in done.stderr and "cli says no" in done.stderr
    done = _cli(launcher, "eval", "counter", 'add("a", 1)')
    assert done.returncode == 1 and "SignatureError" in done.stderr
    done = _cli(launcher, "eval", "counter", "add(1,")
    assert done.returncode == 1 and "ParseError" in done.stderr


def test_cli_lists_the_tools(launcher):
    done = _cli(launcher, "tools", "--list")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"tools of {launcher.tools_path}:"
    listed = {line.split()[0]: line for line in lines[1:] if not line.startswith("      ")}
    assert set(listed) == {"calc", "counter", "probe"}
    assert "queue toolbus.calc" in listed["calc"] and "every host group (internal)" in listed["calc"]
    assert "queue toolbus.probe" in listed["probe"] and f"host group {GROUP}" in listed["probe"]
    assert "      eval(add(<int>, <int>), <int>)" in lines
