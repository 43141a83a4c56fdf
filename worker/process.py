"""State that belongs to one worker process: made on first use, made anew in a forked child.

Celery's prefork pool forks its children from the worker's main process, so anything a process
made before the fork -- a database pool, a Redis connection, tool instances and their threads --
exists in the child too, where it must not be used: its sockets are shared with the parent and
its threads did not survive the fork. Every piece of per-process state in ``worker/`` is therefore
a ``ProcessLocal``: one pattern, checked by process id on every access.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


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
