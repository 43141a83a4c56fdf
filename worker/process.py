"""State that belongs to one worker process: made on first use, made anew in a forked child.

Celery's prefork pool forks its children from the worker's main process, so anything a process
made before the fork -- a database pool, a Redis connection, tool instances and their threads --
exists in the child too, where it must not be used: its sockets are shared with the parent and
its threads did not survive the fork. Every piece of per-process state in ``worker/`` is therefore
a ``ProcessLocal``: one pattern, checked by process id on every access.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger("worker.process")


class ProcessLocal(Generic[T]):
    """A value made by ``factory`` once per process, on first use."""

    def __init__(self, factory: Callable[[], T]):
        self._factory = factory
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._value: T | None = None

    def get(self) -> T:
        """This process's value, made now if it has none (a forked child's inherited one is not its own)."""
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._value = self._factory()
                    self._pid = os.getpid()
        return self._value  # type: ignore[return-value]

    def peek(self) -> T | None:
        """This process's value if it has made one, else None (nothing is made)."""
        return self._value if self._pid == os.getpid() else None

    def forget(self) -> T | None:
        """Drop this process's value (returned, for cleaning up), so that the next ``get`` makes a new one."""
        with self._lock:
            value = self.peek()
            self._pid, self._value = None, None
        return value


class Heartbeat:
    """Calls ``beat`` now, then every ``every`` seconds on a thread of its own, until ``stop()``.

    The first beat happens before the constructor returns, so what it writes exists before the
    process does anything else. A thread, not a Celery timer: a Redis that does not answer must not
    hold the worker's event loop. A beat that raises is logged once (``what`` says what failed) and
    tried again at the next; the key it keeps outlives a few missed beats.
    """

    def __init__(self, name: str, every: float, beat: Callable[[], object], what: str):
        self.pid = os.getpid()
        self._every = every
        self._beat = beat
        self._what = what
        self._stop = threading.Event()
        self._failing = False
        self._once()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _once(self) -> None:
        try:
            self._beat()
        except Exception as e:
            if not self._failing:
                log.warning("%s: %s", self._what, e)
            self._failing = True
        else:
            self._failing = False

    def _loop(self) -> None:
        while not self._stop.wait(self._every):
            self._once()

    def stop(self, wait: float | None = None) -> None:
        """No more beats; waits up to ``wait`` seconds for one under way (None: does not wait)."""
        self._stop.set()
        if wait is not None:
            self._thread.join(wait)
