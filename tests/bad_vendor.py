"""A misbehaving vendor for the fault matrix: ``VendorStub``'s scripted result URL, plus the faults
an HTTP status cannot express.

``BadVendor()`` is a ``VendorStub`` (same result URLs, ``script`` and ``requests``) whose scripts
may also hold ``Misbehaviour`` answers, which take the connection over instead of answering:

- ``silence()``: read the request, never answer (until the portal hangs up);
- ``drip_body()`` / ``drip_headers()``: a byte now and then, for ever -- never idle long enough
  for a per-read timeout, so only a budget for the whole response stops it;
- ``hang_up()``, ``reset()``, ``not_http()``: close at once, close with a TCP reset, or answer
  with something that is not HTTP;
- ``truncated()``: a body shorter than its ``Content-Length``;
- ``huge_body()``, ``gzip_bomb()``: 10 MB of body, plain (with or without a length) or as a small
  gzip that inflates to it;
- ``retry_after_date()``: a status whose ``Retry-After`` is an HTTP date computed when it is sent.

Every answer closes its connection (``Connection: close``): the portal keeps connections to a
vendor open between fetches and sends a request once more, at once, when a kept connection turns
out closed -- so on a kept connection one attempt can be two requests. Closing makes each attempt
one connection and one request, and the two can be counted one to one.

``observe(client, token)``, if given, is called when a request arrives, before it is answered; what
it returns is kept with the request (``visits``). The fault matrix reads the fetch record there: at
request n it shows what attempt n-1 recorded, so each retry's recorded reason can be checked even
when a later attempt succeeds and clears it.

Two more faults need no HTTP server at all: ``refusing_url()`` (nothing listens: connection
refused) and ``SilentListener`` (a listener whose accept queue is full, so the SYN goes unanswered
and the connect times out).
"""

from __future__ import annotations

import gzip
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from vendor_stub import HOLD_LIMIT, Answer, Request, VendorStub

#: How long a stalling misbehaviour lasts at most: longer than the portal's 15 s budget, bounded so
#: that a failing test cannot leave a thread behind for ever.
STALL_LIMIT = 40.0
TEN_MB = 10 * 1024 * 1024


@dataclass(frozen=True)
class Misbehaviour:
    """An answer that takes the connection over: ``act(handler, stop)``; ``stop`` is set at close."""

    name: str
    act: Callable[[BaseHTTPRequestHandler, threading.Event], None]


@dataclass(frozen=True)
class Visit:
    request: Request
    observed: object  # what ``observe`` returned on arrival


class BadVendor(VendorStub):
    def __init__(self, observe: Callable[[str, str | None], object] | None = None) -> None:
        self._observe = observe
        self._visits: list[Visit] = []
        self.stop = threading.Event()
        super().__init__()

    def visits(self, client: str, token: str | None = None) -> list[Visit]:
        with self._lock:
            return [
                v
                for v in self._visits
                if v.request.client == client and (token is None or v.request.token == token)
            ]

    def close(self) -> None:
        self.stop.set()  # ends every stall at once
        super().close()

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        client = parts.path.strip("/").split("/")[0]
        token = parse_qs(parts.query).get("access_token", [None])[0]
        request = Request(time.monotonic(), client, token, handler.path, dict(handler.headers))
        observed = self._observe(client, token) if self._observe is not None else None
        with self._lock:
            self._requests.append(request)
            self._visits.append(Visit(request, observed))
            answers = self._scripts.get((client, token or ""))
            if answers is None:
                answer: Answer | Misbehaviour = Answer(404, b'{"error": "no such result"}')
            else:
                answer = answers.pop(0) if len(answers) > 1 else answers[0]
        try:
            if isinstance(answer, Misbehaviour):
                handler.close_connection = True
                answer.act(handler, self.stop)
                return
            if answer.hold is not None:
                answer.hold.wait(HOLD_LIMIT)
            handler.send_response(answer.status)
            for name, value in answer.headers.items():
                handler.send_header(name, value)
            handler.send_header("Connection", "close")  # sets handler.close_connection too
            handler.send_header("Content-Length", str(len(answer.body)))
            handler.end_headers()
            handler.wfile.write(answer.body)
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True  # the portal hung up on purpose (too large, too slow)


# ---- misbehaviours ---------------------------------------------------------------------------------


def _until_hung_up(handler: BaseHTTPRequestHandler, stop: threading.Event, limit: float) -> None:
    """Wait until the portal closes the connection (its socket reads as at its end), ``stop`` is
    set, or ``limit`` seconds pass -- an event, not a sleep."""
    deadline = time.monotonic() + limit
    while not stop.is_set() and time.monotonic() < deadline:
        readable, _, _ = select.select([handler.connection], [], [], 0.1)
        if readable and not handler.connection.recv(1, socket.MSG_PEEK):
            return


def silence() -> Misbehaviour:
    return Misbehaviour("silence", lambda handler, stop: _until_hung_up(handler, stop, STALL_LIMIT))


def _drip(handler: BaseHTTPRequestHandler, stop: threading.Event, data: bytes, interval: float) -> None:
    for byte in data:
        if stop.wait(interval):
            return
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()


def drip_body(interval: float = 0.2) -> Misbehaviour:
    """Headers at once, then the body a byte every ``interval`` s: 200 bytes take 40 s."""

    def act(handler: BaseHTTPRequestHandler, stop: threading.Event) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Connection", "close")
        handler.send_header("Content-Length", "200")
        handler.end_headers()
        handler.wfile.flush()
        _drip(handler, stop, b" " * 200, interval)

    return Misbehaviour("drip-body", act)


def drip_headers(interval: float = 0.2) -> Misbehaviour:
    """The status line and headers a byte every ``interval`` s: 200 bytes take 40 s."""
    head = b"HTTP/1.1 200 OK\r\n" + b"X-Slow: y\r\n" * 16 + b"Connection: close\r\nContent-Length: 0\r\n\r\n"
    return Misbehaviour("drip-headers", lambda handler, stop: _drip(handler, stop, head, interval))


def hang_up() -> Misbehaviour:
    """Read the request and close the connection without a byte."""
    return Misbehaviour("hang-up", lambda handler, stop: None)


def reset() -> Misbehaviour:
    """Read the request and abort the connection: SO_LINGER 0 makes close send a TCP reset."""

    def act(handler: BaseHTTPRequestHandler, stop: threading.Event) -> None:
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    return Misbehaviour("reset", act)


def not_http() -> Misbehaviour:
    """Answer with another protocol's greeting."""

    def act(handler: BaseHTTPRequestHandler, stop: threading.Event) -> None:
        handler.wfile.write(b"SSH-2.0-OpenSSH_9.2\r\n")

    return Misbehaviour("not-http", act)


def truncated(body: bytes, declared: int) -> Misbehaviour:
    """A 200 declaring ``declared`` bytes of body, then only ``body`` and the end of the connection."""

    def act(handler: BaseHTTPRequestHandler, stop: threading.Event) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Connection", "close")
        handler.send_header("Content-Length", str(declared))
        handler.end_headers()
        handler.wfile.write(body)

    return Misbehaviour("truncated", act)


def huge_body(size: int = TEN_MB, declare_length: bool = True) -> Misbehaviour:
    """A 200 with ``size`` bytes of JSON-ish body, with a ``Content-Length`` or until the close."""

    def act(handler: BaseHTTPRequestHandler, stop: threading.Event) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Connection", "close")
        if declare_length:
            handler.send_header("Content-Length", str(size))
        handler.end_headers()
        chunk = b" " * 65536
        for _ in range(size // len(chunk)):
            if stop.is_set():
                return
            handler.wfile.write(chunk)

    return Misbehaviour("huge-body", act)


def gzip_bomb(size: int = TEN_MB) -> Misbehaviour:
    """A 200 whose gzip body is about 10 KB on the wire and ``size`` bytes once inflated."""
    compressed = gzip.compress(b" " * size, compresslevel=9)

    def act(handler: BaseHTTPRequestHandler, stop: threading.Event) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Encoding", "gzip")
        handler.send_header("Connection", "close")
        handler.send_header("Content-Length", str(len(compressed)))
        handler.end_headers()
        handler.wfile.write(compressed)

    return Misbehaviour("gzip-bomb", act)


def retry_after_date(status: int, seconds: float) -> Misbehaviour:
    """``status`` with ``Retry-After`` as the HTTP date ``seconds`` from the moment it is sent."""

    def act(handler: BaseHTTPRequestHandler, stop: threading.Event) -> None:
        handler.send_response(status)
        handler.send_header("Retry-After", formatdate(time.time() + seconds, usegmt=True))
        handler.send_header("Connection", "close")
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return Misbehaviour("retry-after-date", act)


# ---- faults below HTTP -----------------------------------------------------------------------------


def refusing_url() -> tuple[str, socket.socket]:
    """A result URL whose port refuses connections: bound (so nothing else takes it) but not
    listening. Close the socket when done."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return f"http://127.0.0.1:{sock.getsockname()[1]}/result/", sock


class SilentListener:
    """A port whose connects time out: it listens, never accepts, and its accept queue is full,
    so the kernel drops every further SYN (as a host that is down or filtered would)."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(0)
        self.port = self.server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/result/"
        self._fillers: list[socket.socket] = []
        # Connect until a connect times out: that timeout is the proof that the queue is full.
        for _ in range(8):
            filler = socket.socket()
            filler.settimeout(0.5)
            try:
                filler.connect(("127.0.0.1", self.port))
            except TimeoutError:
                filler.close()
                return
            self._fillers.append(filler)
        self.close()
        raise AssertionError(f"the accept queue of port {self.port} never filled up")

    def close(self) -> None:
        for filler in self._fillers:
            filler.close()
        self.server.close()
