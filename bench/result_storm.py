"""Result storm: 1,000 result tokens reported at once, a vendor answering each fetch in 100 ms, and
real ``callbacks`` workers -- every result stored exactly once, in at most 1.5x the ideal time.

    .venv/bin/python bench/result_storm.py
    BENCH_DATABASE=postgresql BENCH_FETCH_CONCURRENCY=8,16,32 .venv/bin/python bench/result_storm.py
    BENCH_CALLBACKS_PROCESSES=1,2 .venv/bin/python bench/result_storm.py

The ideal is RESULTS x VENDOR_DELAY / C: the fetches alone, C at a time, with nothing else costing
anything (1000 x 0.1 s / 16 = 6.25 s at the Procfile's 16). The target is a total time of at most 1.5x that.

Settings (environment):

- BENCH_DATABASE: ``sqlite`` (the default deployment, a file in a temporary folder),
  ``postgresql`` (a fresh database) or ``both`` (one run on each; the default);
- BENCH_FETCH_CONCURRENCY: C, the fetches in flight in total (default 16, as in the Procfile); a
  list such as ``8,16,32`` runs one storm for each, and a table at the end has one row per
  concurrency, so that the knee is visible;
- BENCH_CALLBACKS_PROCESSES: N, how many ``callbacks`` worker processes share those C fetches, each
  with C/N threads (default 1, the Procfile; ``honcho start callbacks=N`` is the same shape); a
  list such as ``1,2`` runs each shape;
- BENCH_REPORT_PROCESSES: P, how many processes make the reports (default 1: this one); with more,
  each is a portal app of its own with BENCH_REPORTERS / P threads, as gunicorn's workers are
  (the Procfile's ``web`` has 2), so that the reports are not held to one interpreter lock;
- BENCH_RESULTS (1000), BENCH_REPORTERS (threads, 4 in all), BENCH_STORM_TIMEOUT (300 s),
  BENCH_REDIS_URL;
- BENCH_VENDOR_KEEPALIVE: ``1`` (default) the vendor keeps connections open between requests
  (HTTP/1.1, as production web servers do), ``0`` it closes each after one answer (HTTP/1.0);
- BENCH_BASELINE: ``1`` (default) also runs the bare-task baseline once per concurrency, ``0`` not;
- BENCH_QUEUED_FIRST: ``1`` makes every report before the clock starts, while the workers do not
  consume (Celery's ``cancel_consumer``), and then times the workers draining the queue: the
  callbacks workers alone, however fast the reports can be made (a diagnostic; default ``0``).

It starts its own infrastructure and stops it again, also on error (bench/support.py):

- a temporary instance (database as above), Redis db 2 (flushed before and after), a random
  SECRET_KEY, TOOLCALL_RATELIMIT=off;
- a vendor: a ThreadingHTTPServer on a loopback port, in a process of its own, whose
  ``/result-data/?access_token=R`` answers after VENDOR_DELAY (100 ms, a sleep in the handler) with
  a valid result body (§4: ``system`` signed with the instance's SECRET_KEY, the user's persnr, the
  tool's slug, passed, score); the client (``clients add``) and its tool (``tools add``) are made
  through the CLI, pointing at it;
- RESULTS users (default 1000) and one attempt each, made through the domain
  (``lifecycle.create``, then ``advance`` to start-tk-sent and start-data-sent);
- N of the Procfile's ``callbacks`` worker, ``celery -A worker.app worker --queues callbacks --pool
  threads --concurrency C/N --task-events --without-mingle --without-gossip``, each with a hostname
  of its own, on the same database, Redis, SECRET_KEY and instance folder; the bench waits until
  each answers a Celery ping.

Then it reports all results through ``GET /result/?access_token=R&client=NAME`` on the portal app
(Flask test clients in REPORTERS threads, as fast as they go, in this process or in P) and measures
from the first report until the database shows every ToolCall finished-ok (polled every 100 ms).
Checks: exactly RESULTS result rows, one per ToolCall, each ToolCall finished-ok with the full
happy-path log, each fetch record done; how many fetch attempts and vendor requests there were is
reported. So is the CPU time of each process during the storm: the workers' per result is the
figure that neighbours on a shared machine disturb least, and the whole machine's shows how much of
its CPUs the storm had.

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
    header,
    machine,
    row,
    start,
    stop,
    tail,
    use_env,
)

RESULTS = int(os.environ.get("BENCH_RESULTS", "1000"))
CONCURRENCIES = [int(c) for c in os.environ.get("BENCH_FETCH_CONCURRENCY", "16").split(",")]
PROCESSES = [int(n) for n in os.environ.get("BENCH_CALLBACKS_PROCESSES", "1").split(",")]
DATABASES = {"both": ["sqlite", "postgresql"]}.get(
    os.environ.get("BENCH_DATABASE", "both"), [os.environ.get("BENCH_DATABASE", "both")]
)
KEEPALIVE = os.environ.get("BENCH_VENDOR_KEEPALIVE", "1") != "0"
BASELINE = os.environ.get("BENCH_BASELINE", "1") != "0"
QUEUED_FIRST = os.environ.get("BENCH_QUEUED_FIRST", "0") == "1"
VENDOR_DELAY = 0.1
REPORTERS = int(os.environ.get("BENCH_REPORTERS", "4"))
REPORT_PROCESSES = int(os.environ.get("BENCH_REPORT_PROCESSES", "1"))
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
        # HTTP/1.1 keeps a connection open for the next request, as production web servers do (every
        # answer has a Content-Length); HTTP/1.0 closes it after each answer.
        protocol_version = "HTTP/1.1" if KEEPALIVE else "HTTP/1.0"
        # TCP_NODELAY, as production servers have it (or they write headers and body at once):
        # without it, on a kept connection the body waits for the ACK of the headers, which the
        # client delays by up to 40 ms (new connections escape it: Linux acks at once at first).
        disable_nagle_algorithm = True

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
    from webapp.models import Exam, User
    from webapp.signing import sign_system

    bodies: dict[str, bytes] = {}
    db = app.extensions["db"]
    with db.session() as session:
        tool = session.scalar(select(Exam).where(Exam.slug == SLUG))
        users = [
            User(username=f"candidate-{i:05d}", password_hash="!", first_name="Can", last_name=f"Didate {i}")
            for i in range(RESULTS)
        ]
        session.add_all(users)
        session.flush()
        for i, user in enumerate(users):
            toolcall = lifecycle.create(session, tool, user, "attempt started (bench)")
            lifecycle.advance(session, toolcall, (Status.START_TK_SENT, "start token issued (bench)"))
            lifecycle.advance(session, toolcall, (Status.START_DATA_SENT, "start data fetched (bench)"))
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


def report_all(app, tokens: list[str], threads: int = REPORTERS) -> float:
    """GET /result/ for every token from ``threads`` threads; returns when all are answered (its
    ``time.monotonic()``, which other processes on the machine share)."""
    errors: list[str] = []
    start = threading.Barrier(threads + 1)

    def reporter(part: list[str]) -> None:
        client = app.test_client()
        start.wait()
        for token in part:
            r = client.get("/result/", query_string={"access_token": token, "client": CLIENT})
            if r.status_code != 200 or r.get_json().get("type") != "ok":
                errors.append(f"{token}: HTTP {r.status_code} {r.get_data(as_text=True)[:200]}")

    reporters = [
        threading.Thread(target=reporter, args=(tokens[k::threads],), daemon=True) for k in range(threads)
    ]
    for thread in reporters:
        thread.start()
    start.wait()
    for thread in reporters:
        thread.join(STORM_TIMEOUT)
    if errors:
        raise AssertionError(f"{len(errors)} reports failed, e.g. {errors[0]}")
    return time.monotonic()


class ReportProcesses:
    """The reports made by REPORT_PROCESSES processes of their own (``result_storm.py --report FILE
    THREADS``), each a portal app on the instance reporting its share of the tokens: started and
    ready before the clock starts, then all told to go at once."""

    def __init__(self, tokens: list[str], env: dict[str, str], workdir: Path) -> None:
        self.procs: list[subprocess.Popen] = []
        self.log = workdir / "reporters.log"
        try:
            for k, threads in enumerate(split(REPORTERS, REPORT_PROCESSES, "BENCH_REPORT_PROCESSES")):
                share = workdir / f"report-{k}.json"
                share.write_text(json.dumps(tokens[k::REPORT_PROCESSES]))
                with open(self.log, "ab") as errors:
                    self.procs.append(subprocess.Popen(
                        [sys.executable, __file__, "--report", str(share), str(threads)], cwd=ROOT, env=env,
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True,
                        start_new_session=True,
                    ))  # fmt: skip
            for proc in self.procs:
                if proc.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"a reporting process did not start:\n{tail(self.log)}")
        except BaseException:
            self.close()
            raise

    def go(self) -> None:
        for proc in self.procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()

    def wait(self) -> tuple[float, float]:
        """When the last report was answered (``time.monotonic()``), and the CPU seconds reporting took."""
        ends, cpu = [], 0.0
        for proc in self.procs:
            line = proc.stdout.readline().split()
            if line[:1] != ["done"]:
                raise AssertionError(f"a reporting process failed:\n{tail(self.log)}")
            ends.append(float(line[1]))
            cpu += float(line[2])
        return max(ends), cpu

    def close(self) -> None:
        stop(self.procs)


def serve_reports(share: str, threads: int) -> None:
    """A reporting process: a portal app on the instance of the environment; reports its share when
    told to go (a line on stdin); prints when the last was answered and the CPU it took."""
    from webapp import create_app

    app = create_app()
    tokens = json.loads(Path(share).read_text())
    print("ready", flush=True)
    sys.stdin.readline()
    cpu = time.process_time()
    end = report_all(app, tokens, threads)
    print(f"done {end} {time.process_time() - cpu}", flush=True)


def wait_ready(celery, name: str, worker, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not celery.control.ping(destination=[name], timeout=0.5):
        if worker.poll() is not None:
            raise RuntimeError(f"the callbacks worker exited ({worker.returncode}):\n{tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the callbacks worker did not answer a ping within {READY_TIMEOUT:.0f} s:\n{tail(log)}"
            )


def machine_busy() -> tuple[float, float]:
    """CPU seconds the whole machine has spent so far, busy and stolen by the hypervisor (Linux)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def worker_command(app: str, queue: str, threads: int, name: str) -> list[str]:
    """The Procfile's ``callbacks`` line (its pool, events and start-up options) with ``threads``."""
    return [sys.executable, "-m", "celery", "-A", app, "worker", "--queues", queue, "--pool", "threads",
            "--concurrency", str(threads), "--hostname", name, "--task-events", "--without-mingle",
            "--without-gossip", "--loglevel", "WARNING"]  # fmt: skip


def split(threads: int, processes: int, setting: str = "BENCH_CALLBACKS_PROCESSES") -> list[int]:
    """The threads of each of ``processes`` processes, ``threads`` in all (as even as it goes)."""
    if not 1 <= processes <= threads:
        raise SystemExit(f"{setting} must be 1..{threads}, not {processes}")
    return [threads // processes + (k < threads % processes) for k in range(processes)]


def shape(concurrency: int, processes: int) -> str:
    threads = split(concurrency, processes)
    return (
        f"C={concurrency}" if processes == 1 else f"{processes}x{'/'.join(sorted({str(t) for t in threads}))}"
    )


def run(database: str, concurrency: int, processes: int) -> dict:
    """One storm on ``database`` with ``processes`` callbacks workers sharing ``concurrency`` fetches;
    prints its row and checks; returns its figures."""
    from sqlalchemy import create_engine, func, select

    from webapp.models import ResultFetch, ToolCall, ToolCallLog, ToolCallResult
    from worker.app import make_app

    instance = Instance(database, prefix="result-storm-")
    workers: list[subprocess.Popen] = []
    app = celery = poller = vendor = reporters = None
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

        names, logs = [], []
        for k, threads in enumerate(split(concurrency, processes)):
            names.append(f"bench-callbacks-{os.getpid()}-{k}@{socket.gethostname()}")
            logs.append(instance.path / f"callbacks-{k}.log")
            workers.append(
                start(worker_command("worker.app", "callbacks", threads, names[-1]), instance.env, logs[-1])
            )
        celery = make_app(
            "result-storm", broker_url=instance.env["REDIS_URL"], result_backend=instance.env["REDIS_URL"]
        )
        for name, worker, log in zip(names, workers, logs):
            wait_ready(celery, name, worker, log)

        poller = create_engine(instance.database_url)
        finished = select(func.count()).select_from(ToolCall).where(ToolCall.status == "finished-ok")
        tokens = list(bodies)
        reported: dict[str, object] = {}

        if REPORT_PROCESSES > 1:
            reporters = ReportProcesses(tokens, instance.env, instance.path)

        def reporting_thread() -> None:
            try:
                if reporters is None:
                    reported["at"] = report_all(app, tokens)
                else:
                    reporters.go()
                    reported["at"], reported["cpu"] = reporters.wait()
            except BaseException as e:  # raised by the polling loop below
                reported["error"] = e

        def cpu() -> tuple[float, float, float, float, float]:
            busy, steal = machine_busy()
            workers_s = sum(cpu_seconds(w.pid) for w in workers)
            return workers_s, time.process_time(), cpu_seconds(vendor.proc.pid), busy, steal

        reporting = threading.Thread(target=reporting_thread, daemon=True)
        if QUEUED_FIRST:
            # Every report made and its fetch queued while no worker consumes; the clock starts when
            # they start to.
            for name in names:
                celery.control.cancel_consumer("callbacks", destination=[name], reply=True)
            reporting.start()
            reporting.join(STORM_TIMEOUT)
            if "error" in reported:
                raise reported["error"]
        cpu0 = cpu()
        t0 = time.monotonic()
        if QUEUED_FIRST:
            for name in names:
                celery.control.add_consumer("callbacks", destination=[name], reply=True)
        else:
            reporting.start()
        seen = 0
        while True:
            with poller.connect() as connection:
                seen = connection.scalar(finished)
            now = time.monotonic()
            if "error" in reported:
                raise reported["error"]
            if seen >= RESULTS:
                break
            if now - t0 > STORM_TIMEOUT:
                raise AssertionError(
                    f"only {seen} of {RESULTS} finished-ok after {STORM_TIMEOUT:.0f} s:\n{tail(logs[0])}"
                )
            for worker, log in zip(workers, logs):
                if worker.poll() is not None:
                    raise RuntimeError(f"a callbacks worker exited ({worker.returncode}):\n{tail(log)}")
            time.sleep(POLL_SECS)
        total = now - t0
        worker_cpu, bench_cpu, vendor_cpu, machine_cpu, steal = (b - a for a, b in zip(cpu0, cpu()))
        reporting.join(STORM_TIMEOUT)
        report_s = max(0.0, reported["at"] - t0)
        report_cpu = 0.0 if QUEUED_FIRST else reported.get("cpu", bench_cpu)

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
            logs_rows = session.execute(
                select(ToolCallLog.toolcall_id, ToolCallLog.status).order_by(ToolCallLog.id)
            ).all()
            wrong = session.scalar(
                select(func.count()).select_from(ToolCall).where(ToolCall.status != "finished-ok")
            )
        by_toolcall: dict[int, list[str]] = {}
        for toolcall_id, status in logs_rows:
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

        ideal = RESULTS * VENDOR_DELAY / concurrency
        ratio = total / ideal
        ok = exactly_once and ratio <= TARGET
        cpus = os.cpu_count() or 1
        print(f"-- {instance.describe()}; {processes} callbacks worker(s) of "
              f"{'+'.join(map(str, split(concurrency, processes)))} threads")  # fmt: skip
        print(f"   setup: {RESULTS} users and attempts through the domain in {setup_s:.1f} s; workers ready")
        header()
        what = "queued" if QUEUED_FIRST else "results"
        label = f"{RESULTS} {what}, {shape(concurrency, processes)}, {database}"
        row(label, f"{total:.2f} s",
            f"{ideal:.2f} s ideal", ratio, f"<= {TARGET}x", ok)  # fmt: skip
        where = "this process" if reporters is None else f"{REPORT_PROCESSES} processes"
        if QUEUED_FIRST:
            print(f"   reports: all {RESULTS} made before the clock started, their fetches queued")
        else:
            print(
                f"   reports: all {RESULTS} answered after {report_s:.2f} s ({RESULTS / report_s:.0f}/s, "
                f"{REPORTERS} reporter threads in {where}); polled every {POLL_SECS * 1e3:.0f} ms"
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
            f"   CPU during the storm: callbacks worker(s) {worker_cpu:.1f} s "
            f"({worker_cpu / RESULTS * 1e3:.1f} ms a result; {worker_cpu / total:.0%} of one core), "
            f"reporting ({where}) {report_cpu:.1f} s ({report_cpu / RESULTS * 1e3:.1f} ms a report), "
            f"vendor {vendor_cpu:.1f} s; the whole machine {machine_cpu:.1f} s busy of {cpus} CPUs x "
            f"{total:.1f} s ({machine_cpu / (cpus * total):.0%}), {steal:.1f} s stolen by the hypervisor"
        )
        return {
            "database": database, "shape": shape(concurrency, processes), "concurrency": concurrency,
            "processes": processes, "total": total, "ideal": ideal, "ratio": ratio, "ok": ok,
            "worker_ms": worker_cpu / RESULTS * 1e3, "machine": machine_cpu / (cpus * total),
            "report_s": report_s, "report_ms": report_cpu / RESULTS * 1e3, "exactly_once": exactly_once,
        }  # fmt: skip
    finally:
        if reporters is not None:
            reporters.close()
        if celery is not None:
            celery.close()
        stop(workers)
        if vendor is not None:
            vendor.close()
        if poller is not None:
            poller.dispose()
        if app is not None:
            app.extensions["db"].dispose()
            app.extensions["start_tokens"].redis.close()
        instance.close()


def bare_storm(concurrency: int) -> None:
    """Baseline: RESULTS bare Celery tasks that only sleep VENDOR_DELAY, on the same worker command
    (threads pool, ``concurrency``, task events, same settings), sent at once; until every result is in."""
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
        procs.append(start(worker_command("bench.bare_task", bare_task.QUEUE, concurrency, name), env, log))
        wait_ready(bare_task.app, name, procs[0], log)
        worker_cpu = cpu_seconds(procs[0].pid)
        t0 = time.perf_counter()
        results = [bare_task.sleep.delay(VENDOR_DELAY) for _ in range(RESULTS)]
        for result in results:
            result.get(timeout=STORM_TIMEOUT)
        total = time.perf_counter() - t0
        worker_cpu = cpu_seconds(procs[0].pid) - worker_cpu
        ideal = RESULTS * VENDOR_DELAY / concurrency
        print("-- baseline: the same worker command with a bare task that sleeps 100 ms (bench/bare_task.py)")
        header()
        row(f"{RESULTS} bare sleep tasks, C={concurrency}", f"{total:.2f} s", f"{ideal:.2f} s ideal",
            total / ideal, "(reported)", None)  # fmt: skip
        print(f"   CPU: worker {worker_cpu:.1f} s ({worker_cpu / RESULTS * 1e3:.1f} ms a task)\n")
    finally:
        bare_task.app.close()
        stop(procs)
        redis_client.flushdb()
        redis_client.close()
        shutil.rmtree(workdir, ignore_errors=True)


def calibration() -> float:
    """CPU seconds of a fixed pure-Python loop: the host's speed drifts, and this shows by how much."""
    started = time.process_time()
    sum(i * i for i in range(10**7))
    return time.process_time() - started


def main() -> int:
    if sys.argv[1:2] == ["--vendor"]:
        serve_vendor(sys.argv[2])
        return 0
    if sys.argv[1:2] == ["--report"]:
        serve_reports(sys.argv[2], int(sys.argv[3]))
        return 0
    import celery
    import sqlalchemy

    print(
        f"python {platform.python_version()}, celery {celery.__version__}, sqlalchemy {sqlalchemy.__version__}; "
        f"{machine()}\n{RESULTS} results, vendor answering in {VENDOR_DELAY * 1e3:.0f} ms "
        f"({'keeping connections open' if KEEPALIVE else 'closing each connection'}), callbacks workers "
        f"--pool threads, concurrency {','.join(map(str, CONCURRENCIES))} in "
        f"{','.join(map(str, PROCESSES))} process(es); reports from {REPORTERS} threads in "
        f"{REPORT_PROCESSES} process(es){'; reports queued before the clock' if QUEUED_FIRST else ''}\n"
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"machine speed now: a pure-Python loop takes {calibration():.2f} s of CPU (to compare runs)\n")
    runs = []
    for concurrency in CONCURRENCIES:
        if BASELINE:
            bare_storm(concurrency)
        for database in DATABASES:
            for processes in PROCESSES:
                runs.append(run(database, concurrency, processes))
                print()
    if len(runs) > len(DATABASES):
        # One row per run, side by side: where the ratio leaves the target is the knee.
        print("Summary: total time against the ideal, by concurrency and shape")
        print(f"{'database':<12} {'shape':<10} {'total':>9} {'ideal':>9} {'ratio':>8}  "
              f"{'worker CPU/result':>17} {'report CPU':>11} {'reports done':>13} {'machine busy':>13}")  # fmt: skip
        for r in runs:
            print(f"{r['database']:<12} {r['shape']:<10} {r['total']:>7.2f} s {r['ideal']:>7.2f} s "
                  f"{r['ratio']:>7.2f}x  {r['worker_ms']:>14.1f} ms {r['report_ms']:>8.1f} ms "
                  f"{r['report_s']:>11.2f} s {r['machine']:>13.0%}"
                  f"{'' if r['exactly_once'] else '  NOT EXACTLY ONCE'}")  # fmt: skip
    return 0 if all(r["exactly_once"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
