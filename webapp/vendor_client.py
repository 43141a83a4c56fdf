"""The portal's HTTP client for calls to vendors (server to server), spec §3–§5.

The result fetch is the one place where the portal requests a URL that somebody else registered, so
this module is where the portal defends itself against that URL:

- **Time.** A vendor gets 5 s to accept the connection and 15 s for the *whole* response: connect,
  headers and body together. A per-read timeout is not enough (a server that drips a byte a second
  never trips it), so every request runs under a deadline: when the budget is spent, the socket is
  shut down, whatever phase the request is in. One thread per process keeps the time of every
  fetch's deadline.
- **Size.** At most ``max_bytes`` (1 MiB) of body is read; a larger body is refused without reading
  the rest.
- **Redirects** are never followed: a 3xx is reported as a failure naming the ``Location``, so a
  vendor cannot bounce the portal to another host (or a private one) and the operator sees why.
- **Addresses** (production only). The URL must be https and its host must resolve to public
  addresses only. The check runs *at connect time*, inside the connection: the host is resolved once,
  every resolved address is checked, the socket connects to one of exactly those addresses, and the
  peer of the connected socket is checked again. A DNS answer that changes between a check and the
  connect (DNS rebinding) therefore cannot slip a private address past it. TLS still uses the URL's
  host name for SNI and certificate checks. Proxy settings from the environment are ignored, since a
  proxy would make the connect-time check meaningless.
- **Kept connections.** Each thread keeps its connections to vendors open for its next fetch (one
  per vendor host; in production and outside it apart), as HTTP/1.1 allows: a new TCP connection,
  and in production a TLS handshake, per fetch was a large part of the worker's CPU. A kept
  connection was checked when it was made, and comes under the new fetch's deadline before
  anything is sent on it. No cookies or other state pass from one fetch to the next. A connection
  the vendor closed while it was kept fails the request before any answer: that request is tried
  once more, on a new connection, within the same deadline (a GET is idempotent).
- **Signing.** When the client has a secret, the request carries Standard Webhooks headers
  (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``) so the vendor can tell the portal
  from anyone else knowing its URL. ``verify_webhook`` is the vendor's side of it.

Key derivation for the signature: a secret of the form ``whsec_<base64>`` (how Standard Webhooks
libraries issue them) means the key is the base64-decoded rest; any other secret is used as its UTF-8
bytes, so the plain secrets set with ``flask clients add --secret S`` work unchanged. A vendor using a
Standard Webhooks library should therefore be given a ``whsec_`` secret.

The life of one fetch attempt:

1. Build the URL (``access_token`` added to the query) and refuse a non-https URL in production.
2. Take the thread's kept connection to the host, or resolve, check and connect (production:
   public addresses only), under the connect timeout.
3. Send the GET with ``Accept: application/json`` and, if the client has a secret, the signature.
4. Read the status and headers, then at most ``max_bytes`` of body, all within the total budget.
5. Classify (§5): ``ok``, ``retry`` (with ``Retry-After`` where honoured) or ``fail``, with a short
   error text for the fetch record. Validating the body (§4) is the caller's job.

This is domain code: no Flask, no database; the Celery task owns the fetch record and the schedule.
"""

from __future__ import annotations

import base64
import binascii
import errno
import functools
import hashlib
import heapq
import hmac
import ipaddress
import itertools
import math
import os
import random
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal, Protocol, TypeVar
from urllib.parse import quote, urlencode, urljoin, urlsplit, urlunsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

__all__ = [
    "CONNECT_TIMEOUT",
    "MAX_BODY_BYTES",
    "RETRY_AFTER_CAP",
    "TOTAL_TIMEOUT",
    "FetchOutcome",
    "ForbiddenAddress",
    "add_query",
    "backoff_delay",
    "check_address",
    "classify_status",
    "fetch_result",
    "parse_retry_after",
    "sign_webhook",
    "verify_webhook",
    "webhook_key",
]

MAX_BODY_BYTES = 1 << 20  # §4: a result body is at most 1 MiB
CONNECT_TIMEOUT = 5.0  # §5
TOTAL_TIMEOUT = 15.0  # §5: the whole response, not each read
RETRY_AFTER_CAP = 3600.0  # §5: a vendor cannot park a fetch for longer than an hour
BACKOFF_BASE = 5.0
BACKOFF_CAP = 3600.0
WEBHOOK_TOLERANCE = 300  # seconds either side of the receiver's clock

#: Statuses meaning "not there yet": retried only while the vendor may still be storing the result.
GRACE_STATUSES = frozenset({404, 409, 425})
#: The only statuses whose Retry-After is honoured (§5).
RETRY_AFTER_STATUSES = frozenset({429, 503})

_ERROR_BODY_BYTES = 4096  # kept from a non-2xx answer, for the operator
_CHUNK_BYTES = 64 * 1024
_WHSEC_PREFIX = "whsec_"

Kind = Literal["ok", "retry", "fail"]
_E = TypeVar("_E", bound=BaseException)


@dataclass(frozen=True)
class FetchOutcome:
    """What one attempt to fetch a result came to.

    ``kind`` is ``"ok"`` (a 2xx whose body was read; it still has to pass §4), ``"retry"`` (try again
    later; ``retry_after`` is the vendor's wish in seconds, if it gave one we honour) or ``"fail"``
    (will never succeed as things stand). ``error`` is a short text for the fetch record's
    ``last_error``; ``None`` when ``kind`` is ``"ok"``. ``body`` is at most ``max_bytes`` long.
    """

    kind: Kind
    status: int | None = None
    body: bytes = b""
    error: str | None = None
    retry_after: float | None = None


# --- URLs -------------------------------------------------------------------------------------------


def add_query(url: str, **params: str) -> str:
    """``url`` with ``params`` appended to its query string (``?`` or ``&`` as needed).

    The existing query and the fragment are kept as they are; the new values are percent-encoded.
    Used for the start-token redirect and for the result fetch (``access_token=...``).
    """
    parts = urlsplit(url)
    added = urlencode(params, quote_via=quote, safe="")
    query = f"{parts.query}&{added}" if parts.query else added
    return urlunsplit(parts._replace(query=query))


# --- Addresses --------------------------------------------------------------------------------------


class ForbiddenAddress(ValueError):
    """A vendor host resolved to an address the portal must not call in production."""


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def check_address(ip: str | IPAddress) -> None:
    """Raise ``ForbiddenAddress`` unless ``ip`` is a public unicast address.

    Refused: unspecified, loopback, link-local, multicast, private, reserved and any other
    non-global range (e.g. 100.64.0.0/10), for IPv4 and IPv6. IPv6 addresses that carry an IPv4
    address (IPv4-mapped, 6to4, Teredo, NAT64) are judged by the IPv4 address they lead to.
    """
    address = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    reason = _forbidden_reason(address)
    if reason is not None:
        raise ForbiddenAddress(
            f"vendor address {ip} is {reason}; in production vendor URLs must resolve to public "
            "addresses only (fix the client's URL or its DNS)"
        )


def _forbidden_reason(address: IPAddress) -> str | None:
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            reason = _forbidden_reason(embedded)
            return None if reason is None else f"{reason} (as {embedded})"
    for reason, flag in (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("not a public address", not address.is_global),
    ):
        if flag:
            return reason
    return None


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    # These IPv6 forms deliver to the IPv4 address inside them, so that address is what counts.
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


# --- Deadline and guarded connections ---------------------------------------------------------------


class _Deadline:
    """The total time budget of one request, enforced by shutting its sockets down when spent.

    Shutting a socket down (rather than closing it) wakes a thread blocked reading it, whatever
    layer the read is in (http.client's status line, TLS, the body), and is safe from another
    thread. Each socket is tracked through a duplicate of its descriptor: the duplicate stays valid
    even after the TLS layer takes the original over, and cannot be reused for another connection
    before the ``with`` block ends and closes it. The clock is kept by the process's one
    ``_Watchdog`` thread.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._started_at = self.ends_at = 0.0  # set when the clock starts, in __enter__
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._expired = False
        self.stopped = False

    def __enter__(self) -> _Deadline:
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
            # kept connection is tracked again by each fetch that reuses it).
            duplicate = socket.fromfd(sock.fileno(), sock.family, sock.type, sock.proto)
            self._sockets.append(duplicate)
            if self._expired:
                _shutdown(duplicate)

    def expire(self) -> None:
        with self._lock:
            if self.stopped:
                return
            self._expired = True
            for sock in self._sockets:
                _shutdown(sock)


class _Watchdog:
    """Expires the deadlines of every fetch of the process, from one thread.

    A ``threading.Timer`` per fetch cost a thread start, and a wake-up to cancel it, on every fetch:
    a measurable part of the callbacks worker's CPU (docs/portal-performance.md). This thread sleeps
    until the earliest deadline still running; a finished fetch only marks its deadline stopped,
    and the thread drops it when it comes to the top.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._due: list[tuple[float, int, _Deadline]] = []  # a heap by end time
        self._order = itertools.count()  # ties: never compare two deadlines
        self._thread: threading.Thread | None = None

    def watch(self, deadline: _Deadline) -> None:
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


_watchdog = _Watchdog()


class _Fetching(threading.local):
    """The fetch under way in this thread, and the adapters (with their kept connections) of the
    thread: a thread serves one fetch at a time, so its connections are only ever used by it."""

    deadline: _Deadline | None = None
    reused = False  # whether the request went out on a connection kept from an earlier fetch

    def __init__(self) -> None:
        self.adapters: dict[bool, _GuardedAdapter] = {}


_fetching = _Fetching()


def _after_fork_in_child() -> None:
    # The watchdog thread and the parent's connections do not belong to a forked child.
    global _watchdog, _fetching
    _watchdog = _Watchdog()
    _fetching = _Fetching()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _current_deadline() -> _Deadline:
    deadline = _fetching.deadline
    if deadline is None:
        raise RuntimeError("a guarded connection is only used inside fetch_result")
    return deadline


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already disconnected: nothing left to interrupt


class _GuardedConnectionMixin:
    """Connects like urllib3, but checks addresses (production) and reports to the deadline of the
    fetch under way in the thread.

    ``production`` is set on a subclass by ``_bind``. A connection made without the address checks
    is never used with them: each thread has one adapter (and pool) per value of ``production``.
    """

    production: bool
    #: The deadline this connection's socket is tracked by (it is tracked again when kept and reused).
    _tracked_by: _Deadline | None = None

    # Attributes provided by urllib3's HTTPConnection.
    _dns_host: str
    host: str
    port: int
    timeout: float | None
    socket_options: list[tuple[int, int, int | bytes]] | None
    sock: socket.socket | None

    def _new_conn(self) -> socket.socket:
        deadline = _current_deadline()
        host = self._dns_host.strip("[]")  # an IPv6 literal comes with its brackets
        try:
            candidates = socket.getaddrinfo(host, self.port, 0, socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]
        if self.production:
            # Every answer is checked, not only the one used: a mixed answer is a misconfiguration
            # or an attack, and refusing it outright is easier to explain than picking around it.
            for *_, sockaddr in candidates:
                check_address(str(sockaddr[0]))
        last_error: OSError | None = None
        for family, sock_type, proto, _, sockaddr in candidates:
            remaining = deadline.remaining()
            if remaining <= 0:
                break
            timeout = self.timeout if isinstance(self.timeout, int | float) else remaining
            sock = socket.socket(family, sock_type, proto)
            try:
                for option in self.socket_options or ():
                    sock.setsockopt(*option)
                sock.settimeout(min(timeout, remaining))
                # Connect to the address that was checked, never to the name again.
                sock.connect(sockaddr)
                if self.production:
                    check_address(str(sock.getpeername()[0]))
            except ForbiddenAddress:
                sock.close()
                raise
            except OSError as exc:
                sock.close()
                last_error = exc
                continue
            deadline.track(sock)
            self._tracked_by = deadline
            return sock
        if last_error is None or isinstance(last_error, TimeoutError):
            raise ConnectTimeoutError(
                self, f"connection to {self.host} timed out (connect timeout={self.timeout})"
            ) from last_error
        raise NewConnectionError(self, f"failed to connect: {last_error}") from last_error  # type: ignore[arg-type]

    def request(self, *args: object, **kwargs: object) -> None:
        # A connection kept from an earlier fetch (checked when it was made, in production): its
        # socket comes under this fetch's deadline before anything is sent on it.
        deadline = _current_deadline()
        if self.sock is not None and self._tracked_by is not deadline:
            deadline.track(self.sock)
            self._tracked_by = deadline
            _fetching.reused = True
        super().request(*args, **kwargs)  # type: ignore[misc]


class _GuardedAdapter(HTTPAdapter):
    """A requests adapter whose pools build guarded connections; one per thread (and value of
    ``production``), kept, so that connections to a vendor are reused from one fetch to the next."""

    def __init__(self, production: bool) -> None:
        self._production = production
        # One connection per vendor host: the thread makes one request at a time.
        super().__init__(pool_connections=_KEPT_HOSTS, pool_maxsize=1, max_retries=0)

    def init_poolmanager(self, *args: object, **kwargs: object) -> None:
        super().init_poolmanager(*args, **kwargs)  # type: ignore[arg-type]
        self.poolmanager.pool_classes_by_scheme = {
            "http": _bind(HTTPConnectionPool, HTTPConnection, self._production),
            "https": _bind(HTTPSConnectionPool, HTTPSConnection, self._production),
        }


#: Vendor hosts whose connections a thread keeps (the least recently used beyond these are closed).
_KEPT_HOSTS = 10


@functools.cache
def _bind(
    pool_class: type[HTTPConnectionPool], connection_class: type[HTTPConnection], production: bool
) -> type[HTTPConnectionPool]:
    # urllib3 builds connections from a class, so ``production`` travels on a subclass.
    connection = type(
        f"Guarded{connection_class.__name__}",
        (_GuardedConnectionMixin, connection_class),
        {"production": production},
    )
    return type(f"Guarded{pool_class.__name__}", (pool_class,), {"ConnectionCls": connection})


def _adapter(production: bool) -> _GuardedAdapter:
    """This thread's adapter for ``production``."""
    adapter = _fetching.adapters.get(production)
    if adapter is None:
        adapter = _fetching.adapters[production] = _GuardedAdapter(production)
    return adapter


# --- Fetching ---------------------------------------------------------------------------------------


def fetch_result(
    url: str,
    token: str,
    *,
    client_secret: str | None,
    webhook_id: str,
    production: bool,
    within_grace: bool,
    max_bytes: int = MAX_BODY_BYTES,
    connect_timeout: float = CONNECT_TIMEOUT,
    total_timeout: float = TOTAL_TIMEOUT,
) -> FetchOutcome:
    """GET the vendor's result for ``token`` from ``url`` and classify the answer (spec §5).

    ``within_grace`` is true during the first 10 minutes after the vendor reported the result: only
    then are 404, 409 and 425 worth retrying. ``webhook_id`` is the fetch record's id (stable across
    retries); it is only sent, with a signature, when ``client_secret`` is set (an empty secret counts
    as none). Never raises for anything the vendor or the network does: every such case is an
    outcome.
    """
    target = add_query(url, access_token=token)
    scheme = urlsplit(target).scheme.lower()
    if scheme not in ("http", "https"):
        return FetchOutcome("fail", error=f"vendor URL scheme {scheme or '(none)'!r} is not http or https")
    if production and scheme != "https":
        return FetchOutcome("fail", error="http vendor URLs are refused in production")

    headers = dict(_HEADERS)
    if client_secret:
        timestamp = int(time.time())
        try:
            signature = sign_webhook(client_secret, webhook_id, timestamp)
        except ValueError as exc:
            return FetchOutcome("fail", error=str(exc))  # the client's secret is misconfigured
        headers["webhook-id"] = webhook_id
        headers["webhook-timestamp"] = str(timestamp)
        headers["webhook-signature"] = signature

    # The adapter directly, not a requests.Session: no cookies carried from one vendor's answer to
    # the next fetch, no proxies or .netrc from the environment (a proxy would make the
    # connect-time check meaningless), no redirects, and less work per fetch.
    adapter = _adapter(production)
    with _Deadline(total_timeout) as deadline:
        _fetching.deadline = deadline
        try:
            try:
                response = _send(adapter, target, headers, (connect_timeout, total_timeout), deadline)
            except ForbiddenAddress as exc:
                return FetchOutcome("fail", error=str(exc))
            except requests.RequestException as exc:
                return _request_failed(exc, deadline, connect_timeout)
            with response:
                return _read_response(response, target, deadline, max_bytes, within_grace)
        finally:
            _fetching.deadline = None


def _send(
    adapter: _GuardedAdapter,
    target: str,
    headers: dict[str, str],
    timeout: tuple[float, float],
    deadline: _Deadline,
) -> requests.Response:
    """Send the GET; a kept connection that the vendor had closed is replaced once (see the module)."""
    request = requests.Request("GET", target, headers=headers).prepare()
    _fetching.reused = False
    try:
        return adapter.send(request, stream=True, timeout=timeout)
    except requests.RequestException as exc:
        if not _lost_kept_connection(exc, deadline):
            raise
    _fetching.reused = False
    return adapter.send(request, stream=True, timeout=timeout)


#: What every fetch sends besides the signature: requests' defaults (compression, keep-alive), and
#: what the portal is and wants.
_HEADERS = {
    **requests.utils.default_headers(),
    "Accept": "application/json",
    "User-Agent": "toolcall-portal",
}


def _lost_kept_connection(exc: requests.RequestException, deadline: _Deadline) -> bool:
    """Whether the request failed because a kept connection had been closed by the vendor (an idle
    keep-alive connection may be closed at any moment, also just as a request goes out): the one
    failure that is tried again at once, on a new connection, within the same deadline. The GET is
    idempotent (RFC 9110 §9.2.2), and the retry is what a browser does in the same case."""
    return (
        _fetching.reused
        and isinstance(exc, requests.ConnectionError)
        and not isinstance(exc, requests.Timeout)
        and not deadline.expired
    )


def _read_response(
    response: requests.Response, target: str, deadline: _Deadline, max_bytes: int, within_grace: bool
) -> FetchOutcome:
    status = response.status_code
    kind = classify_status(status, within_grace=within_grace)

    if 300 <= status < 400:
        location = response.headers.get("Location")
        if location:
            where = urljoin(target, location)
            where = where if len(where) <= 200 else where[:200] + "…"
            error = f"redirect (HTTP {status}) to {where} not followed"
        else:
            error = f"redirect (HTTP {status}) not followed"
        return FetchOutcome(kind, status, error=error)

    if kind != "ok":
        retry_after = None
        if kind == "retry" and status in RETRY_AFTER_STATUSES:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
        try:
            body, _ = _read_capped(response, _ERROR_BODY_BYTES)
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError):
            body = b""  # the status already says what happened; the body is only a courtesy
        return FetchOutcome(kind, status, body[:_ERROR_BODY_BYTES], f"HTTP {status}", retry_after)

    too_large = FetchOutcome("fail", status, error=f"body larger than {_format_size(max_bytes)}")
    declared = response.headers.get("Content-Length", "")
    if declared.isascii() and declared.isdigit() and len(declared) <= 18 and int(declared) > max_bytes:
        return too_large  # refused before reading a byte of it
    try:
        body, over = _read_capped(response, max_bytes)
    except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
        if deadline.expired:
            return FetchOutcome("retry", status, error=f"timed out after {_format_seconds(deadline.seconds)}")
        return FetchOutcome("retry", status, error=f"connection broken while reading the body: {_short(exc)}")
    if deadline.expired:
        # The deadline's shutdown can look like a normal end of body: never trust a body cut short.
        return FetchOutcome("retry", status, error=f"timed out after {_format_seconds(deadline.seconds)}")
    if over:
        return FetchOutcome("fail", status, body, too_large.error)
    return FetchOutcome("ok", status, body)


def _read_capped(response: requests.Response, limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of the (decoded) body, and whether there was more."""
    chunks: list[bytes] = []
    size = 0
    stream: Iterator[bytes] = response.raw.stream(_CHUNK_BYTES, decode_content=True)
    for chunk in stream:
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[:limit], True
    return b"".join(chunks), False


def _request_failed(
    exc: requests.RequestException, deadline: _Deadline, connect_timeout: float
) -> FetchOutcome:
    forbidden = _find_cause(exc, ForbiddenAddress)
    if forbidden is not None:
        return FetchOutcome("fail", error=str(forbidden))
    if isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.InvalidSchema):
        return FetchOutcome("fail", error=f"invalid vendor URL: {_short(exc)}")
    if deadline.expired:
        return FetchOutcome("retry", error=f"timed out after {_format_seconds(deadline.seconds)}")
    if isinstance(exc, requests.ReadTimeout):
        # A read stalled before the budget was spent, e.g. a TLS handshake under the connect timeout.
        return FetchOutcome("retry", error=f"timed out after {_format_seconds(round(deadline.elapsed(), 1))}")
    if isinstance(exc, requests.ConnectTimeout):
        return FetchOutcome("retry", error=f"connect timed out after {_format_seconds(connect_timeout)}")
    return FetchOutcome("retry", error=_describe_connection_error(exc))


def _describe_connection_error(exc: BaseException) -> str:
    refused = _find_cause(exc, ConnectionRefusedError)
    if refused is not None:
        return "connection refused"
    unresolved = _find_cause(exc, socket.gaierror)
    if unresolved is not None:
        return f"host name not resolved: {unresolved.strerror or unresolved}"
    tls = _find_cause(exc, ssl.SSLError)
    if tls is not None:
        return f"TLS failed: {_short(tls)}"
    reset = _find_cause(exc, ConnectionResetError)
    if reset is not None:
        return "connection reset by the vendor"
    unreachable = _find_cause(exc, OSError)
    if unreachable is not None and unreachable.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return f"vendor unreachable: {unreachable.strerror}"
    return f"connection failed: {_short(exc)}"


def _find_cause(exc: BaseException, wanted: type[_E]) -> _E | None:
    """The first exception of type ``wanted`` in ``exc``'s chain (causes, contexts, wrapped reasons)."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, wanted):
            return current
        # urllib3 and requests wrap errors in their arguments and in ``reason``, not only as causes.
        related = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        pending.extend(item for item in related if isinstance(item, BaseException))
    return None


def _short(exc: BaseException, limit: int = 160) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "…"


def _format_seconds(seconds: float) -> str:
    return f"{seconds:g} s"


def _format_size(size: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} bytes"


# --- Classification ---------------------------------------------------------------------------------


def classify_status(status: int, *, within_grace: bool) -> Kind:
    """The §5 verdict on an HTTP status: 2xx ok; 5xx and 429 retry; 404/409/425 retry only
    ``within_grace``; every other status (other 4xx, any 3xx, anything odd) fail."""
    if 200 <= status < 300:
        return "ok"
    if status >= 500 or status == 429:
        return "retry"
    if status in GRACE_STATUSES and within_grace:
        return "retry"
    return "fail"


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay-seconds or an HTTP date), capped at an hour.

    ``None`` when the value is missing or unreadable; a date in the past means 0.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), RETRY_AFTER_CAP)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # HTTP dates are GMT
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP)


class _Random(Protocol):
    def random(self) -> float: ...


def backoff_delay(attempt: int, rng: _Random = random, base: float = BACKOFF_BASE) -> float:
    """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 0): §5's
    ``min(5 s · 2^n, 1 h)`` with equal jitter, i.e. half of it fixed and half random, so retries
    from many fetches spread out without any of them coming back much too early. ``base`` replaces
    the 5 s (``TOOLCALL_FETCH_BACKOFF_BASE_SECS``)."""
    if attempt < 0:
        raise ValueError(f"attempt must be 0 or more, not {attempt}")
    # Past 2^32 the cap applies for any sensible base; stopping there keeps 2**attempt small for
    # absurd attempt counts.
    ceiling = min(base * 2 ** min(attempt, 32), BACKOFF_CAP)
    return ceiling / 2 + rng.random() * ceiling / 2


# --- Standard Webhooks signatures -------------------------------------------------------------------


def webhook_key(secret: str) -> bytes:
    """The HMAC key for ``secret``: ``whsec_<base64>`` decodes to its key; anything else is UTF-8."""
    if secret.startswith(_WHSEC_PREFIX):
        try:
            return base64.b64decode(secret[len(_WHSEC_PREFIX) :], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(
                "client secret starts with 'whsec_' but the rest is not base64; "
                "set the secret as issued, or without the prefix to use it as plain text"
            ) from exc
    return secret.encode("utf-8")


def sign_webhook(secret: str, webhook_id: str, timestamp: int, body: bytes | str = b"") -> str:
    """The ``webhook-signature`` value: ``v1,`` + base64 HMAC-SHA256 of ``"{id}.{timestamp}.{body}"``."""
    payload = body.encode("utf-8") if isinstance(body, str) else body
    signed = f"{webhook_id}.{timestamp}.".encode() + payload
    digest = hmac.new(webhook_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str = b"",
    tolerance: int = WEBHOOK_TOLERANCE,
    now: float | None = None,
) -> bool:
    """True if ``headers`` carry a valid Standard Webhooks signature of ``body`` under ``secret``.

    The vendor's side (the demo vendor uses it). Header names are matched case-insensitively; the
    timestamp must be within ``tolerance`` seconds of ``now`` (default: the clock) either way, which
    stops a captured request from being replayed later; the signature header may list several
    space-separated signatures (key rotation) and one valid ``v1`` is enough. Compared in constant time.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    webhook_id = lowered.get("webhook-id")
    timestamp_text = lowered.get("webhook-timestamp", "")
    signatures = lowered.get("webhook-signature", "")
    if (
        not webhook_id
        or not (timestamp_text.isascii() and timestamp_text.isdigit() and len(timestamp_text) <= 15)
        or not signatures
    ):
        return False
    timestamp = int(timestamp_text)
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign_webhook(secret, webhook_id, timestamp, body).encode("ascii")
    valid = False
    for candidate in signatures.split():
        # No early exit: every candidate is compared, so timing says nothing about which matched.
        valid |= hmac.compare_digest(candidate.encode("utf-8", "replace"), expected)
    return valid
