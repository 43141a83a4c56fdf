"""The portal's client for fetching a result from a vendor (server to server), docs/api.md §3–§5.

The fetch goes through ``webapp.outbound``, which holds the portal's defences against a URL that
somebody else registered (the time budget, the size cap, no redirects, the production address
checks, kept connections); when the client has a secret it is signed with Standard Webhooks headers
(``webapp.webhooks``). This module builds the URL and says what an attempt came to.

The life of one fetch attempt:

1. Build the URL (``access_token`` added to the query) and refuse a non-https URL in production.
2. Take the thread's kept connection to the host, or resolve, check and connect (production:
   public addresses only), under the connect timeout.
3. Send the GET with ``Accept: application/json`` and, if the client has a secret, the signature
   (Standard Webhooks, over ``webhooks.fetch_payload(token)``).
4. Read the status and headers, then at most ``max_bytes`` of body, all within the total budget.
5. Classify (§5): ``ok``, ``retry`` (with ``Retry-After`` where honoured) or ``fail``, with a short
   error text for the fetch record. Validating the body (§4) is the caller's job.

This is domain code: no Flask, no database; the Celery task owns the fetch record and the schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from webapp import outbound
from webapp.webhooks import fetch_payload, webhook_headers

__all__ = [
    "CONNECT_TIMEOUT",
    "MAX_BODY_BYTES",
    "RETRY_AFTER_CAP",
    "TOTAL_TIMEOUT",
    "FetchOutcome",
    "add_query",
    "classify_status",
    "fetch_result",
    "parse_retry_after",
]

MAX_BODY_BYTES = 1 << 20  # §4: a result body is at most 1 MiB
CONNECT_TIMEOUT = 5.0  # §5
TOTAL_TIMEOUT = 15.0  # §5: the whole response, not each read
RETRY_AFTER_CAP = 3600.0  # §5: a vendor cannot park a fetch for longer than an hour

#: Statuses meaning "not there yet": retried only while the vendor may still be storing the result.
GRACE_STATUSES = frozenset({404, 409, 425})
#: The only statuses whose Retry-After is honoured (§5).
RETRY_AFTER_STATUSES = frozenset({429, 503})

Kind = Literal["ok", "retry", "fail"]


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
    """GET the vendor's result for ``token`` from ``url`` and classify the answer (docs/api.md §5).

    ``within_grace`` is true during the first 10 minutes after the vendor reported the result: only
    then are 404, 409 and 425 worth retrying. ``webhook_id`` is the fetch record's id (stable across
    retries); it is only sent, with a signature of the token's payload, when ``client_secret`` is set
    (an empty secret counts as none). Never raises for anything the vendor, the network or the
    client's URL does: every such case is an outcome (a URL no request can be made to fails, saying why).
    """
    try:
        # Before the secret is used: a refused URL is reported as such even if the secret is bad too.
        # Before the query is added too: a URL that cannot be parsed fails here, with the reason.
        outbound.check_url(url, production=production)
    except outbound.URLRefused as exc:
        return FetchOutcome("fail", error=str(exc))
    target = add_query(url, access_token=token)

    headers = {"Accept": "application/json"}
    if client_secret:
        try:
            # Signed over the token asked for: the signature is worth nothing for another result.
            headers.update(webhook_headers(client_secret, webhook_id, fetch_payload(token)))
        except ValueError as exc:
            return FetchOutcome("fail", error=str(exc))  # the client's secret is misconfigured

    try:
        response = outbound.get(
            target,
            headers=headers,
            production=production,
            max_bytes=max_bytes,
            connect_timeout=connect_timeout,
            total_timeout=total_timeout,
        )
    except outbound.Redirected as exc:
        return FetchOutcome(
            classify_status(exc.status, within_grace=within_grace), exc.status, error=str(exc)
        )
    except (outbound.URLRefused, outbound.BodyTooLarge) as exc:
        return FetchOutcome("fail", exc.status, exc.body, str(exc))  # the same again would fail again
    except outbound.OutboundError as exc:  # timed out, or the connection failed
        return FetchOutcome("retry", exc.status, error=str(exc))

    status = response.status
    kind = classify_status(status, within_grace=within_grace)
    if kind == "ok":
        return FetchOutcome("ok", status, response.body)
    retry_after = None
    if kind == "retry" and status in RETRY_AFTER_STATUSES:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
    return FetchOutcome(kind, status, response.body, f"HTTP {status}", retry_after)


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
