"""Outbound HTTP: how the portal calls a URL that somebody else registered (docs/api.md §5).

The result fetch (``webapp.vendor_client``) is such a call, and any later one goes through ``get``
too, because this module is where the portal defends itself against such a URL:

- **Time.** A call gets ``connect_timeout`` to have its connection accepted and ``total_timeout``
  for the *whole* response: connect, headers and body together (the result fetch: 5 s and 15 s). A
  per-read timeout is not enough (a server that drips a byte a second never trips it), so every
  request runs under a deadline: when the budget is spent, the socket is shut down, whatever phase
  the request is in. One thread per process keeps the time of every call's deadline.
- **Size.** At most ``max_bytes`` of a 2xx body is read (the result fetch: 1 MiB); a larger body is
  refused without reading the rest. Of any other answer only the first 4 KiB are kept, for the
  operator.
- **Redirects** are never followed: a 3xx is reported as a failure naming the ``Location``, so a
  vendor cannot bounce the portal to another host (or a private one) and the operator sees why.
- **Addresses** (production only). The URL must be https and its host must resolve to public
  addresses only. The check runs *at connect time*, inside the connection: the host is resolved once,
  every resolved address is checked, the socket connects to one of exactly those addresses, and the
  peer of the connected socket is checked again. A DNS answer that changes between a check and the
  connect (DNS rebinding) therefore cannot slip a private address past it. TLS still uses the URL's
  host name for SNI and certificate checks. Proxy settings from the environment are ignored, since a
  proxy would make the connect-time check meaningless.
- **Kept connections.** Each thread keeps its connections to vendors open for its next call (one
  per vendor host; in production and outside it apart), as HTTP/1.1 allows: a new TCP connection,
  and in production a TLS handshake, per fetch was a large part of the worker's CPU. A kept
  connection was checked when it was made, and comes under the new call's deadline before
  anything is sent on it. No cookies or other state pass from one call to the next. A connection
  the vendor closed while it was kept fails the request before any answer: that request is tried
  once more, on a new connection, within the same deadline (a GET is idempotent).

What a call came to is a ``Response`` (any status but a 3xx) or an ``OutboundError`` whose text says
what went wrong, for the operator: ``URLRefused`` (``ForbiddenAddress`` for an address), ``Redirected``
and ``BodyTooLarge`` will not change by trying again; ``TimedOut`` and ``ConnectionFailed`` may.
Whether a status is good news is the caller's business.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import os
import socket
import ssl
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

from webapp.deadlines import Deadline

__all__ = [
    "ERROR_BODY_BYTES",
    "BodyTooLarge",
    "ConnectionFailed",
    "ForbiddenAddress",
    "OutboundError",
    "Redirected",
    "Response",
    "TimedOut",
    "URLRefused",
    "check_address",
    "check_url",
    "get",
]

ERROR_BODY_BYTES = 4096  # kept from a non-2xx answer, for the operator
_CHUNK_BYTES = 64 * 1024

_E = TypeVar("_E", bound=BaseException)


@dataclass(frozen=True)
class Response:
    """An answer that was read: its status (never a 3xx), its headers (names case-insensitive) and
    its body: all of it for a 2xx, at most ``ERROR_BODY_BYTES`` otherwise."""

    status: int
    headers: Mapping[str, str]
    body: bytes


# --- Errors -----------------------------------------------------------------------------------------


class OutboundError(Exception):
    """A call that did not come to a ``Response``; the text says what went wrong, for the operator.

    ``status`` is the answer's status when one was received, ``body`` what was read of it (only a
    ``BodyTooLarge`` keeps any).
    """

    def __init__(self, message: str, *, status: int | None = None, body: bytes = b"") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class URLRefused(OutboundError):
    """A URL the portal does not call: not http(s), http in production, or not a valid URL."""


class ForbiddenAddress(URLRefused, ValueError):
    """A vendor host resolved to an address the portal must not call in production."""


class Redirected(OutboundError):
    """A 3xx answer, which is never followed; ``location`` is where it pointed (absolute), if anywhere."""

    status: int

    def __init__(self, message: str, *, status: int, location: str | None = None) -> None:
        super().__init__(message, status=status)
        self.location = location


class BodyTooLarge(OutboundError):
    """A 2xx body over ``max_bytes``: refused on its ``Content-Length``, or cut at ``max_bytes``."""


class TimedOut(OutboundError):
    """The deadline, the connect timeout or a stalled read ended the call."""


class ConnectionFailed(OutboundError):
    """No connection, or it broke: refused, unresolved, reset, unreachable, a failed TLS handshake."""


# --- Calling ----------------------------------------------------------------------------------------


def check_url(url: str, *, production: bool) -> None:
    """Raise ``URLRefused`` unless a request can be made to ``url``: http or https (https in
    production), with a host name the resolver can encode (no empty label, none longer than 63
    characters) or an IP address, and a port in range. The text says what is wrong, for the
    operator who registered the URL (the ops form and the CLI check a client's URLs with it)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (reading it checks it: a number in 0-65535)
    except ValueError as exc:
        raise URLRefused(f"invalid vendor URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise URLRefused(f"vendor URL scheme {scheme or '(none)'!r} is not http or https")
    if production and scheme != "https":
        raise URLRefused("http vendor URLs are refused in production")
    host = parts.hostname
    if not host:
        raise URLRefused("invalid vendor URL: it names no host")
    if ":" not in host:  # an IPv6 literal was checked by urlsplit
        _check_host_name(host)


#: The longest host name DNS can look up (RFC 1035, without the trailing dot).
_MAX_HOST_NAME = 253


def _check_host_name(host: str) -> None:
    # The resolver encodes the name with Python's IDNA codec (socket.getaddrinfo does): a name it
    # cannot encode raised UnicodeError from inside the request, which no caller expected.
    try:
        encoded = host.encode("idna")
    except UnicodeError:
        raise URLRefused(
            f"invalid vendor URL: host name {host!r} has an empty label or a label longer than 63 characters"
        ) from None
    if len(encoded.rstrip(b".")) > _MAX_HOST_NAME:
        raise URLRefused(f"invalid vendor URL: host name is longer than {_MAX_HOST_NAME} characters")


def get(
    url: str,
    *,
    headers: Mapping[str, str],
    production: bool,
    max_bytes: int,
    connect_timeout: float,
    total_timeout: float,
) -> Response:
    """GET ``url`` under the module's defences and read the answer; raises an ``OutboundError``.

    ``headers`` are sent on top of the usual ones (compression, keep-alive, the portal's
    ``User-Agent``). ``production`` turns on the https-only rule and the address checks. A 2xx body
    over ``max_bytes`` raises ``BodyTooLarge``; ``total_timeout`` bounds the whole call.
    """
    check_url(url, production=production)
    sent = CaseInsensitiveDict(_HEADERS)
    sent.update(headers)
    # The adapter directly, not a requests.Session: no cookies carried from one answer to the next
    # call, no proxies or .netrc from the environment (a proxy would make the connect-time check
    # meaningless), no redirects, and less work per call.
    adapter = _adapter(production)
    with Deadline(total_timeout) as deadline:
        _in_thread.deadline = deadline
        try:
            try:
                response = _send(adapter, url, sent, (connect_timeout, total_timeout), deadline)
            except requests.RequestException as exc:
                raise _request_failed(exc, deadline, connect_timeout) from exc
            except OutboundError:
                raise
            except ValueError as exc:  # a URL that check_url let through but the request cannot use
                raise URLRefused(f"invalid vendor URL: {_short(exc)}") from exc
            with response:
                return _read_response(response, url, deadline, max_bytes)
        finally:
            _in_thread.deadline = None


#: What every call sends besides the caller's headers: requests' defaults (compression, keep-alive),
#: and what the portal is.
_HEADERS = {
    **requests.utils.default_headers(),
    "User-Agent": "toolcall-portal",
}


def _send(
    adapter: _GuardedAdapter,
    url: str,
    headers: Mapping[str, str],
    timeout: tuple[float, float],
    deadline: Deadline,
) -> requests.Response:
    """Send the GET; a kept connection that the vendor had closed is replaced once (see the module)."""
    request = requests.Request("GET", url, headers=headers).prepare()
    _in_thread.reused = False
    try:
        return adapter.send(request, stream=True, timeout=timeout)
    except requests.RequestException as exc:
        if not _lost_kept_connection(exc, deadline):
            raise
    _in_thread.reused = False
    return adapter.send(request, stream=True, timeout=timeout)


def _lost_kept_connection(exc: requests.RequestException, deadline: Deadline) -> bool:
    """Whether the request failed because a kept connection had been closed by the vendor (an idle
    keep-alive connection may be closed at any moment, also just as a request goes out): the one
    failure that is tried again at once, on a new connection, within the same deadline. The GET is
    idempotent (RFC 9110 §9.2.2), and the retry is what a browser does in the same case."""
    return (
        _in_thread.reused
        and isinstance(exc, requests.ConnectionError)
        and not isinstance(exc, requests.Timeout)
        and not deadline.expired
    )


def _read_response(response: requests.Response, url: str, deadline: Deadline, max_bytes: int) -> Response:
    status = response.status_code

    if 300 <= status < 400:
        location = response.headers.get("Location")
        if not location:
            raise Redirected(f"redirect (HTTP {status}) not followed", status=status)
        try:
            where = urljoin(url, location)
        except ValueError:  # e.g. an unclosed IPv6 bracket: no URL at all, so none is named
            raise Redirected(
                f"redirect (HTTP {status}) to an invalid location {_shown(location)!r} not followed",
                status=status,
            ) from None
        raise Redirected(
            f"redirect (HTTP {status}) to {_shown(where)} not followed", status=status, location=where
        )

    if not 200 <= status < 300:
        try:
            body, _ = _read_capped(response, ERROR_BODY_BYTES)
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError):
            body = b""  # the status already says what happened; the body is only a courtesy
        return Response(status, response.headers, body)

    too_large = f"body larger than {_format_size(max_bytes)}"
    declared = response.headers.get("Content-Length", "")
    if declared.isascii() and declared.isdigit() and len(declared) <= 18 and int(declared) > max_bytes:
        raise BodyTooLarge(too_large, status=status)  # refused before reading a byte of it
    try:
        body, over = _read_capped(response, max_bytes)
    except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
        if deadline.expired:
            raise TimedOut(f"timed out after {_format_seconds(deadline.seconds)}", status=status) from exc
        raise ConnectionFailed(
            f"connection broken while reading the body: {_short(exc)}", status=status
        ) from exc
    if deadline.expired:
        # The deadline's shutdown can look like a normal end of body: never trust a body cut short.
        raise TimedOut(f"timed out after {_format_seconds(deadline.seconds)}", status=status)
    if over:
        raise BodyTooLarge(too_large, status=status, body=body)
    return Response(status, response.headers, body)


def _shown(url: str) -> str:
    """A URL as an error text quotes it: at most 200 characters."""
    return url if len(url) <= 200 else url[:200] + "…"


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
    exc: requests.RequestException, deadline: Deadline, connect_timeout: float
) -> OutboundError:
    """What a request that got no answer came to."""
    forbidden = _find_cause(exc, ForbiddenAddress)
    if forbidden is not None:
        return ForbiddenAddress(str(forbidden))
    if isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.InvalidSchema):
        return URLRefused(f"invalid vendor URL: {_short(exc)}")
    if deadline.expired:
        return TimedOut(f"timed out after {_format_seconds(deadline.seconds)}")
    if isinstance(exc, requests.ReadTimeout):
        # A read stalled before the budget was spent, e.g. a TLS handshake under the connect timeout.
        return TimedOut(f"timed out after {_format_seconds(round(deadline.elapsed(), 1))}")
    if isinstance(exc, requests.ConnectTimeout):
        return TimedOut(f"connect timed out after {_format_seconds(connect_timeout)}")
    return ConnectionFailed(_describe_connection_error(exc))


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


# --- Addresses --------------------------------------------------------------------------------------


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


# --- Guarded connections ---------------------------------------------------------------


class _InThread(threading.local):
    """The call under way in this thread, and the adapters (with their kept connections) of the
    thread: a thread makes one call at a time, so its connections are only ever used by it."""

    deadline: Deadline | None = None
    reused = False  # whether the request went out on a connection kept from an earlier call

    def __init__(self) -> None:
        self.adapters: dict[bool, _GuardedAdapter] = {}


_in_thread = _InThread()


def _after_fork_in_child() -> None:
    # The parent's connections do not belong to a forked child.
    global _in_thread
    _in_thread = _InThread()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _current_deadline() -> Deadline:
    deadline = _in_thread.deadline
    if deadline is None:
        raise RuntimeError("a guarded connection is only used inside outbound.get")
    return deadline


class _GuardedConnectionMixin:
    """Connects like urllib3, but checks addresses (production) and reports to the deadline of the
    call under way in the thread.

    ``production`` is set on a subclass by ``_bind``. A connection made without the address checks
    is never used with them: each thread has one adapter (and pool) per value of ``production``.
    """

    production: bool
    #: The deadline this connection's socket is tracked by (it is tracked again when kept and reused).
    _tracked_by: Deadline | None = None

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
        # A connection kept from an earlier call (checked when it was made, in production): its
        # socket comes under this call's deadline before anything is sent on it.
        deadline = _current_deadline()
        if self.sock is not None and self._tracked_by is not deadline:
            deadline.track(self.sock)
            self._tracked_by = deadline
            _in_thread.reused = True
        super().request(*args, **kwargs)  # type: ignore[misc]


class _GuardedAdapter(HTTPAdapter):
    """A requests adapter whose pools build guarded connections; one per thread (and value of
    ``production``), kept, so that connections to a vendor are reused from one call to the next."""

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
    adapter = _in_thread.adapters.get(production)
    if adapter is None:
        adapter = _in_thread.adapters[production] = _GuardedAdapter(production)
    return adapter
