"""Standard Webhooks signatures on the portal's calls to vendors (docs/api.md §5).

When a client has a secret, the result fetch carries Standard Webhooks headers (``webhook-id``,
``webhook-timestamp``, ``webhook-signature``) so the vendor can tell the portal from anyone else
knowing its URL. ``webhook_headers`` makes them; ``verify_webhook`` is the vendor's side of it.

The fetch is a GET without a body, so what is signed as its payload is the token it asks for:
``fetch_payload(R)``, the JSON text ``{"access_token":"<R>"}`` without whitespace. The vendor
rebuilds it from the request's query and verifies it as the body (any Standard Webhooks library
does, given it), so a signature captured from one fetch opens no other result. R is printable ASCII
(docs/api.md §2), of which JSON escapes only ``"`` and ``\\`` (as ``\\"`` and ``\\\\``): Python's ``json.dumps``
and JavaScript's ``JSON.stringify`` write exactly that; Go's ``json.Marshal`` also escapes ``<``,
``>`` and ``&`` unless told not to (``SetEscapeHTML(false)``), PHP's ``json_encode`` also ``/``
(``JSON_UNESCAPED_SLASHES``).

Key derivation for the signature: a secret of the form ``whsec_<base64>`` (how Standard Webhooks
libraries issue them) means the key is the base64-decoded rest; any other secret is used as its UTF-8
bytes, so the plain secrets set with ``flask clients add --secret S`` work unchanged. A vendor using a
Standard Webhooks library gives it a ``whsec_`` secret as it is, or a plain secret's UTF-8 bytes (as
text, the libraries would take a plain secret for base64).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping

__all__ = [
    "WEBHOOK_TOLERANCE",
    "fetch_payload",
    "sign_webhook",
    "verify_webhook",
    "webhook_headers",
    "webhook_key",
]

WEBHOOK_TOLERANCE = 300  # seconds either side of the receiver's clock

_WHSEC_PREFIX = "whsec_"


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


def fetch_payload(token: str) -> str:
    """What the signature of a result fetch covers: ``{"access_token":"<token>"}``, no whitespace.

    ``ensure_ascii`` is moot for a result token (printable ASCII); for any other text it would write
    non-ASCII as ``\\uXXXX`` where JavaScript's ``JSON.stringify`` writes the character itself."""
    return json.dumps({"access_token": token}, separators=(",", ":"))


def sign_webhook(secret: str, webhook_id: str, timestamp: int, body: bytes | str = b"") -> str:
    """The ``webhook-signature`` value: ``v1,`` + base64 HMAC-SHA256 of ``"{id}.{timestamp}.{body}"``."""
    payload = body.encode("utf-8") if isinstance(body, str) else body
    signed = f"{webhook_id}.{timestamp}.".encode() + payload
    digest = hmac.new(webhook_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def webhook_headers(secret: str, webhook_id: str, body: bytes | str = b"") -> dict[str, str]:
    """The three headers that sign a request with ``body`` under ``secret``, stamped with the clock.

    ``webhook_id`` names the message and stays the same when it is sent again (the result fetch
    uses its fetch record's id). Raises ``ValueError`` for a ``whsec_`` secret that is not base64.
    """
    timestamp = int(time.time())
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign_webhook(secret, webhook_id, timestamp, body),
    }


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
