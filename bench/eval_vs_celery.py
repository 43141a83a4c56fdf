"""Bus.eval against a bare Celery task, in one run, on the same broker (docs/toolbus.md §7, "Eval overhead").

    .venv/bin/python bench/eval_vs_celery.py

It starts its own infrastructure and stops it again, also on error:

- a dedicated Redis database (BENCH_REDIS_URL, default redis://127.0.0.1:6379/7), flushed before and
  after; CELERY_BROKER_URL and CELERY_RESULT_BACKEND are ignored, so both sides share that broker;
- the ToolBus workers of a temporary tools.toml holding only the trivial internal tool
  ``examples.tools.echo:Echo`` (``eval(echo(<int>), <int>)``, restart_frequency 0), started by
  ``python -m worker tools`` (one shared prefork worker, 2 children);
- a plain Celery worker for the baseline, the bare task ``bench.echo`` of bench/bare_task.py
  (``echo(x) -> x``, same settings, its own queue), also prefork with 2 children.

Measures, each interleaved so that drift in the machine's speed hits both sides alike:

1. round trip: alternating blocks of BLOCK ``bus.eval`` calls and BLOCK ``echo.delay(x).get()``
   calls (which goes first alternates too); the medians of the per-call times are compared;
2. throughput with 8 concurrent callers (threads; one Bus shared by all, one app for the bare
   side), alternating rounds; the median of the per-round ratios;
3. ``eval_many`` with batches of 100 against 100 single ``bus.eval`` calls (one caller),
   alternating rounds; the median of the per-round ratios.

Method, figures and what they mean: docs/worker-performance.md.
"""

from __future__ import annotations

import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.support import header, row, spread, stop  # noqa: E402

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
CONCURRENCY = 2  # children of each worker (the machine has 2 cores); the same on both sides
CALLERS = 8
BLOCK = 50  # calls per latency block
LATENCY_ROUNDS = 24  # blocks per side
THROUGHPUT_CALLS = 30  # calls per caller per round
THROUGHPUT_ROUNDS = 12
BATCH = 100
BATCH_ROUNDS = 9
TIMEOUT = 30.0
START_TIMEOUT = 60.0  # seconds both workers get to answer a ping
STOP_TIMEOUT = 40.0  # the launcher gives its workers 30 s to stop

TOOLS_TOML = """\
# Written by bench/eval_vs_celery.py for one run.
[tool.echo]
tool_name = "examples.tools.echo:Echo"
host_name = "ToolBus"
restart_frequency = 0
function_signatures = ["eval(echo(<int>), <int>)"]
"""


# ---- infrastructure ------------------------------------------------------------------------------


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        # Its own session: a Ctrl-C in the terminal reaches only the bench, which stops it in order.
        return subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _wait_for_workers(app, names: list[str], procs: list[tuple[subprocess.Popen, Path]]) -> None:
    """Until a worker whose name starts with each of ``names`` answers a ping (bounded)."""
    deadline = time.monotonic() + START_TIMEOUT
    missing = set(names)
    while missing:
        for proc, log in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[:4]} exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            logs = "\n".join(log.read_text()[-2000:] for _, log in procs)
            raise RuntimeError(
                f"no answer to ping within {START_TIMEOUT:.0f} s from {sorted(missing)}\n{logs}"
            )
        for reply in app.control.ping(timeout=0.5):
            for worker in reply:
                missing -= {n for n in missing if worker.startswith(n)}


# ---- measures ------------------------------------------------------------------------------------


def timed_calls(fn, n: int) -> list[float]:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return times


def concurrent_rate(fn, callers: int, calls: int) -> float:
    """Calls per second of ``callers`` threads each making ``calls`` calls, started together."""
    start = threading.Barrier(callers + 1)
    errors: list[BaseException] = []

    def caller(k: int) -> None:
        start.wait()
        try:
            for i in range(calls):
                fn(k * calls + i)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=caller, args=(k,), daemon=True) for k in range(callers)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return callers * calls / elapsed


def alternate(a, b, rounds: int) -> tuple[list, list]:
    """Run ``a`` and ``b`` ``rounds`` times each, alternately, swapping which goes first every round."""
    ra, rb = [], []
    for r in range(rounds):
        if r % 2 == 0:
            ra.append(a())
            rb.append(b())
        else:
            rb.append(b())
            ra.append(a())
    return ra, rb


def measure(bus, bare) -> None:
    from toolbus.aterm import parse

    def ours(x: int) -> None:
        value = bus.eval("echo", f"echo({x})", timeout=TIMEOUT)
        assert value == parse(str(x)), value

    def base(x: int) -> None:
        value = bare.delay(x).get(timeout=TIMEOUT)
        assert value == x, value

    # Warm-up: every child of both workers has run a task (and the tool instance exists).
    concurrent_rate(ours, CALLERS, 10)
    concurrent_rate(base, CALLERS, 10)
    timed_calls(ours, 50)
    timed_calls(base, 50)

    header()

    # 1. round trip
    a, b = alternate(lambda: timed_calls(ours, BLOCK), lambda: timed_calls(base, BLOCK), LATENCY_ROUNDS)
    ours_s = statistics.median(t for block in a for t in block)
    base_s = statistics.median(t for block in b for t in block)
    ratio = ours_s / base_s
    row("eval round trip vs bare task", f"{ours_s * 1e3:.2f} ms", f"{base_s * 1e3:.2f} ms", ratio,
        "<= 1.10x", ratio <= 1.10)  # fmt: skip
    spread("block", [statistics.median(x) / statistics.median(y) for x, y in zip(a, b)])

    # 2. throughput with 8 concurrent callers
    a, b = alternate(
        lambda: concurrent_rate(ours, CALLERS, THROUGHPUT_CALLS),
        lambda: concurrent_rate(base, CALLERS, THROUGHPUT_CALLS),
        THROUGHPUT_ROUNDS,
    )
    ratios = [x / y for x, y in zip(a, b)]
    ratio = statistics.median(ratios)
    row(f"throughput, {CALLERS} callers vs bare", f"{statistics.median(a):.0f} /s", f"{statistics.median(b):.0f} /s",
        ratio, ">= 0.9x", ratio >= 0.9)  # fmt: skip
    spread("round", ratios)

    # 3. eval_many in batches of 100 vs single evals, one caller
    calls = [f"echo({i})" for i in range(BATCH)]
    expected = [parse(str(i)) for i in range(BATCH)]

    def batch() -> float:
        t0 = time.perf_counter()
        values = bus.eval_many("echo", calls, timeout=TIMEOUT)
        elapsed = time.perf_counter() - t0
        assert values == expected, values
        return BATCH / elapsed

    def singles() -> float:
        return BATCH / sum(timed_calls(ours, BATCH))

    a, b = alternate(batch, singles, BATCH_ROUNDS)
    ratios = [x / y for x, y in zip(a, b)]
    ratio = statistics.median(ratios)
    row(f"eval_many({BATCH}) vs eval per call", f"{statistics.median(a):.0f} /s", f"{statistics.median(b):.0f} /s",
        ratio, ">= 10x", ratio >= 10)  # fmt: skip
    spread("round", ratios)


# ---- main ----------------------------------------------------------------------------------------


def _redis_version(client) -> str:
    try:
        return client.info("server")["redis_version"]
    except Exception:
        return "?"


def main() -> int:
    # Both sides, the workers and this process, on one dedicated Redis database.
    os.environ["REDIS_URL"] = REDIS_URL
    os.environ.pop("CELERY_BROKER_URL", None)
    os.environ.pop("CELERY_RESULT_BACKEND", None)

    import celery
    import kombu
    import redis

    workdir = Path(tempfile.mkdtemp(prefix="eval-vs-celery-"))
    tools_file = workdir / "tools.toml"
    tools_file.write_text(TOOLS_TOML)
    os.environ["TOOLCALL_TOOLS"] = str(tools_file)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }

    from bench import bare_task  # reads REDIS_URL now
    from worker.bus import Bus

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    print(
        f"python {platform.python_version()}, celery {celery.__version__}, kombu {kombu.__version__}, "
        f"redis {_redis_version(client)} at {REDIS_URL} (broker and results), {os.cpu_count()} CPUs, "
        f"prefork x{CONCURRENCY} on both sides, {socket.gethostname()}\n"
    )

    # SIGTERM to the bench: unwind through the finally below, which stops the workers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    procs: list[tuple[subprocess.Popen, Path]] = []
    try:
        procs.append((
            _start(
                [sys.executable, "-m", "worker", "tools", "--host", "bench",
                 "--concurrency", str(CONCURRENCY), "--loglevel", "WARNING"],
                env, workdir / "toolbus.log",
            ),
            workdir / "toolbus.log",
        ))  # fmt: skip
        procs.append((
            _start(
                [sys.executable, "-m", "celery", "-A", "bench.bare_task", "worker",
                 "-Q", bare_task.QUEUE, "--pool", "prefork", "--concurrency", str(CONCURRENCY),
                 "--hostname", "bench-bare@%h", "--loglevel", "WARNING", "--task-events",
                 "--without-mingle", "--without-gossip"],
                env, workdir / "bare.log",
            ),
            workdir / "bare.log",
        ))  # fmt: skip
        bus = Bus(tools=str(tools_file))
        _wait_for_workers(bus.app, ["toolbus-shared-bench@", "bench-bare@"], procs)
        measure(bus, bare_task.echo)
    finally:
        stop([proc for proc, _ in procs], STOP_TIMEOUT)
        client.flushdb()
        for f in workdir.iterdir():
            f.unlink()
        workdir.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
