"""Fault injection for ``tests/test_chaos.py``: private Redis servers, a slow vendor, and storms of
result fetches run by real ``callbacks`` and ``beat`` processes, with the counts that say whether
anything was lost or stored twice.

- ``variant(fast, full)``: the fast size by default (``make test``), the full one when
  ``TOOLCALL_CHAOS=full`` (``make chaos``).
- ``RedisServer``: a ``redis-server`` of the test's own on a free loopback port, without persistence
  (``--save "" --appendonly no``), so that a restart comes back empty, as a Redis that crashed
  without a snapshot does. Nothing of the shared Redis is used.
- ``SlowVendor``: the vendor's result URL in a thread of this process, answering each known result
  token after a delay; it counts the requests per token and those under way.
- ``Storm``: N attempts waiting for their results (made through the domain, as the portal makes
  them), the portal app that takes the vendor's reports (Flask test clients in threads), the
  vendor, and the Procfile's ``callbacks`` worker (thread pool, concurrency 32) and ``beat``
  (the sweep every ``sweep_secs``) as separate processes. The test injects faults (kill the worker,
  restart or wipe Redis, cut the worker's database connections) at moments it chooses by waiting
  for events ("k results stored", "a fetch under way at the vendor"), then waits until no fetch is
  owed and reads the ``Outcome`` from the database, the vendor and the worker's log.

A worker that exits without being killed by the test fails it at once, unless the storm is
``supervised``: then it is restarted, as systemd or Kubernetes would, and its exit counted. Every
process is stopped again by ``Storm.close`` (the ``storms`` fixture calls it, also when the test
fails); a worker killed by the test is reaped at once.

The claim's lease: a fetch claimed by a worker that is then killed stays claimed for the lease
(``webapp.fetches.CLAIM_SECS``, 120 s) before the sweep may re-queue it. The full variants
run with that lease; the fast ones shorten it (``StormConfig.claim_secs``, set in the worker process
before Celery starts) so that the suite fits CI's time. The lease must outlast a fetch: the vendor
here answers in well under a second, the shortened lease is 10 s.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import kombu.exceptions
import pytest
import redis
from callbacks_worker import READY_TIMEOUT, CallbacksWorker
from helpers import CALLBACKS_KEY, CALLBACKS_QUEUE, HAPPY_LOG, REPO, UNACKED_KEY, wait_until
from portal_support import PORTAL_ENVIRONMENT
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from worker_support import Launcher, environment

from webapp import create_app, lifecycle
from webapp.db import Database
from webapp.lifecycle import Status
from webapp.models import Client, Exam, ResultFetch, ToolCall, ToolCallLog, ToolCallResult, User, utcnow
from webapp.signing import sign_system
from worker.bus import Bus

FULL = os.environ.get("TOOLCALL_CHAOS", "").strip().lower() == "full"

SECRET_KEY = "the chaos tests' key"
CLIENT = "chaos-vendor"
SLUG = "chaos-exam"
#: Threads reporting results through the portal, as vendors would at once.
REPORTERS = 4
#: How often the test looks at the database while it waits (a storm needs no finer view).
POLL_SECS = 0.2


class WorkerExited(AssertionError):
    """The callbacks worker ended on its own: not killed by the test."""


def variant(fast, full):
    """The fast variant's value, or the full one's under TOOLCALL_CHAOS=full."""
    return full if FULL else fast


def spread(total: int, faults: int) -> list[int]:
    """``faults`` progress marks spread evenly over ``total``: inject a fault at each of them."""
    return [(i + 1) * total // (faults + 1) for i in range(faults)]


def collect_results() -> None:
    """Run the garbage collector now, while the test's Redis is up.

    A Celery ``AsyncResult`` unsubscribes from its result in ``__del__``; when that runs while Redis
    is away (after the test stopped it), Celery retries for ~19 s in whatever code the collector
    interrupted -- in an import, CPython 3.11 then fails with "AST constructor recursion depth
    mismatch". Tests call this before they stop or restart a Redis.
    """
    gc.collect()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---- Redis ------------------------------------------------------------------------------------------


class RedisServer:
    """A redis-server of the test's own; ``restart`` and ``kill`` keep its port."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.starts = 0

    @staticmethod
    def installed() -> bool:
        return shutil.which("redis-server") is not None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url(), socket_connect_timeout=3, socket_timeout=10)

    def start(self) -> None:
        """Start it (again: on the same port, empty); returns once it answers PING."""
        tries = 5 if self.port is None else 1  # a free port can be taken before redis-server binds it
        for _ in range(tries):
            port = self.port or free_port()
            self.process = subprocess.Popen(
                [
                    *(shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1"),
                    *("--save", "", "--appendonly", "no", "--dir", str(self.directory)),
                    *("--logfile", str(self.directory / "redis.log")),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if self._answers(port):
                self.port = port
                self.starts += 1
                return
        raise AssertionError(f"redis-server did not start:\n{self.log()}")

    def _answers(self, port: int) -> bool:
        client = redis.Redis(port=port, socket_connect_timeout=0.5, socket_timeout=2)
        try:
            deadline = time.monotonic() + 15
            while self.process.poll() is None and time.monotonic() < deadline:
                try:
                    return bool(client.ping())
                except redis.ConnectionError:
                    time.sleep(0.02)
            self.kill()
            return False
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: gone at once, with everything it held (nothing is persisted)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait()

    def restart(self) -> None:
        self.kill()
        self.start()

    def log(self, lines: int = 30) -> str:
        try:
            return "\n".join((self.directory / "redis.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# ---- the tool workers -------------------------------------------------------------------------------


class ChaosLauncher(Launcher):
    """``python -m worker tools`` (tests/worker_support.py) on the test's own Redis: broker, result
    backend and events; nothing of the shared Redis databases of the worker tests."""

    def __init__(self, tools_path: Path, group: str, redis_url: str, concurrency: int | None = None):
        super().__init__(tools_path, group, db=8, concurrency=concurrency)  # db 8: replaced just below
        self.redis_url = redis_url
        self.env.update(self.client_env())

    def client_env(self) -> dict[str, str]:
        url = self.redis_url
        return {
            "TOOLCALL_TOOLS": str(self.tools_path),
            "REDIS_URL": url,
            "CELERY_BROKER_URL": url,
            "CELERY_RESULT_BACKEND": url,
        }

    def bus(self) -> Bus:
        with environment(self.client_env()):
            bus = Bus()
        self._buses.append(bus)
        return bus


# ---- the vendor -------------------------------------------------------------------------------------


class SlowVendor:
    """A vendor's result URL that answers each known token's result after ``delay`` seconds (404 for
    a token it does not know), counting requests per token and those under way.

    ``hold_after(n)`` keeps every answer waiting, once ``n`` tokens have had theirs, until
    ``release()``: a fault can then land on a fetch under way whatever the pace of the worker (with
    every report sent at once, the last fetches may all end between two looks of the test)."""

    def __init__(self, delay: float):
        self.delay = delay
        self._lock = threading.Lock()
        self._bodies: dict[str, bytes] = {}
        self._requests: Counter[str] = Counter()
        self._answered: set[str] = set()
        self._in_flight = 0
        self._held = 0
        self._hold_after: int | None = None
        self._released = threading.Condition(self._lock)
        vendor = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
                vendor._answer(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 1024  # 32 fetches connect at once; the default backlog is 5

            def handle_error(self, request, client_address) -> None:
                if not isinstance(sys.exc_info()[1], ConnectionError):
                    super().handle_error(request, client_address)
                # else: a worker killed mid-request -- what these tests do on purpose

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/result/"
        self._thread = threading.Thread(target=self.server.serve_forever, name="slow-vendor", daemon=True)
        self._thread.start()

    def add(self, bodies: dict[str, bytes]) -> None:
        with self._lock:
            self._bodies.update(bodies)

    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def hold_after(self, answered: int) -> None:
        """Hold every answer once ``answered`` tokens have had theirs (at once if they have)."""
        with self._lock:
            self._hold_after = answered

    def held(self) -> int:
        """Requests waiting for ``release()``."""
        with self._lock:
            return self._held

    def release(self) -> None:
        with self._lock:
            self._hold_after = None
            self._released.notify_all()

    def requests(self) -> Counter[str]:
        with self._lock:
            return Counter(self._requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        token = (parse_qs(urlsplit(handler.path).query).get("access_token") or [""])[0]
        with self._lock:
            self._requests[token] += 1
            self._in_flight += 1
            body = self._bodies.get(token)
        try:
            time.sleep(self.delay)  # the vendor's latency: what keeps fetches in flight
            with self._lock:
                while self._hold_after is not None and len(self._answered) >= self._hold_after:
                    self._held += 1
                    self._released.wait()
                    self._held -= 1
                if body is not None:
                    self._answered.add(token)
            handler.send_response(200 if body is not None else 404)
            body = body if body is not None else b'{"error": "unknown token"}'
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        except OSError:
            pass  # the worker that asked was killed meanwhile
        finally:
            with self._lock:
                self._in_flight -= 1


# ---- the callbacks worker ---------------------------------------------------------------------------

#: Runs ``celery ...`` with the claim's lease set first (the task reads the constant at each claim).
_WITH_LEASE = (
    "import webapp.fetches as fetches; fetches.CLAIM_SECS = {secs!r}; "
    "from celery.__main__ import main; main()"
)


class ChaosCallbacksWorker(CallbacksWorker):
    """The Procfile's ``callbacks`` worker, optionally with a shorter claim lease, that can be killed."""

    def __init__(self, name: str, log_path: Path, env: dict[str, str], claim_secs: float | None):
        super().__init__(name, log_path, env)
        self.name = f"{name}@{socket.gethostname()}"
        self.claim_secs = claim_secs

    def argv(self) -> list[str]:
        argv = super().argv()
        if self.claim_secs is None:
            return argv
        assert argv[1:3] == ["-m", "celery"], argv
        return [argv[0], "-c", _WITH_LEASE.format(secs=float(self.claim_secs)), *argv[3:]]

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """As ``CallbacksWorker.wait_ready``, through a broker that has just restarted: a connection
        kombu pooled in this process before the restart fails once, and the next ping reconnects."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return super().wait_ready(timeout=max(1.0, deadline - time.monotonic()))
            except (redis.ConnectionError, kombu.exceptions.OperationalError):
                if time.monotonic() > deadline:
                    raise

    def kill(self) -> None:
        """SIGKILL: no warm shutdown, nothing handed back to the broker, claims left as they are."""
        self.celery.close()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait()


# ---- the storm --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StormConfig:
    results: int
    #: Seconds the vendor takes to answer each fetch.
    vendor_delay: float = 0.3
    #: The sweep's period (beat) and how overdue a fetch must be before the sweep re-queues it.
    sweep_secs: float = 1.0
    grace_secs: float = 3.0
    #: The claim's lease in the worker; None: production's (``webapp.fetches.CLAIM_SECS``).
    claim_secs: float | None = None
    #: The first retry delay (production: 5 s); only database errors cause retries here.
    backoff_base_secs: float = 0.2
    #: Seconds every wait of the storm may take at most (recovery from a kill takes the lease).
    patience: float = 120.0


@dataclass(frozen=True)
class Kill:
    at_stored: int  # results stored when the worker was killed
    in_flight: int  # fetches under way at the vendor
    claimed: int  # fetch records claimed then: by it, or by killed ones whose lease has not run out


@dataclass(frozen=True)
class Cut:
    at_stored: int
    terminated: int  # the worker's connections terminated
    busy: int  # of those, in a statement or a transaction


@dataclass
class Outcome:
    expected: int
    results: int = 0
    toolcalls_with_result: int = 0
    late: int = 0
    finished_ok: int = 0
    off_happy_path: int = 0
    fetches: dict[str, int] = field(default_factory=dict)
    attempts: int = 0
    vendor_requests: int = 0
    refetched_tokens: int = 0
    report_errors: list[str] = field(default_factory=list)
    # From the worker's log (all incarnations): what the recovery took.
    sweeps: int = 0
    requeued: int = 0
    stored_by_tasks: int = 0
    nothing_to_claim: int = 0
    task_errors: int = 0
    task_retries: int = 0

    @property
    def duplicates(self) -> int:
        return self.results - self.toolcalls_with_result

    def problems(self) -> list[str]:
        """What breaks "every result stored exactly once, every ToolCall finished, nothing owed"."""
        found = []
        if self.report_errors:
            found.append(f"{len(self.report_errors)} reports were refused, e.g. {self.report_errors[0]}")
        if self.results != self.expected or self.toolcalls_with_result != self.expected:
            found.append(
                f"{self.results} result rows for {self.toolcalls_with_result} ToolCalls, "
                f"expected {self.expected} for {self.expected}"
            )
        if self.duplicates:
            found.append(f"{self.duplicates} results stored twice")
        if self.late:
            found.append(f"{self.late} results stored as late")
        if self.finished_ok != self.expected:
            found.append(f"{self.expected - self.finished_ok} ToolCalls not finished-ok")
        if self.off_happy_path:
            found.append(f"{self.off_happy_path} ToolCall logs off the happy path")
        if self.fetches != {"done": self.expected}:
            found.append(f"fetch records by state: {self.fetches}, expected {self.expected} done")
        return found

    def summary(self) -> str:
        return (
            f"{self.expected} results expected: {self.results} stored for {self.toolcalls_with_result} "
            f"ToolCalls ({self.duplicates} duplicates, {self.late} late), {self.finished_ok} finished-ok, "
            f"{self.off_happy_path} logs off the happy path, fetches {self.fetches}; "
            f"{self.attempts} fetch attempts, {self.vendor_requests} vendor requests "
            f"({self.refetched_tokens} tokens fetched more than once); worker log: {self.sweeps} sweeps "
            f"re-queued {self.requeued}, {self.stored_by_tasks} stores, {self.nothing_to_claim} messages "
            f"found nothing to claim, {self.task_errors} task errors, {self.task_retries} task retries"
        )


_TASK_LINE = r"Task toolcall\.{name}\[[^\]]+\] {what}"
_SWEEP = re.compile(_TASK_LINE.format(name="sweep", what=r"succeeded in [^:]+: \{'requeued': (\d+)"))
_STORED = re.compile(_TASK_LINE.format(name="fetch_result", what=r"succeeded in [^:]+: 'stored for"))
_NOTHING = re.compile(_TASK_LINE.format(name="fetch_result", what=r"succeeded in [^:]+: 'nothing to do"))
_ERROR = re.compile(_TASK_LINE.format(name=r"(?:fetch_result|sweep)", what="raised unexpected"))
_RETRY = re.compile(_TASK_LINE.format(name="fetch_result", what="retry:"))


class Storm:
    """See the module. Made by the ``storms`` fixture; ``setup`` builds it, ``close`` stops it all."""

    def __init__(
        self,
        directory: Path,
        database_url: str,
        broker: RedisServer,
        config: StormConfig,
        supervised: bool = False,
    ):
        self.directory = directory
        #: Restart the worker when it exits on its own (as systemd or Kubernetes would), counting it in
        #: ``exits``; otherwise such an exit fails the test.
        self.supervised = supervised
        self.exits: list[int] = []
        self._death_reported = False
        self.database_url = database_url
        self.broker = broker
        self.config = config
        self.app = None
        self.vendor: SlowVendor | None = None
        self.worker: ChaosCallbacksWorker | None = None
        self.beat: subprocess.Popen | None = None
        self.tokens: list[str] = []
        self.kills: list[Kill] = []
        self.cuts: list[Cut] = []
        self.incarnations = 0
        self.report_errors: list[str] = []
        self._reporters: list[threading.Thread] = []
        self.worker_log = directory / "callbacks.log"
        self.beat_log = directory / "beat.log"

    # ---- setup -------------------------------------------------------------------------------------

    def setup(self, worker_database_url: str | None = None) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        database = Database(self.database_url)
        database.upgrade()
        database.dispose()
        instance = self.directory / "instance"
        settings = {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.broker.url(),
            "CELERY_BROKER_URL": self.broker.url(),
            "CELERY_RESULT_BACKEND": self.broker.url(),
            "SECRET_KEY": SECRET_KEY,
        }
        with pytest.MonkeyPatch.context() as environment:
            for variable in PORTAL_ENVIRONMENT:
                environment.delenv(variable, raising=False)
            self.app = create_app(
                {**settings, "TESTING": True, "INSTANCE_PATH": instance, "TOOLCALL_RATELIMIT": False}
            )
        self.vendor = SlowVendor(self.config.vendor_delay)
        self.tokens = self._attempts()
        self.worker_env = {
            **settings,
            "DATABASE_URL": worker_database_url or self.database_url,
            "TOOLCALL_INSTANCE": str(instance),
            "TOOLCALL_SWEEP_SECS": str(self.config.sweep_secs),
            "TOOLCALL_REQUEUE_GRACE_SECS": str(self.config.grace_secs),
            "TOOLCALL_FETCH_BACKOFF_BASE_SECS": str(self.config.backoff_base_secs),
        }

    def _attempts(self) -> list[str]:
        """One attempt per user in start-data-sent (the vendor has its start data); the vendor holds
        a valid result (docs/api.md §4) for each, under a result token of its own."""
        bodies: dict[str, bytes] = {}
        with self.db.session() as session:
            client = Client(
                name=CLIENT,
                receive_start_token_url="http://127.0.0.1:9/start/",
                receive_result_token_url=self.vendor.url,
            )
            tool = Exam(client=client, slug=SLUG, name="Chaos exam")
            users = [
                User(username=f"candidate-{i:04d}", password_hash="!") for i in range(self.config.results)
            ]
            session.add_all([client, tool, *users])
            session.flush()
            for i, user in enumerate(users):
                toolcall = lifecycle.create(session, tool, user, "attempt started (chaos)")
                lifecycle.advance(session, toolcall, (Status.START_TK_SENT, "start token issued (chaos)"))
                lifecycle.advance(session, toolcall, (Status.START_DATA_SENT, "start data fetched (chaos)"))
                token = f"R-{toolcall.id}-{secrets.token_hex(6)}"
                bodies[token] = json.dumps(
                    {
                        "token": token,
                        "type": "result",
                        "timestamp": datetime.now(UTC).isoformat(),
                        "data": {
                            "persnr": user.persnr,
                            "participant_id": f"P{i}",
                            "exam": SLUG,
                            "passed": i % 3 != 0,
                            "score": i % 101,
                            "system": sign_system(toolcall.id, SECRET_KEY),
                            "exam_type": "start",
                        },
                    }
                ).encode()
        self.vendor.add(bodies)
        return list(bodies)

    @property
    def db(self) -> Database:
        return self.app.extensions["db"]

    # ---- processes ---------------------------------------------------------------------------------

    def start_worker(self) -> None:
        """A fresh incarnation of the callbacks worker (as a supervisor restarts it); waits until it
        answers a ping."""
        self.incarnations += 1
        self.worker = ChaosCallbacksWorker(
            f"chaos-callbacks-{os.getpid()}-{self.incarnations}",
            self.worker_log,
            self.worker_env,
            self.config.claim_secs,
        )
        self.worker.start()
        self.worker.wait_ready()

    def kill_worker(self) -> Kill:
        kill = Kill(self.stored(), self.vendor.in_flight(), self.claimed())
        self.worker.kill()
        self.kills.append(kill)
        return kill

    @contextlib.contextmanager
    def consumption_paused(self) -> Iterator[None]:
        """The worker consumes no fetch message for the duration (it keeps those it holds), so that
        messages reported meanwhile wait in the broker for a fault to lose them, however fast the
        worker would otherwise have taken them. Consumption resumes once the worker answers again
        (it may be reconnecting to a broker that was restarted)."""
        control, destination = self.worker.celery.control, [self.worker.name]
        assert control.cancel_consumer(CALLBACKS_QUEUE, destination=destination, reply=True)
        try:
            yield
        finally:

            def resumed() -> bool:
                try:
                    return bool(control.add_consumer(CALLBACKS_QUEUE, destination=destination, reply=True))
                except Exception:  # the broker is still coming back
                    return False

            wait_until(resumed, timeout=self.config.patience, what="the worker to consume again")

    def start_beat(self) -> None:
        """The Procfile's ``beat``: the sweep every ``sweep_secs``, its schedule in the instance."""
        with open(self.beat_log, "ab") as log:
            self.beat = subprocess.Popen(
                [
                    *(sys.executable, "-m", "celery", "-A", "worker.app", "beat"),
                    *("--schedule", str(self.directory / "celerybeat-schedule"), "--loglevel", "INFO"),
                ],
                env=self.worker.env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def close(self) -> None:
        """Stop everything; the worker with a warm shutdown (which must succeed), the rest by force."""
        for reporter in self._reporters:
            reporter.join(timeout=60)
        collect_results()
        try:
            if self.worker is not None and self.worker.process.poll() is None:
                try:
                    self.worker.stop()
                except AssertionError:
                    self.worker.kill()
                    raise
            elif self.worker is not None and not (self.supervised or self._death_reported):
                # stop() would take a worker that died on its own for a stopped one
                self._death_reported = True
                raise WorkerExited(
                    f"the callbacks worker exited on its own, status {self.worker.process.poll()}"
                )
        finally:
            if self.beat is not None and self.beat.poll() is None:
                self.beat.terminate()
                try:
                    self.beat.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.beat.kill()
                    self.beat.wait()
            if self.vendor is not None:
                self.vendor.close()
            if self.app is not None:
                self.app.extensions["db"].dispose()
                self.app.extensions["celery"].close()
                self.app.extensions["start_tokens"].redis.close()

    # ---- the vendor's side: reports ---------------------------------------------------------------

    def report(self, tokens: list[str]) -> None:
        """GET /result/ for each token, from REPORTERS threads; returns when all are answered."""
        threads = self._reporting(tokens)
        for thread in threads:
            thread.join(timeout=self.config.patience)
        assert not any(thread.is_alive() for thread in threads), "reports still under way"

    def report_in_background(self, tokens: list[str]) -> None:
        self._reporters += self._reporting(tokens)

    def _reporting(self, tokens: list[str]) -> list[threading.Thread]:
        def reporter(part: list[str]) -> None:
            http = self.app.test_client()
            for token in part:
                answer = http.get("/result/", query_string={"access_token": token, "client": CLIENT})
                if answer.status_code != 200 or answer.get_json() != {
                    "type": "ok",
                    "token": token,
                    "data": {},
                }:
                    self.report_errors.append(
                        f"{token}: HTTP {answer.status_code} {answer.get_data()[:200]!r}"
                    )

        threads = [
            threading.Thread(target=reporter, args=(tokens[k::REPORTERS],), name=f"reporter-{k}", daemon=True)
            for k in range(REPORTERS)
        ]
        for thread in threads:
            thread.start()
        return threads

    # ---- what the database, the broker and the vendor show ------------------------------------------

    def _count(self, query) -> int:
        with self.db.session() as session:
            return session.scalar(query)

    def stored(self) -> int:
        return self._count(select(func.count()).select_from(ToolCallResult))

    def claimed(self) -> int:
        owed = (ResultFetch.state == "owed") & (ResultFetch.claimed_until > utcnow())
        return self._count(select(func.count()).select_from(ResultFetch).where(owed))

    def unsettled(self) -> int:
        """Results not yet known to be settled: not reported yet, or their fetch still owed."""
        with self.db.session() as session:
            recorded = session.scalar(select(func.count()).select_from(ResultFetch))
            owed = session.scalar(
                select(func.count()).select_from(ResultFetch).where(ResultFetch.state == "owed")
            )
        return len(self.tokens) - recorded + owed

    def broker_messages(self) -> tuple[int, int]:
        """Task messages the broker holds: (queued for the callbacks worker, reserved by it). A
        reserved message is also in the worker's memory: the broker only keeps it to redeliver."""
        client = self.broker.client()
        try:
            return client.llen(CALLBACKS_KEY), client.hlen(UNACKED_KEY)
        finally:
            client.close()

    def check_worker(self) -> None:
        """The callbacks worker ended without being killed by the test: restart it if supervised,
        fail at once otherwise."""
        code = self.worker.process.poll() if self.worker is not None else None
        if code is None:
            return
        if self.supervised:
            self.exits.append(code)
            self.worker.celery.close()
            self.start_worker()
            return
        self._death_reported = True
        raise WorkerExited(f"the callbacks worker exited on its own, status {code}{self._tail()}")

    def _watching(self, condition: Callable[[], object]) -> Callable[[], object]:
        def check() -> object:
            self.check_worker()
            return condition()

        return check

    def wait_stored(self, at_least: int) -> None:
        wait_until(
            self._watching(lambda: self.stored() >= at_least),
            self.config.patience,
            f"{at_least} results stored (now {self.stored()}){self._tail()}",
            interval=POLL_SECS,
        )

    def wait_fetch_held(self, answered: int) -> None:
        """Until a fetch is under way at the vendor, held there once ``answered`` tokens had their
        answer (``SlowVendor.hold_after``); the caller releases it (``vendor.release()``)."""
        self.vendor.hold_after(answered)
        wait_until(
            self._watching(lambda: self.vendor.held() > 0),
            self.config.patience,
            f"a fetch held at the vendor after {answered} answers{self._tail()}",
            interval=POLL_SECS,
        )

    def wait_settled(self, timeout: float | None = None) -> None:
        """Until every token was reported and no fetch is owed any more."""
        timeout = timeout or self.config.patience
        try:
            wait_until(
                self._watching(lambda: self.unsettled() == 0),
                timeout,
                "every fetch to be done or failed",
                interval=POLL_SECS,
            )
        except AssertionError as e:
            with self.db.session() as session:
                owed = session.scalars(select(ResultFetch).where(ResultFetch.state == "owed").limit(5)).all()
                detail = [
                    (f.id, f.attempts, str(f.next_attempt_at), str(f.claimed_until), f.last_error[:80])
                    for f in owed
                ]
            raise AssertionError(f"{e}: {self.unsettled()} unsettled, e.g. {detail}{self._tail()}") from None
        for reporter in self._reporters:
            reporter.join(timeout=timeout)

    def _tail(self) -> str:
        return f"\n-- callbacks worker log:\n{self.worker.log(40) if self.worker else ''}"

    # ---- faults: the database ---------------------------------------------------------------------

    def cut_worker_connections(self, application_name: str, busy_within: float = 10.0) -> Cut:
        """Terminate every PostgreSQL connection of the worker (``pg_terminate_backend``), at a moment
        when one of them is in a statement or a transaction if that happens within ``busy_within``."""
        database = make_url(self.database_url).database
        admin = create_engine(self.database_url, isolation_level="AUTOCOMMIT")
        mine = "datname = :database AND application_name = :name AND pid <> pg_backend_pid()"
        busy = f"SELECT count(*) FROM pg_stat_activity WHERE {mine} AND state IN ('active', 'idle in transaction')"
        params = {"database": database, "name": application_name}
        try:
            with admin.connect() as connection:
                deadline = time.monotonic() + busy_within
                while not connection.scalar(text(busy), params) and time.monotonic() < deadline:
                    time.sleep(0.002)  # a transaction of the worker lasts milliseconds
                rows = connection.execute(
                    text(
                        "SELECT state IN ('active', 'idle in transaction'), pg_terminate_backend(pid) "
                        f"FROM pg_stat_activity WHERE {mine}"
                    ),
                    params,
                ).all()
        finally:
            admin.dispose()
        cut = Cut(
            self.stored(),
            sum(1 for _, done in rows if done),
            sum(1 for was_busy, done in rows if was_busy and done),
        )
        self.cuts.append(cut)
        return cut

    # ---- the outcome -------------------------------------------------------------------------------

    def outcome(self) -> Outcome:
        outcome = Outcome(expected=len(self.tokens), report_errors=list(self.report_errors))
        with self.db.session() as session:
            outcome.results = session.scalar(select(func.count()).select_from(ToolCallResult))
            outcome.toolcalls_with_result = session.scalar(
                select(func.count(func.distinct(ToolCallResult.toolcall_id)))
            )
            outcome.late = session.scalar(
                select(func.count()).select_from(ToolCallResult).where(ToolCallResult.late)
            )
            outcome.finished_ok = session.scalar(
                select(func.count()).select_from(ToolCall).where(ToolCall.status == Status.FINISHED_OK)
            )
            logs: dict[int, list[str]] = {}
            for toolcall_id, status in session.execute(
                select(ToolCallLog.toolcall_id, ToolCallLog.status).order_by(ToolCallLog.id)
            ):
                logs.setdefault(toolcall_id, []).append(status)
            outcome.off_happy_path = sum(1 for statuses in logs.values() if statuses != HAPPY_LOG)
            for state, count, attempts in session.execute(
                select(ResultFetch.state, func.count(), func.sum(ResultFetch.attempts)).group_by(
                    ResultFetch.state
                )
            ):
                outcome.fetches[state] = count
                outcome.attempts += attempts or 0
        requests = self.vendor.requests()
        outcome.vendor_requests = sum(requests.values())
        outcome.refetched_tokens = sum(1 for n in requests.values() if n > 1)
        try:
            log = self.worker_log.read_text(errors="replace")
        except OSError:
            log = ""
        sweeps = [int(n) for n in _SWEEP.findall(log)]
        outcome.sweeps, outcome.requeued = len(sweeps), sum(sweeps)
        outcome.stored_by_tasks = len(_STORED.findall(log))
        outcome.nothing_to_claim = len(_NOTHING.findall(log))
        outcome.task_errors = len(_ERROR.findall(log))
        outcome.task_retries = len(_RETRY.findall(log))
        return outcome
