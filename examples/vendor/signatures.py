"""The two HMACs of the toolcall API, seen from the vendor's side (docs/api.md §3 and §5).

- **Ours**, on the portal's ``/fetch-token/`` when we have a client secret:
  ``X-Toolcall-Auth: <client name> <unix seconds> <hex HMAC-SHA256(secret, "<seconds>\\n<METHOD>\\n<path?query>")>``,
  the path and query exactly as sent.
  The start token goes in the query, where this signature covers it (a client with a secret that
  sends it in a header is refused).
- **The portal's**, on its GET of our result URL: Standard Webhooks headers ``webhook-id``,
  ``webhook-timestamp`` and ``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 of
  ``"{id}.{timestamp}.{payload}"``), the payload being ``{"access_token":"<R>"}`` for the result
  token R of the request's query (``fetch_payload``): a signature for one R is worth nothing for
  another. A Standard Webhooks library verifies the same thing given that payload as the body.

Standard library only, so a vendor can copy this file as it is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping

#: How far the portal's clock may be from ours; older signatures are refused (no replays).
TOLERANCE_SECS = 300


def client_auth(client: str, secret: str, method: str, target: str, now: float | None = None) -> str:
    """The ``X-Toolcall-Auth`` value for a request of ``method`` to ``target`` (path and query)."""
    stamp = int(time.time() if now is None else now)
    message = f"{stamp}\n{method.upper()}\n{target}".encode()
    return f"{client} {stamp} {hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()}"


def webhook_key(secret: str) -> bytes:
    """The key of the portal's signatures: a ``whsec_<base64>`` secret is its decoded rest, any
    other secret its UTF-8 bytes. Raises ValueError for a ``whsec_`` secret that is not base64."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except binascii.Error as e:
            raise ValueError("the client secret starts with 'whsec_' but the rest is not base64") from e
    return secret.encode()


def fetch_payload(token: str) -> bytes:
    """What the portal signs when it fetches the result ``token``: its JSON text, no whitespace
    (R is printable ASCII: only ``"`` and ``\\`` are escaped, with a backslash)."""
    return json.dumps({"access_token": token}, separators=(",", ":")).encode()


def signed_by_portal(secret: str, headers: Mapping[str, str], token: str, now: float | None = None) -> bool:
    """True if ``headers`` carry a valid, current Standard Webhooks signature by the portal of its
    fetch of result ``token`` (the ``access_token`` of the request's query) under ``secret``.
    Header names are matched in any letter case."""
    headers = {name.lower(): value for name, value in headers.items()}
    webhook_id = headers.get("webhook-id", "")
    stamp = headers.get("webhook-timestamp", "")
    # ASCII digits only, and not too many: int() refuses "²" and 5000-digit strings by raising.
    if not webhook_id or not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 15):
        return False
    if abs((time.time() if now is None else now) - int(stamp)) > TOLERANCE_SECS:
        return False
    signed = f"{webhook_id}.{stamp}.".encode() + fetch_payload(token)
    digest = hmac.new(webhook_key(secret), signed, hashlib.sha256).digest()
    expected = ("v1," + base64.b64encode(digest).decode()).encode()
    # The header may list several signatures (key rotation); compare them all, in constant time.
    candidates = headers.get("webhook-signature", "").split()
    return any([hmac.compare_digest(c.encode(errors="replace"), expected) for c in candidates])
