"""``make run``'s start-up script (scripts/run.py): the whole system from nothing but defaults.

The main test runs every Procfile process on ports of its own, with nothing listening at its Redis
address, so the script must start a private Redis; then it stops the run the way Ctrl-C in a terminal
does (SIGINT to the whole foreground process group) and checks that no process it started is left.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import requests
from helpers import REPO, descendants, free_port, still_running, wait_until

SCRIPT = REPO / "scripts" / "run.py"
#: Starting six processes (two of them Celery workers with prefork children) on two busy cores.
STARTUP_TIMEOUT = 120
STOP_TIMEOUT = 60


def run_environment(tmp_path: Path, **settings: str) -> dict[str, str]:
    """This environment without the settings that would point the run at shared services."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "FLOWER_BASIC_AUTH")
    }
    env.update(TOOLCALL_INSTANCE=str(tmp_path / "instance"), **settings)
    return env


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def start(env: dict[str, str], output: Path) -> subprocess.Popen:
    # A session of its own: the test's SIGINT to that group stands in for Ctrl-C in a terminal.
    with output.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, str(SCRIPT)],
            env=env,
            cwd=REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def finish(process: subprocess.Popen, output: Path, timeout: float = 30) -> str:
    process.wait(timeout)
    return output.read_text(errors="replace")


def test_run_brings_up_a_private_redis_and_ctrl_c_leaves_no_process(tmp_path):
    redis_port, web, vendor, flower = (free_port() for _ in range(4))
    assert not listening(redis_port)
    env = run_environment(
        tmp_path,
        REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        PORT=str(web),
        VENDOR_PORT=str(vendor),
        FLOWER_PORT=str(flower),
    )
    output = tmp_path / "run.log"
    run = start(env, output)
    started: dict[int, str] = {}
    try:
        wait_until(
            lambda: run.poll() is not None or "Press Ctrl-C" in output.read_text(errors="replace"),
            timeout=STARTUP_TIMEOUT,
            what="the run's banner",
        )
        text = output.read_text(errors="replace")
        assert run.poll() is None, text
        assert f"started a private Redis on port {redis_port}" in text
        assert redis.Redis(port=redis_port).ping()
        assert f"portal       http://127.0.0.1:{web}/" in text
        assert "user/user" in text and "admin/admin" in text
        assert f"Flower       http://127.0.0.1:{flower}/" in text

        # Each process answers where the banner says: the portal with the demo tool, the vendor,
        # and Flower behind its login.
        session = requests.Session()
        login = session.get(f"http://127.0.0.1:{web}/accounts/login/", timeout=10)
        assert login.status_code == 200
        wait_until(lambda: listening(vendor), timeout=STARTUP_TIMEOUT, what="the demo vendor")
        wait_until(lambda: listening(flower), timeout=STARTUP_TIMEOUT, what="Flower")
        assert requests.get(f"http://127.0.0.1:{flower}/", timeout=10).status_code == 401
        assert (
            requests.get(f"http://127.0.0.1:{flower}/", auth=("admin", "admin"), timeout=10).status_code
            == 200
        )

        started = descendants(run.pid)
        assert len(started) >= 10, "expected honcho, six processes and their children"

        os.killpg(run.pid, signal.SIGINT)
        text = finish(run, output, STOP_TIMEOUT)
        assert "stopped the private Redis" in text
        assert run.returncode == 0, f"a normal Ctrl-C stop exited {run.returncode} (make would say Error)"
        # Killed orphans may take a moment to be reaped; a process still running after that is a leak.
        wait_until(lambda: not still_running(started), timeout=10, what="every started process to end")
        assert not listening(redis_port)
        assert not any(listening(port) for port in (web, vendor, flower))
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
        for pid in still_running(started):
            os.kill(pid, signal.SIGKILL)


def test_without_redis_and_without_redis_server_the_run_says_what_to_install(tmp_path):
    port = free_port()
    # Only the virtualenv on PATH: no redis-server to be found.
    env = run_environment(
        tmp_path, REDIS_URL=f"redis://127.0.0.1:{port}/0", PATH=str(Path(sys.executable).parent)
    )
    output = tmp_path / "run.log"
    text = finish(start(env, output), output)
    assert (
        f"nothing answers at REDIS_URL=redis://127.0.0.1:{port}/0 and redis-server is not installed" in text
    )
    assert "apt-get install redis-server" in text
    assert not listening(port)


def test_a_redis_elsewhere_that_does_not_answer_is_not_replaced(tmp_path):
    env = run_environment(tmp_path, REDIS_URL="redis://redis.invalid:6379/0")
    output = tmp_path / "run.log"
    run = start(env, output)
    text = finish(run, output)
    assert run.returncode == 1
    assert "nothing answers at REDIS_URL=redis://redis.invalid:6379/0: start that Redis" in text


@pytest.mark.parametrize("setting", ["PORT", "VENDOR_PORT", "FLOWER_PORT"])
def test_a_port_in_use_is_named_before_anything_starts(tmp_path, setting):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {name: str(free_port()) for name in ("PORT", "VENDOR_PORT", "FLOWER_PORT")}
        ports[setting] = str(port)
        env = run_environment(tmp_path, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", **ports)
        output = tmp_path / "run.log"
        run = start(env, output)
        text = finish(run, output)
    assert run.returncode == 1
    assert f"port {port} is in use" in text and f"set {setting} to a free port" in text
    assert "private Redis" not in text
