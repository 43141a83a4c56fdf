"""Start storm: concurrent users logging in and starting an exam, and the vendor fetching the start
data, through gunicorn -- against a bare Flask endpoint served the same way, in the same run.

    .venv/bin/python bench/start_storm.py

It starts its own infrastructure and stops it again, also on error (bench/support.py):

- a temporary instance: a SQLite file in a temporary folder (the default deployment;
  BENCH_DATABASE=postgresql for a fresh PostgreSQL database instead), Redis db 2 (BENCH_REDIS_URL;
  flushed before and after), a random SECRET_KEY, TOOLCALL_RATELIMIT=off;
- through the CLI (``flask --app webapp ...``): one user per client thread (``users add``), a client
  whose start and result URLs point at 127.0.0.1:9, which is never contacted (the 303's Location is
  only parsed), and its tool (``clients add``, ``tools add``);
- two gunicorn servers with the same command, ``gunicorn --workers 2 --threads 4 APP`` (the Procfile's
  ``web`` line) on ephemeral ports: the portal, ``webapp:create_app()``, and the baseline,
  ``bench.bare_flask:create_app()`` (one endpoint answering a small JSON document).

A **flow** (ours), by one client thread with its own ``requests.Session`` (cookies cleared, so every
flow logs in anew; connections kept alive):

1. ``GET /accounts/login/`` (the form's CSRF token),
2. ``POST /accounts/login/`` (username, password, csrf_token) -> 302,
3. ``GET /tooluser/tools/<slug>/`` (the start form's CSRF token),
4. ``POST /tooluser/tools/<slug>/`` (no redirect followed) -> 303 to the vendor with ``access_token=T``,
5. ``GET /fetch-token/?access_token=T``, as the vendor (a session of its own, no cookies) -> 200 with
   the start data, checked.

A **baseline flow** is the same number of requests (5) to the bare endpoint, by the same threads.

CLIENTS threads (BENCH_CLIENTS, default 8) run flows for ROUND_SECS; the rate is the flows completed
within that window over its length (every thread is busy from its start, so nothing is idle in it).
Ours and the baseline alternate, ROUNDS rounds each (which goes first alternates too), after a
warm-up round of each; the ratio is the median of the per-round ratios of flows per second. Also
printed: the median latency of each step of ours under load, and the CPU time of one password check.

The login's password check (Argon2id, webapp/passwords.py) is deliberately costly; its CPU time is
measured in the same run and printed as a share of the CPU one flow gets at the measured rate.

Method, figures and what they mean: docs/portal-performance.md.
"""

from __future__ import annotations

import os
import platform
import re
import signal
import statistics
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from bench.support import (  # noqa: E402
    Instance,
    gunicorn,
    header,
    machine,
    row,
    spread,
    stop,
    tail,
    wait_http,
)

CLIENTS = int(os.environ.get("BENCH_CLIENTS", "8"))
DATABASE = os.environ.get("BENCH_DATABASE", "sqlite")
WORKERS, THREADS = 2, 4  # the Procfile's web line, on both sides
ROUND_SECS = float(os.environ.get("BENCH_ROUND_SECS", "3"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "6"))
WARMUP_SECS = 1.5
TARGET = 0.3
PASSWORD = "bench-password-1"
CLIENT = "bench-vendor"
SLUG = "bench-exam"
NOWHERE = "http://127.0.0.1:9"  # the discard port: nothing listens, and nothing goes there
TIMEOUT = 30.0
CSRF = re.compile(r'<input[^>]*name="csrf_token"[^>]*value="([^"]+)"')
STEPS = ("GET login", "POST login", "GET start", "POST start", "GET fetch-token")


class FlowError(AssertionError):
    pass


def csrf(response: requests.Response, what: str) -> str:
    if response.status_code != 200:
        raise FlowError(f"{what}: HTTP {response.status_code}: {response.text[:300]}")
    match = CSRF.search(response.text)
    if not match:
        raise FlowError(f"{what}: no csrf_token in the page")
    return match.group(1)


class Portal:
    """One client thread's side of ours: the user's session and the vendor's."""

    def __init__(self, base: str, username: str) -> None:
        self.base = base
        self.username = username
        self.user = requests.Session()
        self.vendor = requests.Session()
        self.steps: dict[str, list[float]] = defaultdict(list)

    def fresh_connections(self) -> None:
        self.user.close()
        self.vendor.close()

    def flow(self) -> None:
        user, base, t = self.user, self.base, [time.perf_counter()]
        user.cookies.clear()  # a new visitor: log in every time
        token = csrf(user.get(f"{base}/accounts/login/", timeout=TIMEOUT), "login page")
        t.append(time.perf_counter())
        r = user.post(
            f"{base}/accounts/login/",
            data={"username": self.username, "password": PASSWORD, "csrf_token": token},
            allow_redirects=False,
            timeout=TIMEOUT,
        )
        if r.status_code != 302:
            raise FlowError(f"login as {self.username}: HTTP {r.status_code}")
        t.append(time.perf_counter())
        token = csrf(user.get(f"{base}/tooluser/tools/{SLUG}/", timeout=TIMEOUT), "start page")
        t.append(time.perf_counter())
        r = user.post(
            f"{base}/tooluser/tools/{SLUG}/",
            # A user's earlier attempt may still be open: confirm ending it, as the page asks.
            data={"csrf_token": token, "supersede": "yes"},
            allow_redirects=False,
            timeout=TIMEOUT,
        )
        location = r.headers.get("Location", "")
        if r.status_code != 303 or not location.startswith(f"{NOWHERE}/start/"):
            raise FlowError(f"start: HTTP {r.status_code} to {location!r}")
        start_token = parse_qs(urlsplit(location).query)["access_token"][0]
        t.append(time.perf_counter())
        r = self.vendor.get(f"{base}/fetch-token/", params={"access_token": start_token}, timeout=TIMEOUT)
        if r.status_code != 200:
            raise FlowError(f"fetch-token: HTTP {r.status_code}: {r.text[:300]}")
        data = r.json()
        if data.get("type") != "person" or data["data"].get("exam") != SLUG:
            raise FlowError(f"fetch-token: unexpected start data {data}")
        t.append(time.perf_counter())
        for name, a, b in zip(STEPS, t, t[1:]):
            self.steps[name].append(b - a)


class Bare:
    """One client thread's side of the baseline: 5 GETs of the bare endpoint."""

    def __init__(self, base: str) -> None:
        self.url = f"{base}/"
        self.session = requests.Session()

    def fresh_connections(self) -> None:
        self.session.close()

    def flow(self) -> None:
        for _ in range(5):
            r = self.session.get(self.url, timeout=TIMEOUT)
            if r.status_code != 200 or r.json().get("type") != "ok":
                raise FlowError(f"bare endpoint: HTTP {r.status_code}")


def storm(sides: list, seconds: float) -> float:
    """Flows per second of one thread per side, each running flows for ``seconds``."""
    start = threading.Barrier(len(sides) + 1)
    counts = [0] * len(sides)
    errors: list[BaseException] = []
    holder: dict[str, float] = {}

    def run(k: int) -> None:
        start.wait()
        try:
            while True:
                side = sides[k]
                t_end = holder["t0"] + seconds
                if time.perf_counter() >= t_end:
                    return
                side.flow()
                if time.perf_counter() <= t_end:
                    counts[k] += 1
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    # Connections kept from the previous round sat idle past gunicorn's keep-alive while the other
    # side ran: the server may close one just as a request goes out on it (a reset). Start afresh.
    for side in sides:
        side.fresh_connections()
    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(len(sides))]
    for thread in threads:
        thread.start()
    holder["t0"] = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join(seconds + 2 * TIMEOUT)
    if errors:
        raise errors[0]
    return sum(counts) / seconds


def alternate(ours_sides: list, bare_sides: list, rounds: int) -> tuple[list[float], list[float]]:
    """Flows/s of ours and of the baseline, ``rounds`` each, alternating (and who goes first)."""
    ours, bare = [], []
    for r in range(rounds):
        if r % 2 == 0:
            ours.append(storm(ours_sides, ROUND_SECS))
            bare.append(storm(bare_sides, ROUND_SECS))
        else:
            bare.append(storm(bare_sides, ROUND_SECS))
            ours.append(storm(ours_sides, ROUND_SECS))
    return ours, bare


def measure(portal_url: str, bare_url: str, usernames: list[str]) -> None:
    ours_sides = [Portal(portal_url, name) for name in usernames]
    bare_sides = [Bare(bare_url) for _ in usernames]
    storm(ours_sides, WARMUP_SECS)  # warm-up: connections, gunicorn threads, caches
    storm(bare_sides, WARMUP_SECS)
    for side in ours_sides:
        side.steps.clear()

    ours, bare = alternate(ours_sides, bare_sides, ROUNDS)
    ratios = [a / b for a, b in zip(ours, bare)]
    ratio = statistics.median(ratios)

    header()
    row(f"start flows/s, {CLIENTS} clients vs bare", f"{statistics.median(ours):.1f} flows/s",
        f"{statistics.median(bare):.1f} flows/s", ratio, f">= {TARGET}x", ratio >= TARGET)  # fmt: skip
    spread("round", ratios)
    print(
        f"  requests/s: ours {5 * statistics.median(ours):.0f}, bare {5 * statistics.median(bare):.0f}; "
        f"{sum(len(s.steps['GET login']) for s in ours_sides)} flows of ours measured"
    )
    print("  ours, median latency per step under load:")
    for name in STEPS:
        times = [x for side in ours_sides for x in side.steps[name]]
        print(f"    {name:<16} {statistics.median(times) * 1e3:7.1f} ms")

    check_ms = password_check_ms()
    flow_ms = (os.cpu_count() or 1) * 1e3 / statistics.median(ours)
    print(
        f"  one password check (the login's Argon2id): {check_ms:.0f} ms CPU, {check_ms / flow_ms:.0%} of the "
        f"{flow_ms:.0f} ms of CPU a flow gets at this rate on {os.cpu_count()} CPUs"
    )


def password_check_ms() -> float:
    """CPU time of one password check as the login does it, median of 5."""
    from webapp.passwords import check_password, hash_password

    hashed = hash_password(PASSWORD)
    times = []
    for _ in range(5):
        t0 = time.process_time()
        check_password(hashed, PASSWORD)
        times.append(time.process_time() - t0)
    return statistics.median(times) * 1e3


def main() -> int:
    from importlib.metadata import version

    import gunicorn as gunicorn_package
    import sqlalchemy

    print(
        f"python {platform.python_version()}, flask {version('flask')}, gunicorn {gunicorn_package.__version__}, "
        f"sqlalchemy {sqlalchemy.__version__}, requests {requests.__version__}; {machine()}"
    )
    # SIGTERM to the bench: unwind through the finally below, which stops the servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    instance = Instance(DATABASE, prefix="start-storm-")
    procs = []
    try:
        print(
            f"database: {instance.describe()}; gunicorn --workers {WORKERS} --threads {THREADS} on both sides; "
            f"{CLIENTS} client threads; rounds of {ROUND_SECS:g} s, {ROUNDS} a side\n"
        )
        instance.flask("clients", "add", CLIENT, "--start-url", f"{NOWHERE}/start/",
                       "--result-url", f"{NOWHERE}/result-data/")  # fmt: skip
        instance.flask("tools", "add", SLUG, "--client", CLIENT, "--name", "Bench exam")
        usernames = [f"bench-user-{k}" for k in range(CLIENTS)]
        with ThreadPoolExecutor(2) as pool:  # two at a time: each process hashes a password (2 CPUs)
            list(pool.map(lambda name: instance.flask(
                "users", "add", name, "--password", PASSWORD, "--first-name", "Bench",
                "--last-name", name, "--email", f"{name}@example.org"), usernames))  # fmt: skip

        portal, portal_url = gunicorn("webapp:create_app()", instance.env, instance.path / "portal.log",
                                      WORKERS, THREADS)  # fmt: skip
        procs.append(portal)
        bare, bare_url = gunicorn("bench.bare_flask:create_app()", instance.env, instance.path / "bare.log",
                                  WORKERS, THREADS)  # fmt: skip
        procs.append(bare)
        wait_http(f"{portal_url}/accounts/login/", portal, instance.path / "portal.log")
        wait_http(f"{bare_url}/", bare, instance.path / "bare.log")
        measure(portal_url, bare_url, usernames)
    except BaseException:
        print(f"portal log (end):\n{tail(instance.path / 'portal.log')}", file=sys.stderr)
        raise
    finally:
        stop(procs)
        instance.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
