"""Result storm: 1,000 result tokens reported at once, a vendor answering each fetch in 100 ms, and
one real ``callbacks`` worker -- every result stored exactly once, in at most 1.5x the ideal time.

    .venv/bin/python bench/result_storm.py

The ideal is RESULTS x VENDOR_DELAY / C: the fetches alone, C at a time, with nothing else costing
anything (1000 x 0.1 s / 32 = 3.1 s). The target is a total time of at most 1.5x that.

It starts its own infrastructure and stops it again, also on error (bench/support.py):

- a temporary instance (BENCH_DATABASE: ``sqlite``, the default deployment, a file in a temporary
  folder; ``postgresql``, a fresh database; ``both``, one run on each -- the default, since 32
  threads writing may serialize on SQLite), Redis db 2 (BENCH_REDIS_URL; flushed before and after),
  a random SECRET_KEY, TOOLCALL_RATELIMIT=off;
- a vendor: a ThreadingHTTPServer on a loopback port, in a process of its own, whose
  ``/result-data/?access_token=R`` answers after VENDOR_DELAY (100 ms, a sleep in the handler) with
  a valid result body (§4: ``system`` signed with the instance's SECRET_KEY, the user's persnr, the
  tool's slug, passed, score); the client (``clients add``) and its tool (``tools add``) are made
  through the CLI, pointing at it;
- RESULTS users (default 1000) and one attempt each, made through the domain
  (``lifecycle.create``, then ``advance`` to start-tk-sent and start-data-sent);
- the Procfile's ``callbacks`` worker, ``celery -A worker.app worker --queues callbacks --pool threads
  --concurrency C --task-events --without-mingle --without-gossip`` (C = BENCH_FETCH_CONCURRENCY,
  default 32, as in the Procfile), on the same database, Redis, SECRET_KEY and instance folder;
  the bench waits until it answers a Celery ping.

Then it reports all results through ``GET /result/?access_token=R&client=NAME`` on the portal app
(Flask test clients in REPORTERS threads, as fast as they go) and measures from the first report
until the database shows every ToolCall finished-ok (polled every 100 ms). Checks: exactly RESULTS
result rows, one per ToolCall, each ToolCall finished-ok with the full happy-path log, each fetch
record done; how many fetch attempts and vendor requests there were is reported.

Method, figures and what they mean: docs/portal-performance.md.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from bench.support import (  # noqa: E402
    REDIS_URL,
    Instance,
    clean_env,
    cpu_seconds,
    machine,
    start,
    stop,
    tail,
    use_env,
)

RESULTS = int(os.environ.get("BENCH_RESULTS", "1000"))
CONCURRENCY = int(os.environ.get("BENCH_FETCH_CONCURRENCY", "32"))
DATABASES = {"both": ["sqlite", "postgresql"]}.get(
    os.environ.get("BENCH_DATABASE", "both"), [os.environ.get("BENCH_DATABASE", "both")]
)
VENDOR_DELAY = 0.1
REPORTERS = int(os.environ.get("BENCH_REPORTERS", "4"))
POLL_SECS = 0.1
TARGET = 1.5
#: The whole storm must end within this, or the bench fails (nothing may hang).
STORM_TIMEOUT = float(os.environ.get("BENCH_STORM_TIMEOUT", "300"))
READY_TIMEOUT = 60.0
CLIENT = "bench-vendor"
SLUG = "bench-exam"
HAPPY_LOG = [
    "initial", "start-tk-sent", "start-data-sent", "result-tk-received", "result-received-ok",
    "result-saved", "finished-ok",
]  # fmt: skip


class Vendor:
    """The vendor's result URL, in a process of its own (``result_storm.py --vendor BODIES``), so that
    the reporting threads of the bench cannot slow its answers: each known token's body after
    VENDOR_DELAY, 404 for others; ``GET /stats`` counts the requests per token."""

    def __init__(self, bodies: dict[str, bytes], workdir: Path) -> None:
        path = workdir / "vendor-bodies.json"
        path.write_text(json.dumps({token: body.decode() for token, body in bodies.items()}))
        self.log = workdir / "vendor.log"
        with open(self.log, "ab") as errors:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, "--vendor", str(path)],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=errors, text=True, start_new_session=True,
            )  # fmt: skip
        line = self.proc.stdout.readline()  # the port, once it listens
        if not line.strip().isdigit():
            stop([self.proc])
            raise RuntimeError(f"the vendor did not start:\n{tail(self.log)}")
        self.base = f"http://127.0.0.1:{line.strip()}"
        self.url = f"{self.base}/result-data/"

    def requests(self) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.base}/stats", timeout=10) as answer:
            return json.load(answer)

    def close(self) -> None:
        stop([self.proc])


def serve_vendor(bodies_path: str) -> None:
    """The vendor process: ThreadingHTTPServer on a loopback port (printed), until SIGTERM."""
    bodies = {token: body.encode() for token, body in json.loads(Path(bodies_path).read_text()).items()}
    counts: dict[str, int] = {}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
            parts = urlsplit(self.path)
            if parts.path == "/stats":
                with lock:
                    body = json.dumps(counts).encode()
            else:
                token = (parse_qs(parts.query).get("access_token") or [""])[0]
                with lock:
                    counts[token] = counts.get(token, 0) + 1
                time.sleep(VENDOR_DELAY)  # the vendor's latency
                body = bodies.get(token)
            if body is None:
                self.send_response(404)
                body = b'{"error": "unknown token"}'
            else:
                self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 1024  # the default backlog of 5 would drop connections at 32 at once

    server = Server(("127.0.0.1", 0), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(server.server_address[1], flush=True)
    server.serve_forever()
    server.server_close()


def make_attempts(app, secret_key: str) -> dict[str, bytes]:
    """RESULTS users with one attempt each in start-data-sent; the vendor's body for each token."""
    from sqlalchemy import select

    from webapp import lifecycle
    from webapp.lifecycle import Status
    from webapp.models import Tool, User
    from webapp.signing import sign_system

    bodies: dict[str, bytes] = {}
    db = app.extensions["db"]
    with db.session() as session:
        tool = session.scalar(select(Tool).where(Tool.slug == SLUG))
        users = [
            User(username=f"candidate-{i:05d}", password_hash="!", first_name="Can", last_name=f"Didate {i}")
            for i in range(RESULTS)
        ]
        session.add_all(users)
        session.flush()
        for i, user in enumerate(users):
            toolcall = lifecycle.create(session, tool, user, "attempt started (bench)")
            lifecycle.advance(session, toolcall, Status.START_TK_SENT, "start token issued (bench)")
            lifecycle.advance(session, toolcall, Status.START_DATA_SENT, "start data fetched (bench)")
            token = f"R-{toolcall.id}-{secrets.token_urlsafe(12)}"
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
                        "system": sign_system(toolcall.id, secret_key),
                        "exam_type": "start",
                    },
                }
            ).encode()
    return bodies


def report_all(app, tokens: list[str]) -> float:
    """GET /result/ for every token from REPORTERS threads; returns when all are answered."""
    errors: list[str] = []
    start = threading.Barrier(REPORTERS + 1)

    def reporter(part: list[str]) -> None:
        client = app.test_client()
        start.wait()
        for token in part:
            r = client.get("/result/", query_string={"access_token": token, "client": CLIENT})
            if r.status_code != 200 or r.get_json().get("type") != "ok":
                errors.append(f"{token}: HTTP {r.status_code} {r.get_data(as_text=True)[:200]}")

    threads = [
        threading.Thread(target=reporter, args=(tokens[k::REPORTERS],), daemon=True) for k in range(REPORTERS)
    ]
    for thread in threads:
        thread.start()
    start.wait()
    for thread in threads:
        thread.join(STORM_TIMEOUT)
    if errors:
        raise AssertionError(f"{len(errors)} reports failed, e.g. {errors[0]}")
    return time.perf_counter()


def wait_ready(celery, name: str, worker, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not celery.control.ping(destination=[name], timeout=0.5):
        if worker.poll() is not None:
            raise RuntimeError(f"the callbacks worker exited ({worker.returncode}):\n{tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the callbacks worker did not answer a ping within {READY_TIMEOUT:.0f} s:\n{tail(log)}"
            )


def run(database: str) -> bool:
    """One storm on ``database``; prints its row and checks; True when the target is met."""
    from sqlalchemy import create_engine, func, select

    from webapp.models import ResultFetch, ToolCall, ToolCallLog, ToolCallResult
    from worker.app import make_app

    instance = Instance(database, prefix="result-storm-")
    procs = []
    app = celery = poller = vendor = None
    try:
        # The client first (its result URL is set again once the vendor listens), then the attempts,
        # whose result bodies the vendor serves.
        instance.flask("clients", "add", CLIENT, "--start-url", "http://127.0.0.1:9/start/",
                       "--result-url", "http://127.0.0.1:9/result-data/")  # fmt: skip
        instance.flask("tools", "add", SLUG, "--client", CLIENT, "--name", "Bench exam")
        instance.use_here()
        from webapp import create_app

        app = create_app()
        t0 = time.perf_counter()
        bodies = make_attempts(app, instance.env["SECRET_KEY"])
        setup_s = time.perf_counter() - t0
        vendor = Vendor(bodies, instance.path)
        instance.flask("clients", "add", CLIENT, "--start-url", "http://127.0.0.1:9/start/",
                       "--result-url", vendor.url)  # fmt: skip

        name = f"bench-callbacks-{os.getpid()}@{socket.gethostname()}"
        log = instance.path / "callbacks.log"
        procs.append(start(
            [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "--queues", "callbacks",
             "--pool", "threads", "--concurrency", str(CONCURRENCY), "--hostname", name,
             "--task-events", "--without-mingle", "--without-gossip", "--loglevel", "WARNING"],
            instance.env, log,
        ))  # fmt: skip
        celery = make_app(
            "result-storm", broker_url=instance.env["REDIS_URL"], result_backend=instance.env["REDIS_URL"]
        )
        wait_ready(celery, name, procs[0], log)

        poller = create_engine(instance.database_url)
        finished = select(func.count()).select_from(ToolCall).where(ToolCall.status == "finished-ok")
        tokens = list(bodies)
        reported: dict[str, object] = {}

        def reporting_thread() -> None:
            try:
                reported["at"] = report_all(app, tokens)
            except BaseException as e:  # raised by the polling loop below
                reported["error"] = e

        reporting = threading.Thread(target=reporting_thread, daemon=True)
        worker_cpu, bench_cpu = cpu_seconds(procs[0].pid), time.process_time()
        t0 = time.perf_counter()
        reporting.start()
        seen = 0
        while True:
            with poller.connect() as connection:
                seen = connection.scalar(finished)
            now = time.perf_counter()
            if "error" in reported:
                raise reported["error"]
            if seen >= RESULTS:
                break
            if now - t0 > STORM_TIMEOUT:
                raise AssertionError(
                    f"only {seen} of {RESULTS} finished-ok after {STORM_TIMEOUT:.0f} s:\n{tail(log)}"
                )
            if procs[0].poll() is not None:
                raise RuntimeError(f"the callbacks worker exited ({procs[0].returncode}):\n{tail(log)}")
            time.sleep(POLL_SECS)
        total = now - t0
        worker_cpu = cpu_seconds(procs[0].pid) - worker_cpu
        bench_cpu = time.process_time() - bench_cpu
        reporting.join(STORM_TIMEOUT)
        report_s = reported["at"] - t0

        # Checks: every result stored exactly once, every attempt finished with the happy-path log.
        db = app.extensions["db"]
        with db.session() as session:
            results = session.scalar(select(func.count()).select_from(ToolCallResult))
            distinct = session.scalar(select(func.count(func.distinct(ToolCallResult.toolcall_id))))
            late = session.scalar(select(func.count()).select_from(ToolCallResult).where(ToolCallResult.late))
            fetches = session.execute(
                select(ResultFetch.state, func.count(), func.sum(ResultFetch.attempts)).group_by(
                    ResultFetch.state
                )
            ).all()
            logs = session.execute(
                select(ToolCallLog.toolcall_id, ToolCallLog.status).order_by(ToolCallLog.id)
            ).all()
            wrong = session.scalar(
                select(func.count()).select_from(ToolCall).where(ToolCall.status != "finished-ok")
            )
        by_toolcall: dict[int, list[str]] = {}
        for toolcall_id, status in logs:
            by_toolcall.setdefault(toolcall_id, []).append(status)
        bad_logs = sum(1 for statuses in by_toolcall.values() if statuses != HAPPY_LOG)
        states = {state: (n, attempts) for state, n, attempts in fetches}
        attempts = sum(a for _, a in states.values())
        requested = vendor.requests()
        vendor_calls = sum(n for token, n in requested.items() if token in bodies)
        exactly_once = (
            results == RESULTS and distinct == RESULTS and late == 0 and wrong == 0 and bad_logs == 0
            and set(states) == {"done"} and states["done"][0] == RESULTS
        )  # fmt: skip

        ideal = RESULTS * VENDOR_DELAY / CONCURRENCY
        ratio = total / ideal
        ok = exactly_once and ratio <= TARGET
        print(f"-- {instance.describe()}")
        print(f"   setup: {RESULTS} users and attempts through the domain in {setup_s:.1f} s; worker ready")
        print(f"{'measure':<36} {'ours':>12} {'ideal':>12} {'ratio':>9}  {'target':<12}")
        print(f"{f'{RESULTS} results, C={CONCURRENCY}, {database}':<36} {total:>10.2f} s {ideal:>10.2f} s "
              f"{ratio:>8.2f}x  {'<= 1.5x':<12} {'ok' if ok else 'MISSED'}")  # fmt: skip
        print(
            f"   reports: all {RESULTS} answered after {report_s:.2f} s ({RESULTS / report_s:.0f}/s, "
            f"{REPORTERS} reporter threads); polled every {POLL_SECS * 1e3:.0f} ms"
        )
        print(
            f"   stored exactly once: {'yes' if exactly_once else 'NO'} -- {results} result rows for "
            f"{distinct} ToolCalls ({late} late), {RESULTS - wrong} finished-ok, {bad_logs} logs off the "
            f"happy path, fetch records {states}"
        )
        print(
            f"   fetch attempts {attempts}, vendor requests {vendor_calls} "
            f"({sum(1 for n in requested.values() if n > 1)} tokens fetched more than once)"
        )
        print(
            f"   CPU during the storm: callbacks worker {worker_cpu:.1f} s ({worker_cpu / RESULTS * 1e3:.1f} ms "
            f"a result; one process, {worker_cpu / total:.0%} of one core), reporting (this process) "
            f"{bench_cpu:.1f} s"
        )
        return ok
    finally:
        if celery is not None:
            celery.close()
        stop(procs)
        if vendor is not None:
            vendor.close()
        if poller is not None:
            poller.dispose()
        if app is not None:
            app.extensions["db"].dispose()
            app.extensions["start_tokens"].redis.close()
        instance.close()


def bare_storm() -> None:
    """Baseline: RESULTS bare Celery tasks that only sleep VENDOR_DELAY, on the same worker command
    (threads pool, CONCURRENCY, task events, same settings), sent at once; until every result is in."""
    env = clean_env()
    use_env(env)
    redis_client = redis.Redis.from_url(REDIS_URL)
    redis_client.flushdb()
    workdir = Path(tempfile.mkdtemp(prefix="result-storm-bare-"))
    log = workdir / "bare.log"
    procs = []
    from bench import bare_task  # reads REDIS_URL now

    try:
        name = f"bench-bare-{os.getpid()}@{socket.gethostname()}"
        procs.append(start(
            [sys.executable, "-m", "celery", "-A", "bench.bare_task", "worker", "--queues", bare_task.QUEUE,
             "--pool", "threads", "--concurrency", str(CONCURRENCY), "--hostname", name,
             "--task-events", "--without-mingle", "--without-gossip", "--loglevel", "WARNING"],
            env, log,
        ))  # fmt: skip
        wait_ready(bare_task.app, name, procs[0], log)
        worker_cpu = cpu_seconds(procs[0].pid)
        t0 = time.perf_counter()
        results = [bare_task.sleep.delay(VENDOR_DELAY) for _ in range(RESULTS)]
        for result in results:
            result.get(timeout=STORM_TIMEOUT)
        total = time.perf_counter() - t0
        worker_cpu = cpu_seconds(procs[0].pid) - worker_cpu
        ideal = RESULTS * VENDOR_DELAY / CONCURRENCY
        print("-- baseline: the same worker command with a bare task that sleeps 100 ms (bench/bare_task.py)")
        print(f"{f'{RESULTS} bare sleep tasks, C={CONCURRENCY}':<36} {total:>10.2f} s {ideal:>10.2f} s "
              f"{total / ideal:>8.2f}x  {'(reported)':<12}")  # fmt: skip
        print(f"   CPU: worker {worker_cpu:.1f} s ({worker_cpu / RESULTS * 1e3:.1f} ms a task)\n")
    finally:
        bare_task.app.close()
        stop(procs)
        redis_client.flushdb()
        redis_client.close()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    if sys.argv[1:2] == ["--vendor"]:
        serve_vendor(sys.argv[2])
        return 0
    import celery
    import sqlalchemy

    print(
        f"python {platform.python_version()}, celery {celery.__version__}, sqlalchemy {sqlalchemy.__version__}; "
        f"{machine()}\n{RESULTS} results, vendor answering in {VENDOR_DELAY * 1e3:.0f} ms, callbacks worker "
        f"--pool threads --concurrency {CONCURRENCY}\n"
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bare_storm()
    for database in DATABASES:
        run(database)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
