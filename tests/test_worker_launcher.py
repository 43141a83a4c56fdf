"""The launcher, ``python -m worker tools`` (docs/toolbus.md §6): it supervises its workers -- a worker that dies
is restarted and serves again -- and SIGTERM or SIGINT stops every worker and every tool process
before it exits.

Each test starts a launcher of its own (Redis db 11), because each one ends it or kills part of it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading

import pytest
from helpers import pid_gone, wait_until
from worker_support import PYTHON, Launcher, client_env, counter, descendants, probe, running, write_tools

from toolbus.aterm import make, parse
from toolbus.errors import NoWorker, ToolBusError

pytestmark = pytest.mark.process

GROUP = "launcher"
DB = 11
TIMEOUT = 20


def tools() -> dict[str, dict]:
    return {"counter": counter(), "probe": probe(GROUP), "rprobe": probe(GROUP, restart=2)}


def tool_pid(bus, tool: str) -> int:
    return bus.eval(tool, "stamp", timeout=TIMEOUT).match("[<int>,<int>]")[0]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_every_worker_and_tool_process(tmp_path, sig):
    with running(tmp_path, tools(), group=GROUP, db=DB, concurrency=1) as launcher:
        bus = launcher.bus()
        tool_pids = {tool_pid(bus, "probe"), tool_pid(bus, "rprobe")}
        workers = set(launcher.worker_pids().values())
        everything = launcher.descendants()
        assert tool_pids | workers <= everything
        assert len(everything) >= len(workers) * 2 + len(tool_pids)  # main processes and children
        # Stopped here, with the signal under test; the context manager then finds it stopped.
        launcher.stop(sig)
        assert all(pid_gone(pid) for pid in everything)
        log = launcher.log()
        assert f"{sig.name}: stopping 2 worker(s)" in log and log.rstrip().endswith("stopped")


def test_a_call_in_progress_finishes_during_a_warm_shutdown(tmp_path):
    with running(tmp_path, {"counter": counter()}, group=GROUP, db=DB) as launcher:
        bus = launcher.bus()
        marker = tmp_path / "napping"
        outcome = {}

        def nap():
            outcome["value"] = bus.eval(
                "counter", make("nap(<str>,<real>)", str(marker), 2.0), timeout=TIMEOUT
            )

        caller = threading.Thread(target=nap)
        caller.start()
        wait_until(marker.exists, TIMEOUT, "the nap to start")
        launcher.process.send_signal(signal.SIGTERM)
        caller.join(TIMEOUT)
        assert outcome.get("value") == parse(marker.read_text())


def test_a_worker_that_dies_is_restarted_and_serves_again(tmp_path):
    with running(tmp_path, tools(), group=GROUP, db=DB, concurrency=1) as launcher:
        bus = launcher.bus()
        old_tool = tool_pid(bus, "probe")
        old_worker = launcher.worker_pids()["toolbus-shared"]
        # Its child is busy with a call that never ends when the worker dies.
        hanging = threading.Thread(
            target=lambda: pytest.raises(ToolBusError, bus.eval, "probe", "hang", timeout=5), daemon=True
        )
        hanging.start()
        wait_until(lambda: _running(launcher, "hang"), TIMEOUT, "the hanging call to start")
        old_processes = descendants(old_worker) | {old_worker}
        assert old_tool in old_processes
        os.kill(old_worker, signal.SIGKILL)
        wait_until(
            lambda: launcher.worker_pids().get("toolbus-shared") != old_worker,
            TIMEOUT,
            "the launcher to restart the killed worker",
        )
        assert "toolbus-shared" in launcher.log() and "killed by SIGKILL" in launcher.log()
        launcher.wait_ready()
        assert bus.eval("counter", "add(2,3)", timeout=TIMEOUT) == parse("5")
        new_tool = tool_pid(bus, "probe")
        assert new_tool != old_tool
        # Nothing of the killed worker stays behind: its pool children and their tools are gone.
        wait_until(
            lambda: all(pid_gone(pid) for pid in old_processes), 10, "the killed worker's processes to end"
        )
        assert tool_pid(bus, "rprobe") > 0  # the other worker was not disturbed
        hanging.join(TIMEOUT)


def _running(launcher, what: str) -> list:
    active = launcher.control.inspect(timeout=0.5).active() or {}
    return [t for tasks in active.values() for t in tasks if what in str(t.get("kwargs"))]


def test_a_second_launcher_for_the_same_host_group_refuses_to_start_naming_the_first(tmp_path):
    with running(tmp_path, {"counter": counter()}, group=GROUP, db=DB) as launcher:
        copy = tmp_path / "copy"
        copy.mkdir()
        env = {**launcher.env, "TOOLCALL_TOOLS": str(write_tools(copy, {"counter": counter()}))}
        second = subprocess.run(launcher.argv(), env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1, second.stderr
        assert (
            f"host group {GROUP!r} already runs on this machine: launcher pid {launcher.pid}" in second.stderr
        )
        assert "--host" in second.stderr
        # The first one was not disturbed: its workers still serve.
        assert launcher.bus().eval("counter", make("add(<int>,<int>)", 1, 2), timeout=TIMEOUT) == parse("3")
        assert len(launcher.worker_pids()) == 1


def test_an_unimportable_internal_tool_is_a_clear_error_in_list_and_start_naming_the_pythonpath(tmp_path):
    """The tool's package lies next to the tools file, which is not on the Python path: ``--list`` and
    the launcher both say so without a traceback and exit 1, and the PYTHONPATH they name works."""
    package = tmp_path / "uxtools_launcher"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "texts.py").write_text("class Texts:\n    def stamp(self):\n        return [1, 2]\n")
    path = write_tools(
        tmp_path,
        {
            "texts": {
                "tool_name": "uxtools_launcher.texts:Texts",
                "host_name": "ToolBus",
                "function_signatures": ["eval(stamp, <list(<int>)>)"],
            }
        },
    )
    env = {**os.environ, **client_env(path, DB)}
    expected = f"PYTHONPATH={os.pathsep.join(filter(None, [str(tmp_path), os.environ.get('PYTHONPATH')]))}"
    for argv in (["--list"], ["--host", GROUP]):
        done = subprocess.run(
            [PYTHON, "-m", "worker", "tools", *argv], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 1, (argv, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        assert "cannot import module 'uxtools_launcher.texts'" in done.stderr, done.stderr
        assert expected in done.stderr, done.stderr
    listed = subprocess.run(
        [PYTHON, "-m", "worker", "tools", "--list"],
        env={**env, "PYTHONPATH": expected.partition("=")[2]},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert "texts" in listed.stdout and "toolbus.texts" in listed.stdout


def test_a_call_to_a_tool_no_worker_serves_fails_at_once_naming_its_queue(tmp_path):
    """``faraway`` belongs to a host group nobody runs: its calls are refused before they are sent, not
    left in the queue until their timeout. The tools that are served keep working, also one whose
    worker children are recycled every two calls; after the launcher stops, none is served."""
    served = {"counter": counter(), "rprobe": probe(GROUP, restart=2), "faraway": probe("elsewhere")}
    with running(tmp_path, served, group=GROUP, db=DB, concurrency=1) as launcher:
        bus = launcher.bus()
        for call in (
            lambda: bus.eval("faraway", "stamp", timeout=TIMEOUT),
            lambda: bus.do("faraway", "poke"),
            lambda: bus.eval_many("faraway", ["stamp"], timeout=TIMEOUT),
        ):
            with pytest.raises(NoWorker, match=r"no worker serves toolbus\.faraway"):
                call()
        told = subprocess.run(
            [PYTHON, "-m", "worker", "eval", "faraway", "stamp", "--timeout", str(TIMEOUT)],
            env={**os.environ, **client_env(launcher.tools_path, DB)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert told.returncode == 1 and "NoWorker: no worker serves toolbus.faraway" in told.stderr, told
        assert bus.eval("counter", make("add(<int>,<int>)", 1, 2), timeout=TIMEOUT) == parse("3")
        pids = {tool_pid(bus, "rprobe") for _ in range(5)}  # its worker child is replaced twice meanwhile
        assert len(pids) == 3
        launcher.stop()
        with pytest.raises(NoWorker, match=r"no worker serves toolbus\.counter"):
            launcher.bus().eval("counter", make("add(<int>,<int>)", 1, 2), timeout=TIMEOUT)


def test_a_group_without_tools_is_an_error(tmp_path):
    path = write_tools(tmp_path, {"probe": probe("elsewhere")})
    done = subprocess.run(
        [PYTHON, "-m", "worker", "tools", "--host", GROUP],
        env={**os.environ, **client_env(path, DB)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert f"no tools for host group {GROUP!r}" in done.stderr


def test_the_launcher_plans_one_worker_per_recycled_tool_and_one_shared(tmp_path):
    path = write_tools(tmp_path, tools())
    launcher = Launcher(path, GROUP, DB, concurrency=1)
    host = launcher.worker_names()[0].split("@")[1]
    assert sorted(launcher.worker_names()) == sorted(
        [f"toolbus-rprobe-{GROUP}@{host}", f"toolbus-shared-{GROUP}@{host}"]
    )
