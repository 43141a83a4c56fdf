"""Exam day: 500 candidates log in and start their exam within one minute, through gunicorn; the
vendor fetches each one's start data and reports a result; the callbacks worker fetches and stores
every result. Then the logged-in start step against a bare Flask endpoint served the same way.

    .venv/bin/python bench/exam_day.py
    BENCH_CANDIDATES=200 BENCH_WINDOW_SECS=30 BENCH_DATABASE=sqlite .venv/bin/python bench/exam_day.py

It starts its own infrastructure and stops it again, also on error (bench/support.py): a fresh
database (PostgreSQL by default, BENCH_DATABASE=sqlite for the SQLite file), Redis db 2
(BENCH_REDIS_URL), the Procfile's ``web`` (gunicorn, 2 workers × 4 threads) for the portal and for
the bare endpoint (bench/bare_flask.py), the Procfile's ``callbacks`` worker (16 threads), and a
vendor in a process of its own whose result URL answers any result token the bench made (the token
carries the start data, so the vendor keeps no state) after VENDOR_DELAY.

**The storm.** CANDIDATES users (BENCH_CANDIDATES, 500; one Argon2id hash shared, made once)
arrive evenly spread over WINDOW seconds (BENCH_WINDOW_SECS, 60); THREADS client threads (64)
serve the arrivals in order, each candidate on a session of its own:

1. ``GET /accounts/login/``, 2. ``POST /accounts/login/`` -> 302, 3. ``GET /tooluser/tools/<slug>/``,
4. ``POST /tooluser/tools/<slug>/`` -> 303 to the vendor with the start token (the start step),
5. the vendor: ``GET /fetch-token/`` -> the start data, 6. the vendor: ``GET /result/`` with a
   result token -> 200, the fetch queued.

Reported: p50/p99 of each step, and of the start latency -- from the candidate's arrival to the
303 of step 4, so a candidate kept waiting for a free thread counts -- and how long the callbacks
worker took after the last report until every result was stored (each exactly once).

**The start step against a bare endpoint.** CLIENTS threads (8), each logged in once, post the
start form as fast as they can for ROUND_SECS; the same threads then GET the bare endpoint for as
long, alternating for ROUNDS rounds each (as bench/start_storm.py does); the ratio is the median of
the per-round ratios of requests per second. The login is not in it: its Argon2id check is
deliberately costly and is reported on its own (CPU time of one check).

Method and figures: docs/performance.md ("Exam day").
"""

from __future__ import annotations

import base64
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from bench.start_storm import FlowError, csrf, password_check_ms, storm  # noqa: E402
from bench.support import (  # noqa: E402
    Instance,
    gunicorn,
    header,
    machine,
    row,
    spread,
    start,
    stop,
    tail,
    wait_http,
)

CANDIDATES = int(os.environ.get("BENCH_CANDIDATES", "500"))
WINDOW = float(os.environ.get("BENCH_WINDOW_SECS", "60"))
DATABASE = os.environ.get("BENCH_DATABASE", "postgresql")
THREADS = int(os.environ.get("BENCH_THREADS", "64"))
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "8"))
ROUND_SECS = float(os.environ.get("BENCH_ROUND_SECS", "3"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "6"))
WORKERS, WEB_THREADS = 2, 4  # the Procfile's web line, on both sides
CALLBACKS_THREADS = 16  # the Procfile's callbacks line
VENDOR_DELAY = 0.05
TARGET = 0.5
DRAIN_TIMEOUT = 600.0
PASSWORD = "exam-day-password"
CLIENT = "exam-vendor"
SLUG = "exam-day"
NOWHERE = "http://127.0.0.1:9"
TIMEOUT = 60.0
STEPS = ("GET login", "POST login", "GET start", "POST start", "GET fetch-token", "GET result")


# ---- the vendor -------------------------------------------------------------------------------------


def result_token(start_data: dict, n: int) -> str:
    """A result token that carries what the vendor needs to answer it (the vendor keeps no state)."""
    wanted = {k: start_data[k] for k in ("persnr", "exam", "system", "exam_kind")}
    return f"R{n}-" + base64.urlsafe_b64encode(json.dumps(wanted, separators=(",", ":")).encode()).decode()


def serve_vendor() -> None:
    """The vendor process: the result of any token ``result_token`` made, on a loopback port (printed)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
            token = (parse_qs(urlsplit(self.path).query).get("access_token") or [""])[0]
            time.sleep(VENDOR_DELAY)
            try:
                start = json.loads(base64.urlsafe_b64decode(token.split("-", 1)[1]))
            except (ValueError, IndexError):
                self.send_response(404)
                body = b'{"error": "unknown token"}'
            else:
                self.send_response(200)
                body = json.dumps(
                    {"token": token, "type": "result", "timestamp": datetime.now(UTC).isoformat(),
                     "data": {"persnr": start["persnr"], "participant_id": "P1", "exam": start["exam"],
                              "passed": True, "score": 42, "system": start["system"],
                              "exam_type": start["exam_kind"]}}
                ).encode()  # fmt: skip
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 1024

    server = Server(("127.0.0.1", 0), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(server.server_address[1], flush=True)
    server.serve_forever()


def start_vendor(log: Path) -> tuple[subprocess.Popen, str]:
    with open(log, "ab") as errors:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--vendor"], cwd=ROOT, stdout=subprocess.PIPE, stderr=errors, text=True,
            start_new_session=True,
        )  # fmt: skip
    port = proc.stdout.readline().strip()
    if not port.isdigit():
        stop([proc])
        raise RuntimeError(f"the vendor did not start:\n{tail(log)}")
    return proc, f"http://127.0.0.1:{port}/result-data/"


# ---- the candidates ---------------------------------------------------------------------------------


class Candidate:
    def __init__(self, base: str, n: int, arrival: float) -> None:
        self.base, self.n, self.arrival = base, n, arrival
        self.steps: dict[str, float] = {}
        self.start_latency = 0.0

    def flow(self) -> None:
        base, user, vendor = self.base, requests.Session(), requests.Session()
        try:
            t = [time.perf_counter()]
            token = csrf(user.get(f"{base}/accounts/login/", timeout=TIMEOUT), "login page")
            t.append(time.perf_counter())
            r = user.post(f"{base}/accounts/login/", data={"username": f"cand-{self.n}", "password": PASSWORD,
                          "csrf_token": token}, allow_redirects=False, timeout=TIMEOUT)  # fmt: skip
            if r.status_code != 302:
                raise FlowError(f"login of cand-{self.n}: HTTP {r.status_code}")
            t.append(time.perf_counter())
            token = csrf(user.get(f"{base}/tooluser/tools/{SLUG}/", timeout=TIMEOUT), "start page")
            t.append(time.perf_counter())
            r = user.post(f"{base}/tooluser/tools/{SLUG}/", data={"csrf_token": token}, allow_redirects=False,
                          timeout=TIMEOUT)  # fmt: skip
            if r.status_code != 303:
                raise FlowError(f"start of cand-{self.n}: HTTP {r.status_code}")
            t.append(time.perf_counter())
            self.start_latency = t[-1] - self.arrival
            access = parse_qs(urlsplit(r.headers["Location"]).query)["access_token"][0]
            r = vendor.get(f"{base}/fetch-token/", params={"access_token": access}, timeout=TIMEOUT)
            if r.status_code != 200:
                raise FlowError(f"fetch-token: HTTP {r.status_code}: {r.text[:200]}")
            t.append(time.perf_counter())
            r = vendor.get(f"{base}/result/", params={"access_token": result_token(r.json()["data"], self.n),
                           "client": CLIENT}, timeout=TIMEOUT)  # fmt: skip
            if r.status_code != 200:
                raise FlowError(f"result: HTTP {r.status_code}: {r.text[:200]}")
            t.append(time.perf_counter())
            self.steps = {name: b - a for name, a, b in zip(STEPS, t, t[1:])}
        finally:
            user.close()
            vendor.close()


def exam_day(portal_url: str) -> tuple[list[Candidate], float]:
    """Every candidate's flow at its arrival time; the candidates, and when the last report was answered."""
    t0 = time.perf_counter() + 1.0
    candidates = [Candidate(portal_url, n, t0 + n * WINDOW / CANDIDATES) for n in range(CANDIDATES)]

    def arrive(candidate: Candidate) -> None:
        time.sleep(max(0.0, candidate.arrival - time.perf_counter()))  # the schedule, not a wait on state
        candidate.flow()

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(arrive, candidates))  # in arrival order; raises the first error
    return candidates, time.perf_counter()


def drained(instance: Instance, since: float) -> float:
    """Seconds from ``since`` until every attempt is finished-ok with one result (polled every 0.1 s)."""
    from sqlalchemy import create_engine, func, select

    from webapp.models import ToolCall, ToolCallResult

    engine = create_engine(instance.database_url)
    try:
        finished = select(func.count()).select_from(ToolCall).where(ToolCall.status == "finished-ok")
        deadline = time.perf_counter() + DRAIN_TIMEOUT
        while True:
            with engine.connect() as c:
                if c.scalar(finished) == CANDIDATES:
                    took = time.perf_counter() - since
                    results = c.scalar(select(func.count()).select_from(ToolCallResult))
                    break
            if time.perf_counter() > deadline:
                raise RuntimeError(f"not every result was stored within {DRAIN_TIMEOUT:.0f} s")
            time.sleep(0.1)
    finally:
        engine.dispose()
    if results != CANDIDATES:
        raise AssertionError(f"{results} results stored for {CANDIDATES} attempts: not exactly once")
    return took


def percentiles(values: list[float]) -> str:
    q = statistics.quantiles(values, n=100)
    return f"p50 {statistics.median(values) * 1e3:7.1f} ms   p99 {q[98] * 1e3:7.1f} ms"


# ---- the start step against the bare endpoint -------------------------------------------------------


class Starter:
    """One client thread's side of ours: a logged-in candidate posting the start form."""

    def __init__(self, base: str, n: int) -> None:
        self.base, self.session = base, requests.Session()
        token = csrf(self.session.get(f"{base}/accounts/login/", timeout=TIMEOUT), "login page")
        r = self.session.post(f"{base}/accounts/login/", data={"username": f"cand-{n}", "password": PASSWORD,
                              "csrf_token": token}, allow_redirects=False, timeout=TIMEOUT)  # fmt: skip
        if r.status_code != 302:
            raise FlowError(f"login of cand-{n}: HTTP {r.status_code}")
        self.token = csrf(self.session.get(f"{base}/tooluser/tools/{SLUG}/", timeout=TIMEOUT), "start page")

    def fresh_connections(self) -> None:
        self.session.close()  # cookies stay: still logged in

    def flow(self) -> None:
        # A candidate starting again confirms that the open attempt is superseded (the portal asks).
        r = self.session.post(f"{self.base}/tooluser/tools/{SLUG}/", data={"csrf_token": self.token,
                              "supersede": "yes"}, allow_redirects=False, timeout=TIMEOUT)  # fmt: skip
        if r.status_code != 303:
            raise FlowError(f"start: HTTP {r.status_code}")


class Bare:
    def __init__(self, base: str) -> None:
        self.url, self.session = f"{base}/", requests.Session()

    def fresh_connections(self) -> None:
        self.session.close()

    def flow(self) -> None:
        r = self.session.get(self.url, timeout=TIMEOUT)
        if r.status_code != 200:
            raise FlowError(f"bare endpoint: HTTP {r.status_code}")


def start_step_ratio(portal_url: str, bare_url: str) -> None:
    ours = [Starter(portal_url, n) for n in range(CLIENTS)]
    bare = [Bare(bare_url) for _ in range(CLIENTS)]
    storm(ours, 1.5)  # warm-up
    storm(bare, 1.5)
    rates: dict[str, list[float]] = defaultdict(list)
    for r in range(ROUNDS):
        for name, sides in (
            (("ours", ours), ("bare", bare)) if r % 2 == 0 else (("bare", bare), ("ours", ours))
        ):
            rates[name].append(storm(sides, ROUND_SECS))
    ratios = [a / b for a, b in zip(rates["ours"], rates["bare"])]
    ratio = statistics.median(ratios)
    header()
    row(f"logged-in start step vs bare, {CLIENTS} clients", f"{statistics.median(rates['ours']):.0f} req/s",
        f"{statistics.median(rates['bare']):.0f} req/s", ratio, f">= {TARGET}x", ratio >= TARGET)  # fmt: skip
    spread("round", ratios)
    print(f"  one password check (the login's Argon2id, not in the step): {password_check_ms():.0f} ms CPU")


# ---- the run ----------------------------------------------------------------------------------------


def prepare(instance: Instance, vendor_url: str) -> None:
    """The client, its tool and CANDIDATES users sharing one password hash (made once: hashing 500
    would take the machine a minute, and the login checks it the same way)."""
    from webapp import create_app
    from webapp.cli import save_client, save_tool
    from webapp.models import User
    from webapp.passwords import hash_password

    instance.use_here()
    app = create_app()
    hashed = hash_password(PASSWORD)
    try:
        with app.extensions["db"].session() as session:
            client = save_client(session, CLIENT, f"{NOWHERE}/start/", vendor_url)
            save_tool(session, SLUG, client, "Exam day")
            session.add_all(User(username=f"cand-{n}", password_hash=hashed) for n in range(CANDIDATES))
    finally:
        app.extensions["db"].dispose()


def main() -> int:
    if sys.argv[1:] == ["--vendor"]:
        serve_vendor()
        return 0
    from importlib.metadata import version

    print(f"python {platform.python_version()}, flask {version('flask')}, gunicorn {version('gunicorn')}, "
          f"celery {version('celery')}; {machine()}")  # fmt: skip
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    instance = Instance(DATABASE, prefix="exam-day-")
    procs: list[subprocess.Popen] = []
    try:
        vendor, vendor_url = start_vendor(instance.path / "vendor.log")
        procs.append(vendor)
        prepare(instance, vendor_url)
        portal, portal_url = gunicorn("webapp:create_app()", instance.env, instance.path / "portal.log",
                                      WORKERS, WEB_THREADS)  # fmt: skip
        procs.append(portal)
        bare, bare_url = gunicorn("bench.bare_flask:create_app()", instance.env, instance.path / "bare.log",
                                  WORKERS, WEB_THREADS)  # fmt: skip
        procs.append(bare)
        callbacks_log = instance.path / "callbacks.log"
        procs.append(start(
            [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--queues", "callbacks", "--pool",
             "threads", "--concurrency", str(CALLBACKS_THREADS), "--hostname", f"exam-day-{os.getpid()}@%h",
             "--without-mingle", "--without-gossip", "--loglevel", "WARNING"],
            instance.env, callbacks_log,
        ))  # fmt: skip
        wait_http(f"{portal_url}/accounts/login/", portal, instance.path / "portal.log")
        wait_http(f"{bare_url}/", bare, instance.path / "bare.log")
        print(f"database: {instance.describe()}; {CANDIDATES} candidates over {WINDOW:g} s, {THREADS} client "
              f"threads; gunicorn {WORKERS}x{WEB_THREADS}; callbacks {CALLBACKS_THREADS} threads; the vendor "
              f"answers in {VENDOR_DELAY * 1e3:.0f} ms\n")  # fmt: skip

        started = time.perf_counter()
        candidates, last_report = exam_day(portal_url)
        took = drained(instance, last_report)
        print(f"The storm: {CANDIDATES} candidates in {last_report - started:.1f} s; every result stored once, "
              f"{took:.1f} s after the last report")  # fmt: skip
        print(f"  start latency (arrival -> 303)  {percentiles([c.start_latency for c in candidates])}")
        for name in STEPS:
            print(f"  {name:<31} {percentiles([c.steps[name] for c in candidates])}")
        print()
        start_step_ratio(portal_url, bare_url)
    except BaseException:
        print(f"portal log (end):\n{tail(instance.path / 'portal.log')}", file=sys.stderr)
        raise
    finally:
        stop(procs)
        instance.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
