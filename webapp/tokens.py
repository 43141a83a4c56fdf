"""Start tokens: opaque, single use, short-lived; kept in Redis.

A token is 256 random bits (URL-safe text). Issuing stores the ToolCall id under the token with a
TTL; consuming is one atomic GETDEL, so of any number of concurrent ``fetch-token`` calls exactly
one gets the ToolCall and the others get nothing (``token-expired``). Nothing is pickled.
"""

from __future__ import annotations

import secrets

import redis

KEY = "toolcall:start-token:{}"


class StartTokens:
    def __init__(self, client: redis.Redis, ttl_seconds: int):
        self.redis = client
        self.ttl = ttl_seconds

    def issue(self, toolcall_id: int) -> str:
        token = secrets.token_urlsafe(32)
        self.redis.set(KEY.format(token), str(toolcall_id), ex=self.ttl)
        return token

    def peek(self, token: str) -> int | None:
        """The ToolCall id of a live token, which stays live (to authenticate its client before
        ``consume``); None if unknown, used or expired."""
        value = self.redis.get(KEY.format(token))
        return int(value) if value is not None else None

    def consume(self, token: str) -> int | None:
        """The ToolCall id of a live token, which is used up; None if unknown, used or expired."""
        value = self.redis.getdel(KEY.format(token))
        return int(value) if value is not None else None
