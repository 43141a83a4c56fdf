"""The whole portal system as real processes, and a real Chromium to drive it, for the browser test.

``running_system(directory)`` does what an operator does on one machine (README, "The portal"):
``init-db`` and ``load-demo`` through the Flask CLI, ``clients add testclient`` pointing at the demo
vendor's real port, then starts the Procfile's ``web`` (gunicorn), ``vendor`` and ``callbacks``
processes. Everything lives in ``directory`` (SQLite file, instance folders, one log per process)
and on Redis database 3, which the caller empties (``redis_db3``).

Each server gets a listening socket made here and handed over as ``fd://N``: its port is known
before the process starts (the portal and the vendor must know each other's URL up front) and no
other process can take it meanwhile. Connections made while a server boots wait in the socket's
backlog instead of being refused.

``chromium()`` is Playwright on Debian's Chromium; without either, the test is skipped on a
workstation and fails in CI.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests
from callbacks_worker import CLEARED, CallbacksWorker
from helpers import REPO, suite_redis_url, wait_until
from portal_support import unavailable

#: The Redis database of the browser test (portal tests use 4, result fetches 5-6, workers 8-15).
REDIS_URL = suite_redis_url(3)
#: Debian's Chromium: Playwright's own browser download is not used (see the Makefile's browser target).
CHROMIUM = "/usr/bin/chromium"
#: Seconds a server gets to answer its first request; a cold start on a busy machine is slow.
READY_TIMEOUT = 60.0
#: Seconds a server gets to stop after SIGTERM before it is killed.
STOP_TIMEOUT = 30.0
#: Read by the demo vendor; the test decides each of them.
VENDOR_SETTINGS = ("VENDOR_",)


def clean_environment(settings: dict[str, str]) -> dict[str, str]:
    """This process's environment without any portal or vendor setting of the shell, plus ``settings``."""
    cleared = CLEARED + VENDOR_SETTINGS
    inherited = {key: value for key, value in os.environ.items() if not key.startswith(cleared)}
    return {**inherited, **settings}


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---- servers ----------------------------------------------------------------------------------------


def listening(host: str = "127.0.0.1") -> socket.socket:
    """A listening socket on a free port of ``host``, for ``Served`` (its URL known before the
    server starts)."""
    return socket.create_server((host, 0))


def url_of(listener: socket.socket) -> str:
    host, port = listener.getsockname()[:2]
    return f"http://{host}:{port}"


class Served:
    """A WSGI app served by gunicorn on a free port of 127.0.0.1 (or on ``listener``), until ``stop``."""

    def __init__(self, name: str, app: str, env: dict[str, str], log_path: Path, workers: int = 2,
                 listener: socket.socket | None = None):  # fmt: skip
        self.name = name
        self.log_path = log_path
        listener = listener or listening()
        self.url = url_of(listener)
        argv = [
            *(sys.executable, "-m", "gunicorn", "--bind", f"fd://{listener.fileno()}"),
            *("--workers", str(workers), "--threads", "4", "--graceful-timeout", "10"),
            # gunicorn's control socket is one path per user ($HOME/.gunicorn): two servers, or a
            # developer's own, would take it from each other. The test does not use it.
            *("--no-control-socket", "--access-logfile", "-", app),
        ]
        with listener, open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                argv,
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(listener.fileno(),),
            )
        # Our copy of the socket is closed: should gunicorn die, connecting fails instead of hanging.

    def log(self) -> str:
        return log_tail(self.log_path)

    def answers(self, path: str) -> bool:
        """Whether the server answers ``path`` without a server error (fails if it has exited)."""
        code = self.process.poll()
        if code is not None:
            raise AssertionError(f"the {self.name} exited with status {code}:\n{self.log()}")
        try:
            return requests.get(self.url + path, timeout=5, allow_redirects=False).status_code < 500
        except requests.RequestException:
            return False

    def wait_ready(self, path: str) -> None:
        wait_until(lambda: self.answers(path), READY_TIMEOUT, f"the {self.name} to answer {path}")

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"the {self.name} did not stop within {STOP_TIMEOUT:g} s:\n{self.log()}"
            ) from None


@dataclass
class System:
    portal_url: str
    vendor_url: str
    logs: list[Path]
    portal_env: dict[str, str]

    def add_user(self, username: str, password: str, first_name: str, last_name: str = "Tester") -> None:
        """A candidate who can log in, added as an operator adds one (``users add``)."""
        flask_cli(self.portal_env, "users", "add", username, "--password", password,
                  "--first-name", first_name, "--last-name", last_name)  # fmt: skip

    @contextlib.contextmanager
    def logs_on_failure(self) -> Iterator[None]:
        """Adds the end of every process's log to an exception raised inside."""
        try:
            yield
        except BaseException as e:
            for path in self.logs:
                e.add_note(f"---- {path.name} (last lines)\n{log_tail(path)}")
            raise


def flask_cli(env: dict[str, str], *args: str) -> None:
    """One ``flask --app webapp`` command, as an operator runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "webapp", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, (
        f"flask {' '.join(args)}: status {done.returncode}\n{done.stdout}{done.stderr}"
    )


@contextlib.contextmanager
def running_system(directory: Path, settings: dict[str, str] | None = None) -> Iterator[System]:
    """The portal (gunicorn), the demo vendor (gunicorn) and a callbacks worker, on a fresh database;
    ``settings`` are more of the portal's and its worker's environment.

    Redis database 3 must be empty and stay the caller's for the duration."""
    portal_env = clean_environment(
        {
            "DATABASE_URL": f"sqlite:///{directory / 'portal.sqlite3'}",
            "REDIS_URL": REDIS_URL,
            "SECRET_KEY": "the browser test's portal key",
            "TOOLCALL_INSTANCE": str(directory / "portal"),
            **(settings or {}),
        }
    )
    flask_cli(portal_env, "init-db")
    flask_cli(portal_env, "load-demo")
    servers: list[Served] = []
    worker: CallbacksWorker | None = None
    try:
        portal = Served("portal", "webapp:create_app()", portal_env, directory / "portal.log")
        servers.append(portal)
        vendor_env = clean_environment(
            {
                "TOOLCALL_PORTAL_URL": portal.url,
                "VENDOR_CLIENT_NAME": "testclient",
                "VENDOR_SECRET_KEY": "the browser test's vendor key",
                "VENDOR_INSTANCE": str(directory / "vendor"),
            }
        )
        # One worker process: the vendor's attempts live in its SQLite file, its sessions in cookies,
        # so more would work too, but one is all a single candidate needs.
        vendor = Served("demo vendor", "examples.vendor.app:create_app()", vendor_env,
                        directory / "vendor.log", workers=1)  # fmt: skip
        servers.append(vendor)
        flask_cli(portal_env, "clients", "add", "testclient", "--start-url", f"{vendor.url}/start/",
                  "--result-url", f"{vendor.url}/result-data/")  # fmt: skip
        worker = CallbacksWorker("browser-callbacks", directory / "callbacks.log", portal_env, concurrency=4)
        worker.start()
        portal.wait_ready("/accounts/login/")
        vendor.wait_ready("/")
        worker.wait_ready()
        yield System(portal.url, vendor.url, [s.log_path for s in servers] + [worker.log_path], portal_env)
    finally:
        problems = []
        for stop in ([worker.stop] if worker else []) + [s.stop for s in reversed(servers)]:
            try:
                stop()
            except AssertionError as e:
                problems.append(str(e))
        assert not problems, "\n\n".join(problems)


# ---- the browser ------------------------------------------------------------------------------------


@contextlib.contextmanager
def chromium():
    """A headless Debian Chromium driven by Playwright (a ``playwright.sync_api.Browser``)."""
    if shutil.which(CHROMIUM) is None:
        unavailable(
            f"Chromium is not installed at {CHROMIUM}: 'sudo apt-get install chromium' (or make browser)"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        unavailable(f"Playwright is not installed ({e}): make test installs requirements.txt")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield browser
        finally:
            browser.close()
