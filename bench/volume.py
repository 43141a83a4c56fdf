"""Volume: every ops page, the user's paths and one sweep run, timed with 10,000 and with 1,000,000
attempts -- the growth factor of each path for ×100 data.

    .venv/bin/python bench/volume.py            # 10k and 1M ToolCalls (PostgreSQL; seeding ~10 min)
    .venv/bin/python bench/volume.py --quick    # 10k and 200k (×20 data), for a quick look

The baseline is the same code on the small database, timed in the same run, alternating with the
large one, so that the machine's drift hits both alike; the figure is large / small.

Each size is a fresh PostgreSQL database (bench/support.py's ``Instance``: migrated with ``flask
--app webapp init-db``) seeded with set-based SQL (``generate_series``), in the proportions of a
deployment that has run for years at about 1,000 attempts a day:

- N ToolCalls started 86.4 s apart up to now (so the last day and the last fortnight hold as many
  attempts at either size: the history grows, not the rate), over 20 tools of 10 clients and N/10
  users; one user has 5,000 attempts; older than a day, 85 % finished-ok and 15 % finished-err,
  the last day partly still under way (start-data-sent, start-tk-sent);
- the log of each (7 rows for finished-ok, 4 for finished-err: ≈6.6 per ToolCall), a stored
  result for each finished-ok one, its done fetch record with the body kept;
- N/10 owed fetches reported during the last day whose messages were lost (at least 4,000, so
  that a sweep run takes a whole batch at either size) and N/50 failed ones over all the history;
- the counts by status, then ``VACUUM ANALYZE``.

Timed, in this process through Flask's test client (the portal's own code, no HTTP server):
every ops page and list (first pages, last pages through their ``after`` cursor, each filter and
search), /metrics, the user's home, attempts pages, start, ``/fetch-token/`` and ``/result/``; and
one sweep run (``worker.fetch_tasks.run_sweep``: taking a batch of TOOLCALL_SWEEP_BATCH owed
fetches out of the backlog, queuing them on Redis, the expiry and the counts), with the queue
emptied and the batch made owed again between runs. ROUNDS rounds (BENCH_ROUNDS, 5), each timing
every path REPEAT times (3) on each size, which size goes first alternating; the figure per path
and size is the median.

At the large size, every statement each page runs is EXPLAINed: a sequential scan of a table that
grows with the data is reported with the page.

Then the large size's whole backlog (100k owed at 1M) is drained by beat's sweeps, for each batch
of BENCH_DRAIN_BATCHES (1000,2000) and each pace of the callbacks workers of BENCH_DRAIN_RATES
(100,16 fetches a second), on a simulated clock (``drain``): the time of each run, and how many
times each fetch was queued before it was done.

Targets (the issue's): each page's growth ≤ 2× for ×100 data and under 50 ms at 1M; a sweep run
under 2 s with 100k owed, and each owed fetch queued at most twice while it waits. Method and the
latest table: docs/performance.md ("Volume").
"""

from __future__ import annotations

import base64
import collections
import json
import os
import platform
import re
import signal
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import celeryconfig  # noqa: E402
from bench.support import Instance, header, machine, row, use_env  # noqa: E402

QUICK = "--quick" in sys.argv[1:]
SMALL = int(os.environ.get("BENCH_VOLUME_SMALL", "10000"))
LARGE = int(os.environ.get("BENCH_VOLUME_LARGE", "200000" if QUICK else "1000000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
REPEAT = min(10, int(os.environ.get("BENCH_REPEAT", "3")))
HEAVY_ATTEMPTS = 5000
PAGE_TARGET_MS = 50.0
SWEEP_TARGET_S = 2.0
GROWTH_TARGET = 2.0
METRICS_TOKEN = "bench-metrics-token"
PASSWORD = "bench-password-1"
#: Tables that grow with the data: a sequential scan of one is a page whose cost grows too.
GROWING = {"toolcall_toolcall", "toolcall_toolcalllog", "toolcall_toolcallresult", "toolcall_resultfetch"}
CSRF = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')
#: The callbacks queue's list in Redis: Celery's keys carry the project's prefix.
CALLBACKS_KEY = celeryconfig.REDIS_KEY_PREFIX + celeryconfig.CALLBACKS_QUEUE


# ---- seeding ----------------------------------------------------------------------------------------

SEED = """
INSERT INTO toolcall_client (id, name, receive_start_token_url, receive_result_token_url, secret)
SELECT c, 'vendor-' || c, 'http://127.0.0.1:9/start/', 'http://127.0.0.1:9/result-data/', NULL
FROM generate_series(1, 10) c;

INSERT INTO toolcall_tool (id, client_id, slug, name, description, icon, restartable, deadline_minutes)
SELECT t, 1 + t % 10, 'exam-' || t, 'Exam ' || t, '', '', true, 60 + 30 * (t % 7)
FROM generate_series(1, 20) t;

INSERT INTO toolcall_user (id, username, password_hash, first_name, last_name, email, is_admin, extra_time,
                           persnr, created)
SELECT u, 'u' || u, '!', 'First', 'Last ' || u, 'u' || u || '@example.org', false, false,
       'N' || lpad(u::text, 32, '0'), now() - interval '5 years'
FROM generate_series(1, :users) u;

INSERT INTO toolcall_toolcall (id, tool_id, user_id, started, ended, status, attempt)
SELECT g, 1 + g % 20,
       CASE WHEN g % :heavy_every = 0 THEN 1 ELSE 2 + (g::bigint * 7919) % (:users - 1) END,
       s.started,
       CASE WHEN s.status LIKE 'finished-%' THEN s.started + interval '30 minutes' END,
       s.status, g
FROM generate_series(1, :n) g
CROSS JOIN LATERAL (
  SELECT now() - (:n - g) * interval '86.4 seconds' AS started
) t
CROSS JOIN LATERAL (
  SELECT t.started,
         CASE WHEN t.started > now() - interval '5 minutes' THEN 'start-tk-sent'
              WHEN t.started > now() - interval '1 day' AND g % 10 < 3 THEN 'start-data-sent'
              WHEN g % 100 < 85 THEN 'finished-ok'
              ELSE 'finished-err' END AS status
) s;

INSERT INTO toolcall_toolcalllog (toolcall_id, timestamp, status, details)
SELECT t.id, t.started + (s.i - 1) * interval '1 minute', s.status, 'seeded'
FROM toolcall_toolcall t
CROSS JOIN LATERAL unnest(CASE t.status
    WHEN 'finished-ok' THEN ARRAY['initial', 'start-tk-sent', 'start-data-sent', 'result-tk-received',
                                  'result-received-ok', 'result-saved', 'finished-ok']
    WHEN 'finished-err' THEN ARRAY['initial', 'start-tk-sent', 'start-tk-err', 'finished-err']
    WHEN 'start-data-sent' THEN ARRAY['initial', 'start-tk-sent', 'start-data-sent']
    ELSE ARRAY['initial', 'start-tk-sent'] END) WITH ORDINALITY s(status, i)
ORDER BY t.id, s.i;

INSERT INTO toolcall_toolcallresult (toolcall_id, data, token, persnr, participant_id, exam, exam_type,
                                     passed, score, timestamp, late, stored)
SELECT t.id, :body, 'R-' || t.id, 'N' || lpad(t.user_id::text, 32, '0'), 'P' || t.id, 'exam-' || t.tool_id,
       'start', t.id % 3 <> 0, t.id % 101, t.ended, false, t.ended
FROM toolcall_toolcall t WHERE t.status = 'finished-ok' ORDER BY t.id;

INSERT INTO toolcall_resultfetch (client_id, token, state, reported_at, attempts, next_attempt_at,
                                  claimed_until, last_error, body, toolcall_id, queued_at)
SELECT 1 + t.tool_id % 10, 'R-' || t.id, 'done', t.ended - interval '1 minute', 1,
       t.ended - interval '1 minute', NULL, '', :body, t.id, NULL
FROM toolcall_toolcall t WHERE t.status = 'finished-ok' ORDER BY t.id;

INSERT INTO toolcall_resultfetch (client_id, token, state, reported_at, attempts, next_attempt_at,
                                  claimed_until, last_error, body, toolcall_id, queued_at)
SELECT 1 + g % 10, 'F-' || g, 'failed', now() - (:failed - g) * (:n / :failed) * interval '86.4 seconds', 7,
       now() - (:failed - g) * (:n / :failed) * interval '86.4 seconds', NULL, 'HTTP 500 from the vendor',
       'oops', NULL, NULL
FROM generate_series(1, :failed) g;

INSERT INTO toolcall_resultfetch (client_id, token, state, reported_at, attempts, next_attempt_at,
                                  claimed_until, last_error, body, toolcall_id, queued_at)
SELECT 1 + g % 10, 'O-' || g, 'owed', now() - interval '1 day' + g * (interval '1 day' / :owed), 0,
       now() - interval '1 day' + g * (interval '1 day' / :owed), NULL, '', '', NULL, NULL
FROM generate_series(1, :owed) g;

INSERT INTO toolcall_statuscount (status, delta)
SELECT status, count(*) FROM toolcall_toolcall GROUP BY status;

SELECT setval(pg_get_serial_sequence('toolcall_client', 'id'), 100);
SELECT setval(pg_get_serial_sequence('toolcall_tool', 'id'), 100);
SELECT setval(pg_get_serial_sequence('toolcall_user', 'id'), (SELECT max(id) FROM toolcall_user));
SELECT setval(pg_get_serial_sequence('toolcall_toolcall', 'id'), (SELECT max(id) FROM toolcall_toolcall));
"""

#: A result body as vendors send them (~330 bytes).
BODY = json.dumps(
    {
        "token": "R-0",
        "type": "result",
        "timestamp": "2025-03-04T05:06:07+00:00",
        "data": {"persnr": "N" + "0" * 32, "participant_id": "P-1017", "exam": "exam-1", "passed": True,
                 "score": 42, "system": "1:" + "x" * 43, "exam_type": "start"},
    }
)  # fmt: skip


def seed(instance: Instance, n: int) -> float:
    """Fill the instance's database with ``n`` ToolCalls and the rest (see the module); seconds taken."""
    from sqlalchemy import create_engine, text

    users = max(1000, n // 10)
    values = {"n": n, "users": users, "heavy_every": max(1, n // HEAVY_ATTEMPTS), "body": BODY,
              "owed": max(n // 10, 4000), "failed": max(n // 50, 100)}  # fmt: skip
    started = time.perf_counter()
    engine = create_engine(instance.database_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            for statement in filter(str.strip, SEED.split(";\n")):
                names = set(re.findall(r"(?<!:):(\w+)", statement))
                connection.execute(text(statement), {k: v for k, v in values.items() if k in names})
            connection.exec_driver_sql("VACUUM ANALYZE")
    finally:
        engine.dispose()
    return time.perf_counter() - started


# ---- one size ---------------------------------------------------------------------------------------


class Size:
    """One database, its portal app (in this process) and the clients of an operator and a user."""

    def __init__(self, label: str, n: int, instance: Instance) -> None:
        from sqlalchemy import event, text

        from webapp import create_app, keyset
        from webapp.cli import save_user
        from webapp.models import User
        from worker.app import make_app

        self.label, self.n, self.instance = label, n, instance
        self.app = create_app(
            {
                "DATABASE_URL": instance.database_url,
                "INSTANCE_PATH": str(instance.path),
                "SECRET_KEY": instance.env["SECRET_KEY"],
                "TOOLCALL_RATELIMIT": False,
                "TOOLCALL_METRICS_TOKEN": METRICS_TOKEN,
            }
        )
        self.db = self.app.extensions["db"]
        self.celery = make_app(
            "volume", broker_url=instance.env["REDIS_URL"], result_backend=instance.env["REDIS_URL"]
        )
        with self.db.session() as session:
            save_user(session, "operator", PASSWORD, admin=True)
            save_user(session, "starter", PASSWORD)
            heavy = session.get(User, 1)
            heavy.set_password(PASSWORD)
            self.heavy_persnr = heavy.persnr
        self.operator = self._login("operator")
        self.user = self._login("u1")
        self.starter = self._login("starter")
        self.start_form = CSRF.search(self.starter.get("/tooluser/tools/exam-3/").data.decode()).group(1)
        self.statements: list[tuple[str, object]] | None = None
        event.listen(self.db.engine, "before_cursor_execute", self._capture)

        with self.db.engine.connect() as c:

            def cursor(sql: str) -> str:
                started, row_id = c.execute(text(sql)).one()
                return keyset.encode(started, row_id)

            self.cursors = {
                "toolcalls": cursor(
                    "SELECT started, id FROM toolcall_toolcall ORDER BY started, id OFFSET 50 LIMIT 1"
                ),
                "finished-err": cursor(
                    "SELECT started, id FROM toolcall_toolcall WHERE status = 'finished-err' "
                    "ORDER BY started, id OFFSET 50 LIMIT 1"
                ),
                "fetches": cursor(
                    "SELECT reported_at, id FROM toolcall_resultfetch ORDER BY reported_at, id OFFSET 50 LIMIT 1"
                ),
                "done": cursor(
                    "SELECT reported_at, id FROM toolcall_resultfetch WHERE state = 'done' "
                    "ORDER BY reported_at, id OFFSET 50 LIMIT 1"
                ),
                "heavy": cursor(
                    "SELECT started, id FROM toolcall_toolcall WHERE user_id = 1 ORDER BY started, id OFFSET 50 LIMIT 1"
                ),
            }
            self.old_toolcall = c.execute(
                text("SELECT min(toolcall_id) FROM toolcall_resultfetch WHERE toolcall_id > :half"),
                {"half": n // 2},
            ).scalar()
            self.middle_day = c.execute(
                text("SELECT started::date FROM toolcall_toolcall WHERE id = :half"), {"half": n // 2}
            ).scalar()
            self.owed = c.execute(
                text("SELECT count(*) FROM toolcall_resultfetch WHERE state = 'owed'")
            ).scalar()
        self.reports = 0
        self.start_tokens: list[str] = []  # issued before a round: /fetch-token/ is timed alone

    def _login(self, username: str):
        client = self.app.test_client()
        token = CSRF.search(client.get("/accounts/login/").data.decode()).group(1)
        answer = client.post(
            "/accounts/login/", data={"username": username, "password": PASSWORD, "csrf_token": token}
        )
        if answer.status_code != 302:
            raise RuntimeError(f"{self.label}: logging in as {username} failed: HTTP {answer.status_code}")
        return client

    def _capture(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if self.statements is not None and not executemany:
            self.statements.append((statement, parameters))

    # ---- the paths -------------------------------------------------------------------------------------

    def paths(self) -> dict[str, Callable[[], None]]:
        op, user, c = self.operator, self.user, self.cursors

        def get(client, url: str, headers=None, status: int = 200) -> Callable[[], None]:
            def run() -> None:
                answer = client.get(url, headers=headers or {})
                if answer.status_code != status:
                    raise RuntimeError(f"{self.label}: GET {url}: HTTP {answer.status_code}")

            return run

        return {
            "ops: dashboard": get(op, "/ops/"),
            "ops: dashboard, 14 days": get(op, "/ops/?chart=14d"),
            "ops: ToolCalls, first page": get(op, "/ops/toolcalls/"),
            "ops: ToolCalls, last page": get(op, f"/ops/toolcalls/?after={c['toolcalls']}"),
            "ops: ToolCalls by status": get(op, "/ops/toolcalls/?status=finished-err"),
            "ops: ToolCalls by status, last page": get(
                op, f"/ops/toolcalls/?status=finished-err&after={c['finished-err']}"
            ),
            "ops: ToolCalls by tool": get(op, "/ops/toolcalls/?tool=exam-7"),
            "ops: find by username": get(op, "/ops/toolcalls/?user=u1"),
            "ops: find by persnr": get(op, f"/ops/toolcalls/?user={self.heavy_persnr}"),
            "ops: find by result token": get(op, f"/ops/toolcalls/?token=R-{self.old_toolcall}"),
            "ops: find by start date": get(
                op, f"/ops/toolcalls/?since={self.middle_day}&until={self.middle_day}"
            ),
            "ops: find by ToolCall id": get(op, f"/ops/toolcalls/?id={self.old_toolcall}", status=303),
            "ops: one ToolCall": get(op, f"/ops/toolcalls/{self.old_toolcall}/"),
            "ops: fetches, failed": get(op, "/ops/fetches/"),
            "ops: fetches, owed": get(op, "/ops/fetches/?state=owed"),
            "ops: fetches, all, last page": get(op, f"/ops/fetches/?state=all&after={c['fetches']}"),
            "ops: fetches, done, last page": get(op, f"/ops/fetches/?state=done&after={c['done']}"),
            "ops: clients": get(op, "/ops/clients/"),
            "ops: tools": get(op, "/ops/tools/"),
            "ops: ToolBus": get(op, "/ops/toolbus/"),
            "metrics": get(self.app.test_client(), "/metrics", {"Authorization": f"Bearer {METRICS_TOKEN}"}),
            "user: home": get(user, "/"),
            "user: attempts (5,000)": get(user, "/tooluser/attempts/"),
            "user: attempts, last page": get(user, f"/tooluser/attempts/?after={c['heavy']}"),
            "user: start": self.start,
            "vendor: /fetch-token/": self.fetch_token,
            "vendor: /result/": self.report,
        }

    def start(self, slug: str = "exam-3") -> str:
        # Starting again confirms that the open attempt of the same exam is superseded (the portal asks).
        answer = self.starter.post(
            f"/tooluser/tools/{slug}/", data={"csrf_token": self.start_form, "supersede": "yes"}
        )
        if answer.status_code != 303:
            raise RuntimeError(f"{self.label}: start: HTTP {answer.status_code}")
        return answer.headers["Location"].rsplit("access_token=", 1)[1]

    def fetch_token(self) -> None:
        token = self.start_tokens.pop() if self.start_tokens else self.start("exam-9")
        answer = self.app.test_client().get("/fetch-token/", query_string={"access_token": token})
        if answer.status_code != 200:
            raise RuntimeError(f"{self.label}: fetch-token: HTTP {answer.status_code}")

    def report(self) -> None:
        self.reports += 1
        answer = self.app.test_client().get(
            "/result/", query_string={"access_token": f"V-{os.getpid()}-{self.reports}", "client": "vendor-3"}
        )
        if answer.status_code != 200:
            raise RuntimeError(f"{self.label}: result: HTTP {answer.status_code}")

    def sweep(self) -> dict:
        from worker.fetch_tasks import run_sweep

        return run_sweep(self.celery, self.db, self.instance.redis, dict(self.app.config))

    def make_owed_again(self) -> None:
        """Undo a sweep run: its batch is owed and never queued again, and the queue is empty."""
        from sqlalchemy import update

        from webapp.models import ResultFetch

        self.instance.redis.delete(CALLBACKS_KEY)
        with self.db.begin() as connection:
            connection.execute(
                update(ResultFetch).where(ResultFetch.state == "owed", ResultFetch.queued_at.is_not(None))
                .values(queued_at=None)
            )  # fmt: skip

    def explain(self, path: Callable[[], None]) -> list[str]:
        """The growing tables the statements of one run of ``path`` scan sequentially."""
        self.statements = []
        try:
            path()
        finally:
            found, self.statements = self.statements, None
        scans = set()
        raw = self.db.engine.raw_connection()
        try:
            cursor = raw.cursor()
            for statement, parameters in found:
                if not statement.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE", "WITH")):
                    continue
                cursor.execute("EXPLAIN (FORMAT JSON) " + statement, parameters)
                scans |= _seq_scans(cursor.fetchone()[0][0]["Plan"])
            raw.rollback()
        finally:
            raw.close()
        return sorted(scans & GROWING)

    def close(self) -> None:
        self.db.dispose()
        self.celery.close()
        self.app.extensions["celery"].close()


def _seq_scans(plan: dict, limited: bool = False) -> set[str]:
    """The tables a plan scans sequentially, but for a scan without a filter under a LIMIT (it
    reads no more rows than the limit: a capped count of a whole table)."""
    limited = limited or plan.get("Node Type") == "Limit"
    found = set()
    if plan.get("Node Type") == "Seq Scan" and not (limited and "Filter" not in plan):
        found.add(plan["Relation Name"])
    for child in plan.get("Plans", []):
        found |= _seq_scans(child, limited)
    return found


# ---- measuring --------------------------------------------------------------------------------------


def timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def measure(small: Size, large: Size) -> None:
    paths = {size.label: size.paths() for size in (small, large)}
    names = list(paths[small.label])
    times: dict[tuple[str, str], list[float]] = {
        (name, s.label): [] for name in names for s in (small, large)
    }
    sweeps: dict[str, list[float]] = {small.label: [], large.label: []}
    for size in (small, large):  # warm-up: caches, connections, the first sweep's expiries
        for run in paths[size.label].values():
            run()
        size.sweep()
        size.make_owed_again()
    for r in range(ROUNDS):
        order = (small, large) if r % 2 == 0 else (large, small)
        for size in order:
            # One tool each: a start supersedes the open attempts of the same user and tool.
            size.start_tokens = [size.start(f"exam-{10 + k}") for k in range(REPEAT)]
        for name in names:
            for size in order:
                for _ in range(REPEAT):
                    times[(name, size.label)].append(timed(paths[size.label][name]))
        for size in order:
            sweeps[size.label].append(timed(size.sweep))
            size.make_owed_again()
        print(f"  round {r + 1}/{ROUNDS} done", flush=True)

    print(f"\nGrowth per path: the median of {ROUNDS * REPEAT} runs at each size; target ≤ {GROWTH_TARGET:g}x "
          f"and under {PAGE_TARGET_MS:g} ms at {large.label}")  # fmt: skip
    header()
    for name in names:
        a = statistics.median(times[(name, small.label)]) * 1e3
        b = statistics.median(times[(name, large.label)]) * 1e3
        growth = b / a
        ok = growth <= GROWTH_TARGET and b < PAGE_TARGET_MS
        row(name, f"{b:.1f} ms", f"{a:.1f} ms", growth, f"<= {GROWTH_TARGET:g}x, <50ms", ok)
    a, b = statistics.median(sweeps[small.label]), statistics.median(sweeps[large.label])
    batch = large.app.config["TOOLCALL_SWEEP_BATCH"]
    row(f"sweep run (batch {batch:,} of {large.owed:,} owed)", f"{b * 1e3:.0f} ms", f"{a * 1e3:.0f} ms", b / a,
        f"< {SWEEP_TARGET_S:g} s", b < SWEEP_TARGET_S)  # fmt: skip

    # Idempotence: a second run right after the first queues none of the first one's batch.
    first, second = large.sweep(), large.sweep()
    print(f"  sweep at {large.label}: a run queued {first['requeued']}, the next run right after "
          f"{second['requeued']} (the queue held {second['waiting']})")  # fmt: skip
    large.make_owed_again()
    # What publishing alone costs: a run's time is mostly its batch's messages.
    from webapp import fetches

    publish = statistics.median(timed(lambda: fetches.queue(large.celery, 0)) for _ in range(500))
    large.instance.redis.delete(CALLBACKS_KEY)
    print(f"  publishing one message costs {publish * 1e3:.2f} ms here: a batch of {batch:,} "
          f"{batch * publish:.2f} s of the run")  # fmt: skip

    print(f"\nEvery statement of each path, EXPLAINed at {large.label}: sequential scans of growing tables")
    missing = 0
    for name, run in paths[large.label].items():
        scans = large.explain(run)
        if scans:
            missing += 1
            print(f"  {name:<40} seq scan of {', '.join(scans)}")
    print(f"  {len(names) - missing} of {len(names)} paths use indexes only")


# ---- draining a backlog ------------------------------------------------------------------------------

#: The callbacks workers' pace in a drain, fetches a second: one process at its GIL-bound ceiling with
#: a fast vendor (docs/portal-performance.md), and 16 threads waiting on a vendor that answers in 1 s.
DRAIN_RATES = [float(x) for x in os.environ.get("BENCH_DRAIN_RATES", "100,16").split(",")]
#: The sweep's batches tried (TOOLCALL_SWEEP_BATCH).
DRAIN_BATCHES = [int(x) for x in os.environ.get("BENCH_DRAIN_BATCHES", "1000,2000").split(",")]
#: The issue's target: each owed fetch queued at most this often while it waits.
QUEUED_TARGET = 2


def fetch_id(message: bytes) -> int:
    """The fetch a ``toolcall.fetch_result`` message in Redis is for (kombu's JSON envelope, the
    body base64-encoded JSON ``[args, kwargs, embed]``)."""
    return json.loads(base64.b64decode(json.loads(message)["body"]))[0][0]


def drain(size: Size, batch: int, rate: float) -> dict:
    """Beat's sweeps over the whole owed backlog, while callbacks workers take ``rate`` fetches a
    second: how long each run took, and how many times each fetch was queued before it was done.

    On a simulated clock, so that the hours a backlog takes to drain take minutes here: each tick
    sets the sweep's clock (``webapp.fetches.utcnow``) TOOLCALL_SWEEP_SECS on. The runs themselves
    are real (``run_sweep`` on the database, Redis and the lock); the workers are simulated between
    two runs: they take ``rate × period`` owed fetches off the queue's head, oldest message first,
    and mark them done, and any number of messages of fetches already done on the way (a duplicate
    finds nothing to claim and asks the vendor nothing)."""
    from datetime import timedelta

    from sqlalchemy import text

    from webapp import fetches
    from webapp.models import utcnow
    from worker.fetch_tasks import run_sweep

    config = {**size.app.config, "TOOLCALL_SWEEP_BATCH": batch}
    period = config["TOOLCALL_SWEEP_SECS"]
    redis = size.instance.redis
    size.make_owed_again()
    with size.db.engine.connect() as c:
        backlog = list(c.scalars(text("SELECT id FROM toolcall_resultfetch WHERE state = 'owed'")))
    owed = set(backlog)
    queued: collections.Counter[int] = collections.Counter()
    runs: list[float] = []
    clock = [utcnow()]
    real_clock, fetches.utcnow = fetches.utcnow, lambda: clock[0]
    capacity = 0.0
    try:
        while owed or redis.llen(CALLBACKS_KEY):
            if len(runs) > 10 * len(backlog) / (rate * period) + 100:
                raise RuntimeError(f"the backlog does not drain: {len(owed):,} of {len(backlog):,} owed")
            runs.append(timed(lambda: run_sweep(size.celery, size.db, redis, config)))
            capacity += rate * period
            done: list[int] = []
            while capacity >= 1:
                message = redis.rpop(CALLBACKS_KEY)
                if message is None:
                    capacity = 0.0  # idle workers do not save up
                    break
                fetch = fetch_id(message)
                queued[fetch] += 1
                if fetch in owed:
                    owed.discard(fetch)
                    done.append(fetch)
                    capacity -= 1
            if done:
                with size.db.begin() as c:
                    c.execute(text("UPDATE toolcall_resultfetch SET state = 'done' WHERE id = ANY(:ids)"),
                              {"ids": done})  # fmt: skip
            clock[0] += timedelta(seconds=period)
    finally:
        fetches.utcnow = real_clock
        with size.db.begin() as c:  # owed again, for the next drain
            c.execute(text("UPDATE toolcall_resultfetch SET state = 'owed', queued_at = NULL WHERE id = ANY(:ids)"),
                      {"ids": backlog})  # fmt: skip
        redis.delete(CALLBACKS_KEY)
    times = collections.Counter(queued[f] for f in backlog)
    return {
        "backlog": len(backlog), "ticks": len(runs), "first": runs[0], "runs": runs,
        "messages": sum(queued.values()), "most": max(times), "times": times,
    }  # fmt: skip


def drains(large: Size) -> None:
    print(f"\nDraining the backlog of {large.owed:,} owed fetches at {large.label} (simulated clock, "
          f"a sweep every {large.app.config['TOOLCALL_SWEEP_SECS']:g} s, grace "
          f"{large.app.config['TOOLCALL_REQUEUE_GRACE_SECS']:g} s); target: a run < {SWEEP_TARGET_S:g} s, "
          f"each fetch queued at most {QUEUED_TARGET} times")  # fmt: skip
    header()
    for batch in DRAIN_BATCHES:
        for rate in DRAIN_RATES:
            d = drain(large, batch, rate)
            # The ratio of a run is its share of the target; of the times queued, the mean per fetch.
            name = f"drain {batch:,} at {rate:g}/s"
            target_ms = f"{SWEEP_TARGET_S * 1e3:,.0f} ms"
            row(f"{name}, first run", f"{d['first'] * 1e3:.0f} ms", target_ms, d["first"] / SWEEP_TARGET_S,
                f"< {SWEEP_TARGET_S:g} s", d["first"] < SWEEP_TARGET_S)  # fmt: skip
            runs = sorted(d["runs"])
            p90 = runs[int(0.9 * (len(runs) - 1))]
            row(f"{name}, 9 runs in 10", f"{p90 * 1e3:.0f} ms", target_ms, p90 / SWEEP_TARGET_S,
                f"< {SWEEP_TARGET_S:g} s", p90 < SWEEP_TARGET_S)  # fmt: skip
            row(f"{name}, times queued", f"at most {d['most']}", "mean", d["messages"] / d["backlog"],
                f"<= {QUEUED_TARGET}", d["most"] <= QUEUED_TARGET)  # fmt: skip
            spread_of = ", ".join(f"{n}×: {k / d['backlog']:.1%}" for n, k in sorted(d["times"].items()))
            over = sum(t >= SWEEP_TARGET_S for t in runs)
            print(f"  {name}: {d['ticks']} runs ({d['ticks'] * large.app.config['TOOLCALL_SWEEP_SECS'] / 60:.0f} "
                  f"min of beat), each {statistics.median(runs) * 1e3:.0f} ms (median), {runs[-1] * 1e3:.0f} ms "
                  f"the slowest, {over} of {len(runs)} over {SWEEP_TARGET_S:g} s; {d['messages']:,} messages for "
                  f"{d['backlog']:,} fetches, queued {spread_of}", flush=True)  # fmt: skip


def counts(size: Size) -> str:
    from sqlalchemy import text

    with size.db.engine.connect() as c:
        found = {t: c.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in sorted(GROWING)}
        owed = c.execute(text("SELECT count(*) FROM toolcall_resultfetch WHERE state = 'owed'")).scalar()
    return ", ".join(f"{t.removeprefix('toolcall_')} {n:,}" for t, n in found.items()) + f" (owed {owed:,})"


def main() -> int:
    from importlib.metadata import version

    print(
        f"python {platform.python_version()}, flask {version('flask')}, sqlalchemy {version('sqlalchemy')}, "
        f"psycopg {version('psycopg')}; {machine()}"
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    instances: list[Instance] = []
    sizes: list[Size] = []
    try:
        for n in (SMALL, LARGE):
            instance = Instance("postgresql", prefix="volume-")
            instances.append(instance)
            took = seed(instance, n)
            print(f"seeded {n:,} ToolCalls into {instance.describe()} in {took:.0f} s", flush=True)
        use_env(instances[0].env)
        for n, instance in zip((SMALL, LARGE), instances):
            sizes.append(Size(f"{n // 1000:,}k" if n < 1_000_000 else f"{n // 1_000_000}M", n, instance))
            print(f"  {sizes[-1].label}: {counts(sizes[-1])}", flush=True)
        print(f"rounds: {ROUNDS}, each path {REPEAT} times a size a round\n", flush=True)
        measure(*sizes)
        drains(sizes[-1])
    finally:
        for size in sizes:
            size.close()
        for instance in instances:
            instance.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
