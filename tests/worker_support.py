"""Running the Celery layer for real in tests: real Redis (or RabbitMQ), real worker processes.

``running(directory, tools, group=..., db=...)`` writes ``directory/tools.toml``, starts
``python -m worker tools --host GROUP`` with its own Redis database (8-15, flushed before and after),
waits until every worker it plans answers a Celery ping, and yields a ``Launcher``. On the way out it
sends SIGTERM and fails the test unless the launcher exits with status 0 and every process it
started -- workers, pool children, tool processes -- is gone.

Waiting for a worker has no event to wait on but its answer to a ping; every wait here is bounded
and fails with the launcher's log when the time runs out.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import redis
from helpers import REPO, TEST_REDIS, pid_gone, script_command, wait_until, write_tools

from toolbus.descriptors import load_tools
from worker import launcher as launcher_module
from worker.bus import Bus

PYTHON = sys.executable
REDIS_SERVER = TEST_REDIS
#: The RabbitMQ of the broker tests; another one can be chosen with TOOLCALL_TEST_RABBITMQ_URL.
RABBITMQ_URL = os.environ.get("TOOLCALL_TEST_RABBITMQ_URL") or "amqp://guest:guest@127.0.0.1:5672//"
#: Seconds the workers of a launcher get to answer their first ping (two cores, several workers).
READY_TIMEOUT = 60.0
#: Seconds a stopping launcher gets: its own stop timeout for the workers, plus the kills.
STOP_TIMEOUT = launcher_module.STOP_TIMEOUT + 15.0

FIXTURE_TOOLS = "tests.fixtures.worker_tools"
COUNTER_SIGNATURES = [
    "eval(stamp, <list(<int>)>)",
    "do(poke)",
    "do(trip(<str>))",
    "eval(add(<int>, <int>), <int>)",
    "eval(nap(<str>, <real>), <int>)",
    "eval(fail(<str>), <int>)",
    "eval(hold(<str>, <real>), <int>)",
]
EMITTER_SIGNATURES = [
    *COUNTER_SIGNATURES,
    "do(emit(<int>))",
    "do(emit_and_nap(<int>, <str>, <real>))",
    "eval(acks, <list>)",
    "event(note(<int>), <term>)",
]
PROBE_SIGNATURES = [
    "eval(stamp, <list(<int>)>)",
    "do(poke)",
    "eval(crash(<int>), <int>)",
    "eval(hang, <int>)",
    "do(emit(<int>))",
    "eval(acks, <list>)",
    "event(note(<int>), <term>)",
]
CALC_SIGNATURES = ["eval(compute(<str>), <int>)", "do(store(<str>, <int>))"]


# ---- tools.toml entries -----------------------------------------------------------------------------


def counter(restart: int = 0) -> dict:
    """Internal: reports its pid and how many requests this instance has served."""
    return {
        "tool_name": f"{FIXTURE_TOOLS}:Counter",
        "host_name": "ToolBus",
        "restart_frequency": restart,
        "function_signatures": COUNTER_SIGNATURES,
    }


def emitter(restart: int = 0) -> dict:
    """Internal: a Counter that also emits note(1..N) through ``bus.emit``."""
    return {
        "tool_name": f"{FIXTURE_TOOLS}:Emitter",
        "host_name": "ToolBus",
        "restart_frequency": restart,
        "function_signatures": EMITTER_SIGNATURES,
    }


def probe(host: str, restart: int = 0) -> dict:
    """External (tests/tools/probe.py): reports its pid, crashes, hangs and emits on demand."""
    return {
        "tool_name": script_command("probe.py"),
        "host_name": host,
        "restart_frequency": restart,
        "function_signatures": PROBE_SIGNATURES,
    }


def calc() -> dict:
    return {
        "tool_name": "examples.tools.calc:Calc",
        "host_name": "ToolBus",
        "function_signatures": CALC_SIGNATURES,
    }


# ---- environment ------------------------------------------------------------------------------------


def redis_url(db: int) -> str:
    assert 8 <= db <= 15, "the worker tests use Redis databases 8-15"
    return f"{REDIS_SERVER}/{db}"


def flush(db: int) -> None:
    client = redis.Redis.from_url(redis_url(db))
    try:
        client.flushdb()
    finally:
        client.close()


def client_env(tools_path: Path, db: int, broker: str | None = None) -> dict[str, str]:
    """The variables that choose the tools file, the broker, the result backend and the event Redis."""
    url = redis_url(db)
    return {
        "TOOLCALL_TOOLS": str(tools_path),
        "REDIS_URL": url,
        "CELERY_BROKER_URL": broker or url,
        "CELERY_RESULT_BACKEND": url,
    }


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set, for the duration (the Bus reads it when constructed)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def broker_reachable(url: str, timeout: float = 3.0) -> bool:
    """True when something accepts connections at the host and port of a broker URL."""
    from kombu.utils.url import url_to_parts

    parts = url_to_parts(url)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout=timeout).close()
    except OSError:
        return False
    return True


# ---- processes --------------------------------------------------------------------------------------


def _parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            parent = _parent_of(int(entry.name))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found and not pid_gone(child):
                found.add(child)
                todo.append(child)
    return found


def is_below(pid: int, ancestor: int) -> bool:
    """True when ``ancestor`` is a parent, grandparent, ... of ``pid``."""
    seen = set()
    while pid and pid not in seen:
        seen.add(pid)
        pid = _parent_of(pid)
        if pid == ancestor:
            return True
    return False


class Launcher:
    """``python -m worker tools --host GROUP`` as a subprocess, with its own Redis database."""

    def __init__(
        self,
        tools_path: Path,
        group: str,
        db: int,
        broker: str | None = None,
        concurrency: int | None = None,
        log_path: Path | None = None,
        events_url: str | None = None,
    ):
        self.tools_path = tools_path
        self.group = group
        self.db = db
        self.broker = broker
        self.concurrency = concurrency
        self.env = {
            **os.environ,
            **client_env(tools_path, db, broker),
            # The workers' own way to the Redis of events and records (e.g. through a TcpProxy);
            # the test's buses keep the direct one.
            **({"REDIS_URL": events_url} if events_url else {}),
            # The fixture tool classes live in tests/, which is not installed.
            "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        }
        self.log_path = log_path or tools_path.parent / f"launcher-{group}.log"
        self.process: subprocess.Popen | None = None
        self._buses: list[Bus] = []
        self._control: Bus | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def argv(self) -> list[str]:
        argv = [PYTHON, "-m", "worker", "tools", "--host", self.group]
        if self.concurrency:
            argv += ["--concurrency", str(self.concurrency)]
        return argv

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv(), env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
            )

    def log(self, lines: int = 80) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def bus(self) -> Bus:
        """A Bus built as an application would: ``Bus()`` with this launcher's environment."""
        with environment(client_env(self.tools_path, self.db, self.broker)):
            bus = Bus()
        self._buses.append(bus)
        return bus

    @property
    def control(self):
        """``app.control`` of a client app on this launcher's broker."""
        if self._control is None:
            self._control = self.bus()
        return self._control.app.control

    def worker_names(self) -> list[str]:
        tools = load_tools(self.tools_path, check_classes=False)
        host = socket.gethostname()
        return [
            f"{spec.name}-{self.group}@{host}"
            for spec in launcher_module.plan(tools, self.group, self.concurrency)
        ]

    def ping(self, names: list[str], timeout: float = 0.5) -> set[str]:
        """The workers among ``names`` that answer a ping within ``timeout``."""
        return {name for reply in self.control.ping(destination=names, timeout=timeout) for name in reply}

    def wait_ready(self, names: list[str] | None = None, timeout: float = READY_TIMEOUT) -> None:
        """Wait until every worker (or those named) answers a ping; fail with the log otherwise."""
        missing = set(names or self.worker_names())
        deadline = time.monotonic() + timeout
        while missing:
            code = self.process.poll()
            if code is not None:
                raise AssertionError(f"the launcher exited with status {code}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"workers {sorted(missing)} did not answer a ping within {timeout:g} s:\n{self.log()}"
                )
            missing -= self.ping(sorted(missing))

    def worker_pids(self) -> dict[str, int]:
        """Worker name (e.g. toolbus-shared) -> pid of its main process, from the launcher's output."""
        pids: dict[str, int] = {}
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("started ") and "(pid " in line:
                name = line.split()[1]
                pids[name] = int(line.split("(pid ", 1)[1].split(")", 1)[0])
        return pids

    def descendants(self) -> set[int]:
        return descendants(self.pid)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop the launcher with ``sig``; fail unless it exits 0 leaving no process behind."""
        for bus in self._buses:
            bus.app.close()
            bus.events.redis.close()
        self._buses.clear()
        self._control = None
        if self.process is None:
            return
        left = self.descendants()
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._kill(left | self.descendants())
            raise AssertionError(
                f"the launcher did not stop within {STOP_TIMEOUT:g} s of {sig.name}:\n{self.log()}"
            ) from None
        try:
            wait_until(
                lambda: all(pid_gone(pid) for pid in left),
                timeout=10,
                what=f"every process of the launcher to end ({sorted(left)})",
            )
        except AssertionError:
            self._kill(left)
            raise
        assert code == 0, f"the launcher exited with status {code}:\n{self.log()}"

    def _kill(self, pids: set[int]) -> None:
        """Last resort after a failed stop, so that a failing test leaves nothing running."""
        for pid in [self.pid, *pids]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()


@contextlib.contextmanager
def running(
    directory: Path,
    tools: dict[str, dict],
    group: str = "localhost",
    db: int = 8,
    broker: str | None = None,
    concurrency: int | None = None,
    flush_db: bool = True,
    events_url: str | None = None,
) -> Iterator[Launcher]:
    """A launcher for ``tools`` in host group ``group``, ready to serve; stopped and checked after.

    ``events_url`` is the workers' REDIS_URL when it is not database ``db`` itself (a proxy to it)."""
    path = write_tools(directory, tools)
    if flush_db:
        flush(db)
    launcher = Launcher(path, group, db, broker, concurrency, events_url=events_url)
    launcher.start()
    try:
        launcher.wait_ready()
        yield launcher
    finally:
        try:
            launcher.stop()
        finally:
            if flush_db:
                flush(db)


def eval_in_thread(bus: Bus, tool: str, call, timeout: float) -> tuple[threading.Thread, dict]:
    """Start ``bus.eval`` in a thread, so that the test can break the worker while the call waits.

    The returned dict has ``started`` (monotonic time) and gets ``value`` or ``error``, then ``at``
    (when the call returned).
    """
    outcome: dict = {"started": time.monotonic()}

    def run():
        try:
            outcome["value"] = bus.eval(tool, call, timeout=timeout)
        except Exception as e:
            outcome["error"] = e
        outcome["at"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome
