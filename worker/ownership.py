"""Per-process ownership of tool instances in worker children.

A worker child creates the instance of a tool the first time a task of that tool runs in it, and
owns it until the child ends. Instances are keyed by process id, so an instance is never used by
a process it was inherited into across a fork (the prefork pool forks children from the parent).

When the child ends, its instances are terminated: on Celery's ``worker_process_shutdown`` signal
(sent in the child when the pool retires it, e.g. after ``--max-tasks-per-child``), at interpreter
exit, and -- for a child killed outright -- external tools die with it through the parent-death
signal (see ``toolbus.processes``), while the instance key of the event channel expires.

For each instance with event signatures, one background thread of the child publishes the tool's
events to the event channel as they come, also between tasks, and passes acks back to the tool.
Each task also brings the channel's view of its instance up to date before it returns (``settle``),
so that a caller who has just heard of a crash or of the instance's last request finds acks for the
old tool refused.

Every worker process that runs calls (each prefork child; the main process of the other pools)
also keeps its process key on the event channel alive (``_ProcessBeat``), and the worker's main
process keeps its pool children's keys alive too: a call in a child can silence every thread of the
child for as long as it runs (C code that holds the GIL), and neither its caller nor the callers
acking its tool's events may take that for a death. A child killed on its own is reported to its
caller by the worker's main process (``WorkerLostError``), but when the main process dies the kernel
kills the children with it (Celery arms their parent-death signal) and nobody is left to report
their calls: the caller sees the key of the process running its call expire and raises
``ToolCrashed`` instead of waiting until its timeout (``worker.bus``).

An instance's key on the event channel names its process's key, which says whether it is alive; the
instance key itself only says which tool is running in it, and is replaced when the tool is. So a
long call, which holds the instance and keeps the relay from refreshing anything, does not make a
live instance look dead.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

import redis
from celery import signals
from redis.backoff import NoBackoff
from redis.retry import Retry

from toolbus.aterm import ATerm, parse
from toolbus.descriptors import ToolDescriptor, default_tools_path, load_tools
from toolbus.errors import ToolBusError
from toolbus.instances import ToolInstance, start_tool
from worker import events, health
from worker.events import EventChannel, connect_redis
from worker.process import Heartbeat, ProcessLocal

log = logging.getLogger("worker.ownership")

_ANY = parse("E?")

#: Seconds between two refreshes of a worker process's key (it expires after ``INSTANCE_TTL``).
BEAT_SECS = 1.0
#: Seconds between two attempts of an event relay to reach a Redis that is away.
RETRY_SECS = 1.0
#: Seconds an event relay's connection may take to connect, or a command to answer (a blocking pop
#: for acks waits one second of it).
RELAY_TIMEOUT = 5.0


class _Owned:
    """What one worker process owns: its tool instances, their event relays and its process key."""

    def __init__(self):
        self.lock = threading.Lock()  # the tasks, the relays and shutdown share the dicts below
        self.instances: dict[str, ToolInstance] = {}
        self.relays: dict[str, _EventRelay] = {}
        self.starts_recorded: dict[str, int] = {}  # tool -> starts of its instance already recorded
        self.beat: _ProcessBeat | None = None


_owned: ProcessLocal[_Owned] = ProcessLocal(_Owned)
#: The tools of ``TOOLCALL_TOOLS``, loaded once per process (classes checked).
_descriptors: ProcessLocal[dict[str, ToolDescriptor]] = ProcessLocal(lambda: load_tools(default_tools_path()))


def descriptors() -> dict[str, ToolDescriptor]:
    """The tools of ``TOOLCALL_TOOLS``, loaded once per process (classes checked)."""
    return _descriptors.get()


def instance(tool: str) -> ToolInstance:
    """This process's instance of ``tool``, started on first use."""
    owned = _owned.get()
    with owned.lock:
        inst = owned.instances.get(tool)
        if inst is None:
            descriptor = descriptors().get(tool)
            if descriptor is None:
                raise ToolBusError(f"no tool {tool!r} in {default_tools_path()}")
            inst = owned.instances[tool] = start_tool(descriptor)
            if descriptor.signatures.events:
                owned.relays[tool] = _EventRelay(inst)
        return inst


def instance_name(inst: ToolInstance, tool_id: int | None = None) -> str:
    """The name under which a running tool of an instance (by default the one running now) is known
    on the event channel."""
    return f"{socket.gethostname()}:{os.getpid()}:{inst.name}:{inst.tool_id if tool_id is None else tool_id}"


def settle(tool: str) -> None:
    """Bring the event channel's view of this process's instance of ``tool`` up to date now.

    The tasks call it after every request, before the caller hears how it went: a caller told that
    the tool crashed, or that its instance served its last request, may ack an event of that tool at
    once, and the ack must be refused then, not a second later when the relay next looks.
    """
    owned = _owned.peek()
    if owned is None:
        return
    with owned.lock:
        relay = owned.relays.get(tool)
        inst = owned.instances.get(tool)
        recorded = owned.starts_recorded.get(tool, 0)
        started = inst.starts - recorded if inst is not None else 0
        if started:
            owned.starts_recorded[tool] = inst.starts
    if relay is not None:
        relay.settle()
    if started:
        # Noticed here, after the request that caused it: a successful call costs no Redis round trip.
        health.tool_started(tool, started)


def shutdown() -> None:
    """Terminate this process's instances (idempotent)."""
    owned = _owned.peek()
    if owned is None:
        return
    with owned.lock:
        relays = list(owned.relays.values())
        instances = list(owned.instances.values())
        owned.relays.clear()
        owned.instances.clear()
    for relay in relays:
        relay.stop()
    for inst in instances:
        try:
            inst.terminate("worker", "worker process ends")
        except Exception:
            log.exception("terminating tool %s failed", inst.name)


@signals.worker_process_shutdown.connect
def _on_process_shutdown(**_):
    shutdown()
    _stop_beat()


atexit.register(shutdown)


# ---- the process key --------------------------------------------------------------------------------


def _start_beat(worker: str, children: Callable[[], list[int]] | None = None) -> None:
    """Keep this process's key alive from now on (once per process; a forked child starts its own),
    and the keys of the pool children that ``children()`` lists.

    Called from Celery's signals, which a process sends one at a time."""
    owned = _owned.get()
    if owned.beat is None:
        owned.beat = _ProcessBeat(worker, children)  # talks to Redis: not under the lock the tasks use


def process_key() -> str | None:
    """The key on the event channel that says whether this worker process is alive (None outside a
    worker process)."""
    owned = _owned.peek()
    beat = owned.beat if owned is not None else None
    return events.process_key(beat.worker, beat.pid) if beat is not None else None


def _pool_children(consumer) -> list[int]:
    """The pids of a prefork pool's children that are running (none for the other pools)."""
    processes = getattr(getattr(getattr(consumer, "pool", None), "_pool", None), "_pool", None) or []
    running = []
    for process in list(processes):
        pid = getattr(process, "pid", None)
        if pid and _exists(pid):
            running.append(pid)
    return running


def _exists(pid: int) -> bool:
    """True while process ``pid`` runs (a child that died and awaits its reaping is dead)."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] != b"Z"
    except OSError:
        return True  # no /proc: the signal test is all there is


def _stop_beat() -> None:
    owned = _owned.peek()
    if owned is not None and owned.beat is not None:
        owned.beat.stop()


@signals.worker_process_init.connect
def _on_process_init(sender=None, **_):
    _start_beat(str(sender))  # a prefork child; the sender is the worker's node name


@signals.worker_ready.connect
def _on_worker_ready(sender=None, **_):
    # The solo and thread pools run calls in the main process (prefork: a harmless extra key); a
    # prefork main process also vouches for its children, which it sees alive whatever they run.
    _start_beat(sender.hostname, lambda: _pool_children(sender))


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_):
    _stop_beat()


atexit.register(_stop_beat)


class _ProcessBeat:
    """Refreshes ``toolbus:process:<worker>:<pid>`` every ``BEAT_SECS`` while this process lives, and
    prolongs the keys of the running children that ``children()`` lists.

    The first refresh happens before the process runs any call, so a caller who sees its call
    started (Celery's STARTED state names the worker and pid) finds the key. A refresh that fails
    (Redis unreachable) is logged once and tried again a second later: the key outlives a few.
    """

    def __init__(self, worker: str, children: Callable[[], list[int]] | None = None):
        self.worker = worker
        self.pid = os.getpid()
        # Timeouts: the first refresh runs while the child starts, which must not hang on a Redis away.
        self.channel = EventChannel(connect_redis(socket_connect_timeout=2.0, socket_timeout=2.0))
        self.heartbeat = Heartbeat(
            "toolbus-process-beat",
            BEAT_SECS,
            lambda: self.channel.process_alive(worker, self.pid, children() if children else ()),
            f"worker {worker} pid {self.pid}: cannot refresh its process key",
        )

    def stop(self) -> None:
        self.heartbeat.stop()
        try:
            self.channel.process_gone(self.worker, self.pid)
        except Exception:
            pass  # it expires on its own


class _Outage:
    """Says once that Redis cannot be reached, and once that it answers again (not every retry)."""

    def __init__(self, what: str):
        self.what = what
        self.since: float | None = None

    def failed(self, error: Exception) -> None:
        if self.since is None:
            self.since = time.monotonic()
            log.warning("%s: cannot reach Redis (%s); trying again every %g s", self.what, error, RETRY_SECS)

    def over(self) -> None:
        if self.since is not None:
            log.warning("%s: Redis answers again, after %.0f s", self.what, time.monotonic() - self.since)
            self.since = None


class _EventRelay:
    """Publishes an instance's events and delivers the acks that come back for them.

    Redis may be away at any moment: nothing here gives up on it. An event taken from the instance
    is published again and again until Redis has it (the instance holds back the later events of
    its symbol until it is acked, so losing it would silence that symbol for the instance's life);
    an instance that ended while Redis was away is marked gone once it is back.
    """

    def __init__(self, inst: ToolInstance):
        self.inst = inst
        # Its own retries, every RETRY_SECS, instead of redis-py's; timeouts, so that a Redis that
        # stopped answering cannot hold the relay (or a task's settle) for long.
        self.channel = EventChannel(
            connect_redis(
                socket_connect_timeout=RELAY_TIMEOUT,
                socket_timeout=RELAY_TIMEOUT,
                retry=Retry(NoBackoff(), 0),
            )
        )
        self._stop = threading.Event()
        # The publisher, the acker and the tasks (settle) all update the channel's view.
        self._lock = threading.Lock()
        self._published: str | None = None  # instance name on the channel
        self._buried: set[str] = set()  # ended here, not yet marked gone on the channel
        self._retired: str | None = None  # a running tool that has served its last request
        self._synced = False  # the channel's view was brought up to date by the last _current()
        self._outage = _Outage(f"tool {inst.name}: events")
        self._publisher = threading.Thread(target=self._publish_loop, name=f"events-{inst.name}", daemon=True)
        self._acker = threading.Thread(target=self._ack_loop, name=f"acks-{inst.name}", daemon=True)
        self._publisher.start()
        self._acker.start()

    def stop(self) -> None:
        with self._lock:
            self._stop.set()
            if self._published:
                self._buried.add(self._published)
            self._published = None
            self._bury()

    def settle(self) -> None:
        """After a request: a tool that has served ``restart_frequency`` requests is retired now.

        It is replaced before it serves again -- with its worker child, which Celery recycles after
        this task, or by the instance before the next request -- so acks for its events could never
        be delivered; they are refused from now on. While Redis is away, the relay says so once it
        is back; the task does not wait for it.
        """
        limit = self.inst.descriptor.restart_frequency
        with self._lock:
            if limit and self.inst.alive and self.inst.requests >= limit:
                self._retired = instance_name(self.inst)
        self._current(wait_for_redis=self._outage.since is None)

    def _current(self, wait_for_redis: bool = True) -> str | None:
        """Keep the channel's view of the running tool up to date; returns its name if alive.

        ``_synced`` says whether that view is up to date now (Redis answered)."""
        with self._lock:
            if self._stop.is_set():
                return None
            name = instance_name(self.inst) if self.inst.alive else None
            if name is not None and name == self._retired:
                name = None
            if name != self._published and self._published is not None:
                self._buried.add(self._published)  # recycled, restarted or crashed
            self._published = name
            if wait_for_redis:
                try:
                    self._bury()
                    if name is not None:
                        self.channel.alive(name, process_key())
                except redis.RedisError as e:
                    self._synced = False
                    self._outage.failed(e)
                    return name
                self._synced = True
                self._outage.over()
            else:
                self._synced = False
            return name

    def _bury(self) -> None:
        """Mark the instances that ended here gone on the channel (lock held; raises RedisError)."""
        for name in list(self._buried):
            self.channel.gone(name)
            self._buried.discard(name)

    def _publish_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._current()
                # The event's id on the channel is also its transaction id in the instance.
                event_id = uuid.uuid4().hex
                taken = self.inst.wait_for_event(_ANY, timeout=1.0, id=event_id)
                if taken is None or self._stop.is_set():
                    continue
                # The tool may have been replaced while this loop waited: the event goes out under
                # the name of the tool that emitted it.
                emitter = instance_name(self.inst, self.inst.emitter_of(event_id))
                self._publish(emitter, taken[1]["E"], event_id)
            except ToolBusError as e:
                if self._stop.is_set():
                    return  # the instance was terminated with its child
                log.error("tool %s: %s", self.inst.name, e)  # e.g. an event that fits no signature
            except Exception:
                log.exception("tool %s: publishing events failed", self.inst.name)
                self._stop.wait(RETRY_SECS)

    def _publish(self, emitter: str, event: ATerm, event_id: str) -> None:
        """Publish an event taken from the instance; retried until Redis has it or the child ends
        (a retry after a lost reply adds nothing: ``EventChannel.publish``)."""
        failing_since: float | None = None
        while not self._stop.is_set():
            # A fresh tool is announced before its first event is (an event of an instance not
            # known to be alive is not offered).
            try:
                self._current()
                if not self._synced:
                    raise redis.ConnectionError("the channel's view of the instance could not be updated")
                self.channel.publish(self.inst.name, emitter, event, event_id)
            except redis.RedisError as e:
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning(
                        "tool %s: cannot publish %s yet (%s); trying again every %g s until Redis has it",
                        self.inst.name, event, e, RETRY_SECS,
                    )  # fmt: skip
                self._stop.wait(RETRY_SECS)
                continue
            if failing_since is not None:
                log.warning(
                    "tool %s: published %s, %.0f s late",
                    self.inst.name,
                    event,
                    time.monotonic() - failing_since,
                )
            return

    def _ack_loop(self) -> None:
        while not self._stop.is_set():
            name = self._published
            if name is None:
                self._stop.wait(0.2)
                continue
            try:
                ack = self.channel.next_ack(name, timeout=1.0)
            except redis.RedisError as e:
                self._outage.failed(e)
                self._stop.wait(RETRY_SECS)
                continue
            if ack is None:
                continue
            try:
                event_id, result = ack
                self.inst.snd_ack_to_tool(event_id, result)
            except ToolBusError as e:
                if self._stop.is_set():
                    return
                log.error("tool %s: ack not delivered: %s", self.inst.name, e)
            except Exception:
                log.exception("tool %s: delivering acks failed", self.inst.name)
                self._stop.wait(RETRY_SECS)
