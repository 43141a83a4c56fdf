"""The portal's HTTP client for calls to vendors (server to server), spec §3–§5.

The result fetch is the one place where the portal requests a URL that somebody else registered, so
this module is where the portal defends itself against that URL:

- **Time.** A vendor gets 5 s to accept the connection and 15 s for the *whole* response: connect,
  headers and body together. A per-read timeout is not enough (a server that drips a byte a second
  never trips it), so every request runs under a deadline: a timer shuts the socket down when the
  budget is spent, whatever phase the request is in.
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
- **Signing.** When the client has a secret, the request carries Standard Webhooks headers
  (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``) so the vendor can tell the portal
  from anyone else knowing its URL. ``verify_webhook`` is the vendor's side of it.

Key derivation for the signature: a secret of the form ``whsec_<base64>`` (how Standard Webhooks
libraries issue them) means the key is the base64-decoded rest; any other secret is used as its UTF-8
bytes, so the plain secrets set with ``flask clients add --secret S`` work unchanged. A vendor using a
Standard Webhooks library should therefore be given a ``whsec_`` secret.

The life of one fetch attempt:

1. Build the URL (``access_token`` added to the query) and refuse a non-https URL in production.
2. Resolve, check and connect (production: public addresses only), under the connect timeout.
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
import hashlib
import hmac
import ipaddress
import math
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
    before the ``with`` block ends and closes it.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._started_at = self._ends_at = 0.0  # set when the clock starts, in __enter__
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._expired = False
        self._stopped = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._started_at = time.monotonic()
        self._ends_at = self._started_at + self.seconds
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()
        with self._lock:
            self._stopped = True
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()

    @property
    def expired(self) -> bool:
        return self._expired

    def remaining(self) -> float:
        return max(0.0, self._ends_at - time.monotonic())

    def elapsed(self) -> float:
        return time.monotonic() - self._started_at

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            if self._stopped:
                return
            duplicate = sock.dup()
            self._sockets.append(duplicate)
            if self._expired:
                _shutdown(duplicate)

    def _expire(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._expired = True
            for sock in self._sockets:
                _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already disconnected: nothing left to interrupt


class _GuardedConnectionMixin:
    """Connects like urllib3, but checks addresses (production) and reports to the deadline.

    Bound to one fetch by ``_bind``, which sets the two class attributes below on a subclass.
    """

    deadline: _Deadline
    production: bool

    # Attributes provided by urllib3's HTTPConnection.
    _dns_host: str
    host: str
    port: int
    timeout: float | None
    socket_options: list[tuple[int, int, int | bytes]] | None

    def _new_conn(self) -> socket.socket:
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
            remaining = self.deadline.remaining()
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
            self.deadline.track(sock)
            return sock
        if last_error is None or isinstance(last_error, TimeoutError):
            raise ConnectTimeoutError(
                self, f"connection to {self.host} timed out (connect timeout={self.timeout})"
            ) from last_error
        raise NewConnectionError(self, f"failed to connect: {last_error}") from last_error  # type: ignore[arg-type]


class _GuardedAdapter(HTTPAdapter):
    """A requests adapter whose pools build guarded connections bound to one fetch."""

    def __init__(self, deadline: _Deadline, production: bool) -> None:
        self._deadline = deadline
        self._production = production
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: object, **kwargs: object) -> None:
        super().init_poolmanager(*args, **kwargs)  # type: ignore[arg-type]
        self.poolmanager.pool_classes_by_scheme = {
            "http": _bind(HTTPConnectionPool, HTTPConnection, self._deadline, self._production),
            "https": _bind(HTTPSConnectionPool, HTTPSConnection, self._deadline, self._production),
        }


def _bind(
    pool_class: type[HTTPConnectionPool],
    connection_class: type[HTTPConnection],
    deadline: _Deadline,
    production: bool,
) -> type[HTTPConnectionPool]:
    # urllib3 builds connections from a class, so the per-fetch state travels on a subclass.
    connection = type(
        f"Guarded{connection_class.__name__}",
        (_GuardedConnectionMixin, connection_class),
        {"deadline": deadline, "production": production},
    )
    return type(f"Guarded{pool_class.__name__}", (pool_class,), {"ConnectionCls": connection})


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

    headers = {"Accept": "application/json", "User-Agent": "toolcall-portal"}
    if client_secret:
        timestamp = int(time.time())
        try:
            signature = sign_webhook(client_secret, webhook_id, timestamp)
        except ValueError as exc:
            return FetchOutcome("fail", error=str(exc))  # the client's secret is misconfigured
        headers["webhook-id"] = webhook_id
        headers["webhook-timestamp"] = str(timestamp)
        headers["webhook-signature"] = signature

    session = requests.Session()
    session.trust_env = False  # no proxies (they would bypass the address check) and no .netrc
    try:
        with _Deadline(total_timeout) as deadline:
            adapter = _GuardedAdapter(deadline, production)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            try:
                response = session.get(
                    target,
                    headers=headers,
                    allow_redirects=False,
                    stream=True,
                    timeout=(connect_timeout, total_timeout),
                )
            except ForbiddenAddress as exc:
                return FetchOutcome("fail", error=str(exc))
            except requests.RequestException as exc:
                return _request_failed(exc, deadline, connect_timeout)
            with response:
                return _read_response(response, target, deadline, max_bytes, within_grace)
    finally:
        session.close()


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
