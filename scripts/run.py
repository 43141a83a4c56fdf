"""Start the whole system on one machine (``make run``), with no configuration needed.

1. Redis: the one at ``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``). When nothing answers there,
   the address is on this machine and ``redis-server`` is installed, a private Redis is started for
   this run (keeping nothing on disk) and stopped with it; otherwise the run stops, saying what to
   install or set.
2. The database: migrations applied and the demo data loaded (both safe to repeat).
3. Every Procfile process (or the ones named on the command line) under honcho, each told where the
   others listen.
4. Once the portal answers, the URLs and demo logins are printed.

Ctrl-C (or SIGTERM to this script) stops honcho, which stops every process group it started, and
then the private Redis: nothing is left running.

    python scripts/run.py [PROCESS ...]

Ports: ``PORT`` (portal, 5000), ``VENDOR_PORT`` (demo vendor, 5001), ``FLOWER_PORT`` (Flower, 5555).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import redis

from celeryconfig import DEFAULT_REDIS_URL

ROOT = Path(__file__).resolve().parent.parent
#: The virtualenv's bin: the Procfile's commands (gunicorn, celery, flask, python) come from there.
BIN = Path(sys.executable).parent
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
#: How long the portal may take to answer before the run gives up waiting to print its banner.
STARTUP_SECS = 120


class RunError(Exception):
    """The system cannot start; the message says what to do."""


def say(message: str) -> None:
    print(f"[run] {message}", flush=True)


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.exceptions.AuthenticationError:
        return True  # a Redis is there; the processes will report the credentials problem themselves
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
        return False


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if this script is killed outright (SIGKILL), the
    # kernel stops the private Redis too, so no run leaves one behind.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def private_redis(url: str, instance: Path) -> subprocess.Popen:
    """Start a Redis for this run at ``url``'s port, and wait until it answers."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    server = shutil.which("redis-server")
    if host not in LOCAL_HOSTS:
        raise RunError(
            f"nothing answers at REDIS_URL={url}: start that Redis, or unset REDIS_URL to use a local one"
        )
    if server is None:
        raise RunError(
            f"nothing answers at REDIS_URL={url} and redis-server is not installed: install it "
            "(Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis) "
            "or set REDIS_URL to a running Redis"
        )
    log = (instance / "redis.log").open("ab")
    # Its own session: Ctrl-C in the terminal must not stop Redis before the workers have stopped
    # (they would log reconnection errors); this script stops it after honcho has finished.
    process = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(instance),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    log.close()
    deadline = time.monotonic() + 10
    while not redis_answers(url):
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise RunError(f"the private Redis did not start on port {port}: see {instance / 'redis.log'}")
        time.sleep(0.05)
    say(f"nothing answered at {url}: started a private Redis on port {port} for this run (pid {process.pid})")
    return process


def stop(process: subprocess.Popen, grace: float = 10) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def environment() -> dict[str, str]:
    """The processes' environment: this one's, with the defaults filled in explicitly, so each
    process finds the others whatever ports were chosen."""
    env = dict(os.environ)
    env.setdefault("PORT", "5000")
    env.setdefault("VENDOR_PORT", "5001")
    env.setdefault("FLOWER_PORT", "5555")
    env.setdefault("REDIS_URL", DEFAULT_REDIS_URL)
    env["TOOLCALL_INSTANCE"] = str(Path(env.get("TOOLCALL_INSTANCE") or ROOT / "instance").resolve())
    env.setdefault("VENDOR_INSTANCE", str(Path(env["TOOLCALL_INSTANCE"]) / "vendor"))
    env.setdefault("TOOLCALL_PORTAL_URL", f"http://127.0.0.1:{env['PORT']}")
    env.setdefault("TOOLCALL_DEMO_VENDOR_URL", f"http://127.0.0.1:{env['VENDOR_PORT']}")
    env.setdefault("FLOWER_URL", f"http://127.0.0.1:{env['FLOWER_PORT']}/")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    # Output straight through honcho, line by line, not in 4 KB blocks.
    env["PYTHONUNBUFFERED"] = "1"
    return env


def prepare_database(env: dict[str, str]) -> None:
    for command in ("init-db", "load-demo"):
        done = subprocess.run([str(BIN / "flask"), "--app", "webapp", command], env=env, cwd=ROOT)
        if done.returncode:
            raise RunError(f"flask --app webapp {command} failed (exit {done.returncode}): see above")


def banner(env: dict[str, str], private: bool) -> str:
    flower_login = env.get("FLOWER_BASIC_AUTH") or "admin:admin"
    redis_note = " (private, stops with this run)" if private else ""
    return "\n".join(
        [
            "",
            "toolcall is running:",
            f"  portal       {env['TOOLCALL_PORTAL_URL']}/   log in as user/user; operators admin/admin "
            f"(ops pages at /ops/)",
            f"  demo vendor  {env['TOOLCALL_DEMO_VENDOR_URL']}/",
            f"  Flower       {env['FLOWER_URL']}   login {flower_login}",
            f"  Redis        {env['REDIS_URL']}{redis_note}",
            f"  database     {env.get('DATABASE_URL') or Path(env['TOOLCALL_INSTANCE']) / 'toolcall.sqlite3'}",
            "Press Ctrl-C to stop everything.",
            "",
        ]
    )


def announce_when_up(env: dict[str, str], private: bool, honcho: subprocess.Popen) -> None:
    """Print the banner once the portal answers (honcho's output would bury one printed earlier)."""
    url = f"{env['TOOLCALL_PORTAL_URL']}/accounts/login/"
    deadline = time.monotonic() + STARTUP_SECS
    while honcho.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    print(banner(env, private), flush=True)
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    if honcho.poll() is None:
        say(f"the portal has not answered at {url} after {STARTUP_SECS} s: see the web process's output")


def run(processes: list[str]) -> int:
    env = environment()
    instance = Path(env["TOOLCALL_INSTANCE"])
    instance.mkdir(parents=True, exist_ok=True)
    for name in ("PORT", "VENDOR_PORT", "FLOWER_PORT"):
        if port_taken(int(env[name])):
            raise RunError(
                f"port {env[name]} is in use (another run?): stop that, or set {name} to a free port"
            )
    redis_server = None if redis_answers(env["REDIS_URL"]) else private_redis(env["REDIS_URL"], instance)
    try:
        prepare_database(env)
        honcho = subprocess.Popen(
            [str(BIN / "honcho"), "start", "-f", str(ROOT / "Procfile"), *processes], env=env, cwd=ROOT
        )

        # Ctrl-C reaches honcho directly (same process group); a signal sent to this script alone
        # is passed on. Either way this script waits for honcho to stop its processes.
        stopped = []

        def pass_on(signum, frame):
            stopped.append(signum)
            if honcho.poll() is None:
                honcho.send_signal(signum)

        signal.signal(signal.SIGINT, pass_on)
        signal.signal(signal.SIGTERM, pass_on)
        threading.Thread(
            target=announce_when_up, args=(env, redis_server is not None, honcho), daemon=True
        ).start()
        code = honcho.wait()
        # A stop asked for (Ctrl-C, SIGTERM) is a normal end: exit 0, so that make does not report
        # "Error 130". A process that failed on its own still ends the run with honcho's code.
        return 0 if stopped else code
    finally:
        if redis_server is not None:
            stop(redis_server)
            say("stopped the private Redis")


def main(argv: list[str]) -> int:
    try:
        return run(argv)
    except RunError as error:
        say(f"cannot start: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
