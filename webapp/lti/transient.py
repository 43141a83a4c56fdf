"""Short-lived values of the LTI platform, kept in Redis with a lifetime.

- **Seen once** (``first_use``): a tool's ``jti`` and a deep-linking response's ``nonce``. The first
  ``SET NX`` wins; any later use of the same value within its lifetime is refused.
- **Issued, taken once** (``issue``/``take``): launch hints of deep-linking launches and the
  deep-linking ``data``; taking is one atomic ``GETDEL``, so of two concurrent uses exactly one wins.
- **Issued, read while alive** (``issue``/``read``): access tokens.

Long values are keyed by their SHA-256, so a tool cannot make the portal keep large keys.
"""

from __future__ import annotations

import hashlib
import json
import secrets

import redis

PREFIX = "toolcall:lti:"


def _key(kind: str, value: str) -> str:
    if len(value) > 128:
        value = "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{PREFIX}{kind}:{value}"


class Transient:
    def __init__(self, client: redis.Redis):
        self.redis = client

    def first_use(self, kind: str, value: str, ttl_seconds: int) -> bool:
        """Whether this is the first use of ``value`` (of its ``kind``) within ``ttl_seconds``."""
        return bool(self.redis.set(_key(kind, value), "1", nx=True, ex=max(1, int(ttl_seconds))))

    def issue(self, kind: str, payload: dict, ttl_seconds: int) -> str:
        """A new random token standing for ``payload`` for ``ttl_seconds``."""
        token = secrets.token_urlsafe(32)
        self.redis.set(_key(kind, token), json.dumps(payload), ex=max(1, int(ttl_seconds)))
        return token

    def read(self, kind: str, token: str) -> dict | None:
        """The payload of a live token, which stays live; None if unknown or expired."""
        value = self.redis.get(_key(kind, token))
        return json.loads(value) if value is not None else None

    def take(self, kind: str, token: str) -> dict | None:
        """The payload of a live token, which is used up; None if unknown, used or expired."""
        value = self.redis.getdel(_key(kind, token))
        return json.loads(value) if value is not None else None
