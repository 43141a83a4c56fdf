"""Deadlines: the total time budget of one outbound request, kept by one thread per process.

A per-read timeout is not enough against a server that drips a byte a second, so every outbound
request (``webapp.outbound``) runs under a ``Deadline``: when its budget is spent, its sockets are
shut down, whatever phase the request is in. One ``Watchdog`` thread per process keeps the time of
every deadline.
"""

from __future__ import annotations

import heapq
import itertools
import os
import socket
import threading
import time

__all__ = ["Deadline", "shutdown"]


class Deadline:
    """The total time budget of one request, enforced by shutting its sockets down when spent.

    Shutting a socket down (rather than closing it) wakes a thread blocked reading it, whatever
    layer the read is in (http.client's status line, TLS, the body), and is safe from another
    thread. Each socket is tracked through a duplicate of its descriptor: the duplicate stays valid
    even after the TLS layer takes the original over, and cannot be reused for another connection
    before the ``with`` block ends and closes it. The clock is kept by the process's one
    ``Watchdog`` thread.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._started_at = self.ends_at = 0.0  # set when the clock starts, in __enter__
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._expired = False
        self.stopped = False

    def __enter__(self) -> Deadline:
        self._started_at = time.monotonic()
        self.ends_at = self._started_at + self.seconds
        _watchdog.watch(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self.stopped = True
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()

    @property
    def expired(self) -> bool:
        return self._expired

    def remaining(self) -> float:
        return max(0.0, self.ends_at - time.monotonic())

    def elapsed(self) -> float:
        return time.monotonic() - self._started_at

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            if self.stopped:
                return
            # fromfd duplicates the descriptor; unlike sock.dup() it also works on a TLS socket (a
            # kept connection is tracked again by each call that reuses it).
            duplicate = socket.fromfd(sock.fileno(), sock.family, sock.type, sock.proto)
            self._sockets.append(duplicate)
            if self._expired:
                shutdown(duplicate)

    def expire(self) -> None:
        with self._lock:
            if self.stopped:
                return
            self._expired = True
            for sock in self._sockets:
                shutdown(sock)


class Watchdog:
    """Expires the deadlines of every call of the process, from one thread.

    A ``threading.Timer`` per call cost a thread start, and a wake-up to cancel it, on every fetch:
    a measurable part of the callbacks worker's CPU (docs/portal-performance.md). This thread sleeps
    until the earliest deadline still running; a finished call only marks its deadline stopped,
    and the thread drops it when it comes to the top.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._due: list[tuple[float, int, Deadline]] = []  # a heap by end time
        self._order = itertools.count()  # ties: never compare two deadlines
        self._thread: threading.Thread | None = None

    def watch(self, deadline: Deadline) -> None:
        with self._condition:
            heapq.heappush(self._due, (deadline.ends_at, next(self._order), deadline))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="vendor-fetch-deadlines", daemon=True)
                self._thread.start()
            elif self._due[0][2] is deadline:
                self._condition.notify()  # it sleeps until a later end

    def _run(self) -> None:
        with self._condition:
            while True:
                while self._due and self._due[0][2].stopped:
                    heapq.heappop(self._due)
                if not self._due:
                    self._condition.wait()
                    continue
                wait = self._due[0][0] - time.monotonic()
                if wait > 0:
                    self._condition.wait(wait)
                    continue
                heapq.heappop(self._due)[2].expire()


_watchdog = Watchdog()


_watchdog = Watchdog()


def _after_fork_in_child() -> None:
    # The watchdog thread does not belong to a forked child.
    global _watchdog
    _watchdog = Watchdog()


os.register_at_fork(after_in_child=_after_fork_in_child)


def shutdown(sock: socket.socket) -> None:
    """Shut ``sock`` down both ways, waking any thread blocked on it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already disconnected: nothing left to interrupt
