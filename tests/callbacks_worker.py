"""A real ``callbacks`` worker for tests: the Procfile's line, on a database and Redis db of the test's.

``CallbacksWorker(...).start()`` runs ``celery -A worker.app worker --queues callbacks --pool threads
...`` (as the Procfile does) with an environment of its own: ``DATABASE_URL``, ``REDIS_URL`` (broker,
result backend), ``SECRET_KEY`` and ``TOOLCALL_INSTANCE`` as given, plus the test's settings; nothing
else of the portal's settings comes from the shell running the tests. ``wait_ready`` waits (bounded)
until the worker answers a Celery ping; ``stop`` ends it with SIGTERM (a warm shutdown) and fails
unless it exits within ``STOP_TIMEOUT``, killing it then so that nothing is left running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from celery import Celery
from helpers import REPO

from worker.app import make_app

#: Seconds a starting worker gets to answer its first ping.
READY_TIMEOUT = 60.0
#: Seconds a stopping worker gets to finish (a warm shutdown waits for running tasks).
STOP_TIMEOUT = 30.0
#: Read by the portal or the worker; the test decides each of them.
CLEARED = ("SECRET_KEY", "SECRET_KEY_FALLBACKS", "DATABASE_URL", "REDIS_URL", "TOOLCALL_", "CELERY_")


class CallbacksWorker:
    def __init__(self, name: str, log_path: Path, env: dict[str, str], concurrency: int = 32) -> None:
        self.name = f"{name}-{os.getpid()}@{socket.gethostname()}"
        self.log_path = log_path
        self.concurrency = concurrency
        inherited = {key: value for key, value in os.environ.items() if not key.startswith(CLEARED)}
        self.env = {**inherited, **env}
        self.process: subprocess.Popen | None = None
        broker = self.env["REDIS_URL"]
        #: A client app on the worker's broker and result backend: sends tasks, controls the worker.
        self.celery: Celery = make_app("callbacks-test", broker_url=broker, result_backend=broker)

    def argv(self) -> list[str]:
        return [
            *(sys.executable, "-m", "celery", "-A", "worker.app", "worker"),
            *("--queues", "callbacks", "--pool", "threads", "--concurrency", str(self.concurrency)),
            *("--hostname", self.name, "--task-events", "--without-mingle", "--without-gossip"),
            *("--loglevel", "INFO"),
        ]

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv(), env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
            )

    def log(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise AssertionError(f"the callbacks worker exited with status {code}:\n{self.log()}")
            if self.celery.control.ping(destination=[self.name], timeout=0.5):
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the callbacks worker did not answer a ping within {timeout:g} s:\n{self.log()}"
                )

    def stop(self) -> None:
        self.celery.close()
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"the callbacks worker did not stop within {STOP_TIMEOUT:g} s:\n{self.log()}"
            ) from None
        assert code == 0, f"the callbacks worker exited with status {code}:\n{self.log()}"
