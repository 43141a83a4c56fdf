"""``python -m worker tools``: the Celery workers of one host group, supervised.

For the host group (``--host``, default ``localhost``) it runs the tools whose ``host_name`` is that
group plus every internal tool (``host_name = "ToolBus"``):

- one prefork worker of its own for each tool with ``restart_frequency = N > 0``, consuming only
  that tool's queue with ``--max-tasks-per-child N``: each child serves at most N tasks and is then
  replaced together with its tool instance (restart by recycling);
- one shared worker for the tools with ``restart_frequency = 0``.

It stays in the foreground, restarts a worker that dies (saying why), and on SIGTERM or SIGINT
stops every worker -- and with them every tool process -- before it exits.

One launcher per host group and machine: a second one would start workers under the same Celery
node names, serving the same queues with whatever tools file it was given, and the two would
answer each other's callers. So a launcher claims its host group in Redis (``LauncherClaim``) and a
second one refuses to start, naming the first.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import TextIO

from toolbus.descriptors import ToolDescriptor, default_tools_path, load_tools
from toolbus.errors import DescriptorError
from worker import records
from worker.events import PREFIX, connect_redis

log = logging.getLogger("worker.launcher")

#: How long stopping workers get to finish their current calls before they are killed.
STOP_TIMEOUT = 30.0
#: A launcher's claim on its host group lives this long unless refreshed (a killed launcher's claim
#: is gone after it); it is refreshed every CLAIM_REFRESH_SECS.
CLAIM_SECS = 10
CLAIM_REFRESH_SECS = 2.0


@dataclass(frozen=True)
class WorkerSpec:
    name: str
    tools: tuple[str, ...]
    queues: tuple[str, ...]
    max_tasks_per_child: int | None
    concurrency: int


def plan(tools: dict[str, ToolDescriptor], group: str, concurrency: int | None = None) -> list[WorkerSpec]:
    """The workers a host group runs."""
    mine = [t for t in tools.values() if t.internal or t.host_name == group]
    specs = [
        WorkerSpec(f"toolbus-{t.name}", (t.name,), (t.queue,), t.restart_frequency, 1)
        for t in mine
        if t.restart_frequency > 0
    ]
    shared = [t for t in mine if t.restart_frequency == 0]
    if shared:
        specs.append(
            WorkerSpec(
                "toolbus-shared",
                tuple(t.name for t in shared),
                tuple(t.queue for t in shared),
                None,
                concurrency or os.cpu_count() or 2,
            )
        )
    return specs


def command(spec: WorkerSpec, group: str, loglevel: str = "INFO") -> list[str]:
    argv = [
        sys.executable, "-m", "celery", "-A", "worker.app", "worker",
        "--pool", "prefork", "--concurrency", str(spec.concurrency),
        "--queues", ",".join(spec.queues), "--hostname", f"{spec.name}-{group}@%h",
        "--loglevel", loglevel, "--task-events", "--without-mingle", "--without-gossip",
    ]  # fmt: skip
    if spec.max_tasks_per_child:
        argv += ["--max-tasks-per-child", str(spec.max_tasks_per_child)]
    return argv


def node_name(spec: WorkerSpec, group: str) -> str:
    """The Celery node name of a worker of this host (``--hostname`` with ``%h`` expanded)."""
    return f"{spec.name}-{group}@{socket.gethostname()}"


def forget_tool_starts(specs: list[WorkerSpec], group: str) -> None:
    """Start the ops page's tool start counts of these workers afresh: restarts count from here."""
    names = [node_name(spec, group) for spec in specs]
    try:
        records.Records(records.connect()).forget_starts(names)
    except Exception as e:  # Redis away: the workers will say so too, and counting goes on from before
        log.warning("could not reset the tool start counts of %s: %s", ", ".join(names), e)


def list_tools(out: TextIO, err: TextIO) -> int:
    """List the tools; 1 when the workers could not start with this file (the problems go to ``err``).

    The file is checked as the workers check it, internal tool classes imported, so that a listing
    that passes means a launcher that starts. The tools are listed also when some are wrong, if the
    file can be read at all.
    """
    path = default_tools_path()
    problem: DescriptorError | None = None
    try:
        tools = load_tools(path)
    except DescriptorError as e:
        problem = e
        try:
            tools = load_tools(path, check_classes=False)
        except DescriptorError:
            tools = {}
    out.write(f"tools of {path}:\n")
    for t in tools.values():
        where = "every host group (internal)" if t.internal else f"host group {t.host_name}"
        restart = (
            f"restart every {t.restart_frequency} requests" if t.restart_frequency else "never restarted"
        )
        out.write(f"  {t.name:<16} queue {t.queue:<24} {where}; {restart}\n")
        for sig in t.function_signatures:
            out.write(f"      {sig}\n")
    if problem is not None:
        out.flush()
        err.write(f"{problem}\nNo worker can start with this file until that is fixed.\n")
        return 1
    return 0


class GroupTaken(Exception):
    """Another launcher runs this host group on this machine; the message names it."""


class LauncherClaim:
    """This launcher's claim on host group ``group`` of this machine: a Redis key holding who runs it."""

    def __init__(self, group: str, tools_path: str):
        self.key = f"{PREFIX}:launcher:{group}@{socket.gethostname()}"
        self.group = group
        self.value = json.dumps({"pid": os.getpid(), "tools": tools_path, "started": time.time()})
        self.redis = connect_redis(socket_connect_timeout=2.0, socket_timeout=2.0)

    def take(self) -> None:
        """Claim the group; raises ``GroupTaken`` when a live launcher holds it. A Redis that cannot
        be reached is logged and the launcher starts anyway (its workers will need it too)."""
        try:
            if self.redis.set(self.key, self.value, nx=True, ex=CLAIM_SECS):
                return
            holder = json.loads(self.redis.get(self.key) or "{}")
        except Exception as e:
            log.warning("could not claim host group %s in Redis (%s); starting anyway", self.group, e)
            return
        raise GroupTaken(
            f"host group {self.group!r} already runs on this machine: launcher pid {holder.get('pid', '?')} "
            f"with tools file {holder.get('tools', '?')}. A second launcher would take the same worker "
            "names and queues. Stop that one first, or start this one for another host group "
            f"(--host NAME; the tools it serves must have host_name = NAME). A launcher killed outright "
            f"leaves its claim for at most {CLAIM_SECS} s."
        )

    def refresh(self) -> None:
        try:
            self.redis.set(self.key, self.value, xx=True, ex=CLAIM_SECS)
        except Exception as e:
            log.warning("could not refresh the claim on host group %s: %s", self.group, e)

    def release(self) -> None:
        try:
            if self.redis.get(self.key) == self.value.encode():
                self.redis.delete(self.key)
        except Exception:
            pass  # it expires on its own
        self.redis.close()


class _Worker:
    def __init__(self, spec: WorkerSpec, argv: list[str], env: dict[str, str]):
        self.spec = spec
        self.argv = argv
        self.env = env
        self.failures = 0  # quick deaths in a row, for the restart backoff
        self.start()

    def start(self) -> None:
        # Its own session: Ctrl-C in a terminal reaches only the launcher, which stops workers in order.
        self.process = subprocess.Popen(self.argv, env=self.env, start_new_session=True)
        self.started = time.monotonic()
        limit = self.spec.max_tasks_per_child
        print(
            f"started {self.spec.name} (pid {self.process.pid}): tools {', '.join(self.spec.tools)}; "
            f"queues {', '.join(self.spec.queues)}; "
            + (
                f"recycled every {limit} tasks"
                if limit
                else f"{self.spec.concurrency} children, never recycled"
            ),
            flush=True,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # warm shutdown: current calls finish

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait(stopping: threading.Event, seconds: float, claim: LauncherClaim) -> bool:
    """Wait ``seconds`` (a restart's backoff) keeping the claim alive; True when stopping."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if stopping.wait(min(left, CLAIM_REFRESH_SECS)):
            return True
        claim.refresh()
    return stopping.is_set()


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def run(group: str, concurrency: int | None = None, loglevel: str = "INFO") -> int:
    try:
        tools = load_tools(default_tools_path())
    except DescriptorError as e:
        print(f"not started: {e}", file=sys.stderr)
        return 1
    specs = plan(tools, group, concurrency)
    if not specs:
        print(f"no tools for host group {group!r} in {default_tools_path()}", file=sys.stderr)
        return 1
    env = {**os.environ, "TOOLCALL_HOST_GROUP": group, "TOOLCALL_TOOLS": str(default_tools_path())}
    claim = LauncherClaim(group, str(default_tools_path()))
    try:
        claim.take()
    except GroupTaken as e:
        print(f"not started: {e}", file=sys.stderr)
        return 1
    stopping = threading.Event()
    received: list[int] = []

    def on_signal(signum, _frame):
        received.append(signum)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"host group {group}: {len(specs)} worker(s) for {default_tools_path()}", flush=True)
    forget_tool_starts(specs, group)
    workers = [_Worker(spec, command(spec, group, loglevel), env) for spec in specs]
    refreshed = time.monotonic()
    try:
        while not stopping.is_set():
            if time.monotonic() - refreshed >= CLAIM_REFRESH_SECS:
                claim.refresh()
                refreshed = time.monotonic()
            for w in workers:
                code = w.process.poll()
                if code is None:
                    continue
                # Its pool children die with it (Celery arms their parent-death signal), and their
                # tools with them; anything of its process group that is still there goes now.
                w.kill()
                quick = time.monotonic() - w.started < 10
                w.failures = w.failures + 1 if quick else 0
                delay = min(2 ** (w.failures - 1), 30) if quick else 0
                log.error("worker %s (pid %s) died: %s; restarting in %d s", w.spec.name, w.process.pid,
                          _exit_reason(code), delay)  # fmt: skip
                if _wait(stopping, delay, claim):
                    break
                w.start()
            stopping.wait(0.5)
    finally:
        name = signal.Signals(received[0]).name if received else "exit"
        print(f"{name}: stopping {len(workers)} worker(s)", flush=True)
        for w in workers:
            w.stop()
        deadline = time.monotonic() + STOP_TIMEOUT
        for w in workers:
            try:
                w.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %s did not stop within %.0f s; killing it", w.spec.name, STOP_TIMEOUT)
            w.kill()  # the whole group: pool children that outlived their parent go too
            w.process.wait()
        claim.release()
        print("stopped", flush=True)
    return 0
