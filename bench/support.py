"""Infrastructure shared by the benchmarks that start processes (bench/eval_vs_celery.py,
bench/start_storm.py, bench/result_storm.py).

Everything here is made for one run and removed again, also on error:

- ``Instance``: a temporary instance folder with a random SECRET_KEY and a fresh database -- a SQLite
  file in that folder (the default deployment), or a PostgreSQL database ``bench_<random>`` made on
  the server of BENCH_POSTGRES_URL (default ``postgresql+psycopg://postgres@127.0.0.1/postgres``) and
  dropped at the end -- migrated with ``flask --app webapp init-db``. ``instance.env`` is the
  environment of every process of the run: the shell's, less every portal and Celery setting, plus
  DATABASE_URL, REDIS_URL (BENCH_REDIS_URL, default Redis db 2, flushed before and after),
  SECRET_KEY, TOOLCALL_INSTANCE and TOOLCALL_RATELIMIT=off.
- ``start``/``stop``: processes in sessions of their own (SIGTERM, then SIGKILL to what is left of
  each process group), their output in a log file of the instance.
- ``gunicorn``: ``python -m gunicorn --workers W --threads T APP`` on an ephemeral port: the bench
  binds the socket and hands it over as ``--bind fd://N``, so no port is guessed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis
import requests
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/2")
POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1/postgres")
#: Settings the shell might hold that would make the run depend on it.
CLEARED = ("SECRET_KEY", "DATABASE_URL", "REDIS_URL", "TOOLCALL_", "CELERY_")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 40.0


def clean_env(**settings: str) -> dict[str, str]:
    """The shell's environment less every portal and Celery setting, with REDIS_URL and ``settings``."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(CLEARED)}
    return {
        **inherited,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "REDIS_URL": REDIS_URL,
        **settings,
    }


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far (Linux /proc), threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Instance:
    """A throw-away portal instance: folder, secret key, database, Redis db; see the module."""

    def __init__(self, database: str = "sqlite", prefix: str = "portal-bench-") -> None:
        if database not in ("sqlite", "postgresql"):
            raise SystemExit(f"database must be sqlite or postgresql, not {database!r}")
        self.kind = database
        self.path = Path(tempfile.mkdtemp(prefix=prefix))
        self.pg_name: str | None = None
        if database == "sqlite":
            self.database_url = f"sqlite:///{self.path / 'toolcall.sqlite3'}"
        else:
            self.pg_name = f"bench_{secrets.token_hex(6)}"
            with self._pg_admin() as connection:
                connection.exec_driver_sql(f'CREATE DATABASE "{self.pg_name}"')
            self.database_url = make_url(POSTGRES_URL).set(database=self.pg_name).render_as_string(False)
        self.redis = redis.Redis.from_url(REDIS_URL)
        self.redis.flushdb()
        self.env = clean_env(
            DATABASE_URL=self.database_url,
            SECRET_KEY=secrets.token_hex(32),
            TOOLCALL_INSTANCE=str(self.path),
            TOOLCALL_RATELIMIT="off",
        )
        self.flask("init-db")

    @staticmethod
    @contextlib.contextmanager
    def _pg_admin() -> Iterator:
        engine = create_engine(
            POSTGRES_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5}
        )
        try:
            with engine.connect() as connection:
                yield connection
        finally:
            engine.dispose()

    def use_here(self) -> None:
        """Make this process's environment the instance's (for an in-process ``create_app``)."""
        use_env(self.env)

    def flask(self, *args: str) -> str:
        """``flask --app webapp ARGS`` in a process of its own; its output, or an error saying why."""
        done = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "webapp", *args],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"flask {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return done.stdout

    def describe(self) -> str:
        if self.kind == "sqlite":
            return f"SQLite file in {self.path}"
        return f"PostgreSQL database {self.pg_name} ({make_url(POSTGRES_URL).render_as_string(True)})"

    def close(self) -> None:
        try:
            self.redis.flushdb()
            self.redis.close()
        finally:
            if self.pg_name:
                with self._pg_admin() as connection:
                    connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')
            shutil.rmtree(self.path, ignore_errors=True)


def use_env(env: dict[str, str]) -> None:
    """Make this process's portal and Celery settings those of ``env``."""
    for key in [k for k in os.environ if k.startswith(CLEARED)]:
        del os.environ[key]
    os.environ.update(env)


# ---- processes -----------------------------------------------------------------------------------


def start(
    argv: list[str], env: dict[str, str], log: Path, pass_fds: tuple[int, ...] = ()
) -> subprocess.Popen:
    with open(log, "ab") as out:
        # Its own session: a Ctrl-C in the terminal reaches only the bench, which stops it in order.
        return subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            pass_fds=pass_fds,
        )  # fmt: skip


def stop(procs: list[subprocess.Popen], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM to all (warm shutdown), then SIGKILL to what is left of each process group after
    ``timeout`` (gunicorn workers, Celery pool children)."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"pid {proc.pid} did not stop within {timeout:.0f} s; killing it", file=sys.stderr)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of its group
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()


def tail(log: Path, chars: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def gunicorn(
    app: str, env: dict[str, str], log: Path, workers: int, threads: int
) -> tuple[subprocess.Popen, str]:
    """``gunicorn --workers W --threads T APP`` on a fresh loopback port; the process and its base URL."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=2048)
    port = listener.getsockname()[1]
    try:
        proc = start(
            [sys.executable, "-m", "gunicorn", "--bind", f"fd://{listener.fileno()}",
             "--workers", str(workers), "--threads", str(threads), "--log-level", "warning", app],
            env, log, pass_fds=(listener.fileno(),),
        )  # fmt: skip
    finally:
        listener.close()  # gunicorn holds its own copy
    return proc, f"http://127.0.0.1:{port}"


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = START_TIMEOUT) -> None:
    """Until ``url`` answers (any status below 500), bounded; fails with the server's log."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited ({proc.returncode}):\n{tail(log)}")
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout:.0f} s:\n{tail(log)}")
        time.sleep(0.1)


# ---- reporting -----------------------------------------------------------------------------------


#: Where ``row`` also appends each measure as one JSON line, for bench/run_all.py's summary table.
SUMMARY_ENV = "BENCH_SUMMARY"


def row(name: str, ours: str, baseline: str, ratio: float, target: str, ok: bool | None) -> None:
    verdict = "" if ok is None else ("ok" if ok else "MISSED")
    print(f"{name:<36} {ours:>16} {baseline:>16} {ratio:>8.2f}x  {target:<12} {verdict}", flush=True)
    summary = os.environ.get(SUMMARY_ENV)
    if summary and ok is not None:  # diagnostics (no target) stay in the benchmark's own output
        record = {"bench": Path(sys.argv[0]).stem, "measure": name.strip(), "ours": ours, "baseline": baseline,
                  "ratio": ratio, "target": target, "ok": ok}  # fmt: skip
        with open(summary, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def header() -> None:
    print(f"{'measure':<36} {'ours':>16} {'baseline':>16} {'ratio':>9}  {'target':<12}")


def spread(unit: str, ratios: list[float]) -> None:
    """How much the ratio moved from one round to the next (the machine's drift)."""
    if len(ratios) >= 2:
        q1, _, q3 = statistics.quantiles(ratios, n=4)
        print(
            f"  per-{unit} ratios: middle half {q1:.2f}x .. {q3:.2f}x, all {min(ratios):.2f}x .. "
            f"{max(ratios):.2f}x ({len(ratios)} {unit}s)"
        )


def machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs, load average before the run {load}, {socket.gethostname()}"
