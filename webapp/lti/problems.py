"""Refusals of the LTI endpoints, kept for the ops pages (and logged).

A refused launch, token request, deep-linking response or service call often has no ToolCall to
be logged on (an unknown client, a wrong key, a forged token), and the tool's administrator learns
of it only from the tool's side. So each refusal is logged and kept in Redis, the latest
``KEPT`` per tool (and for requests that name no known tool), shown on the LTI tools' ops pages.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import redis

log = logging.getLogger("webapp.lti")

KEY = "toolcall:lti:problems:{}"
#: Problems kept per tool.
KEPT = 50
#: The list of refusals that name no registered tool.
UNKNOWN = ""


@dataclass(frozen=True)
class Problem:
    at: float
    where: str
    what: str

    @property
    def when(self) -> str:
        return datetime.fromtimestamp(self.at, UTC).strftime("%Y-%m-%d %H:%M:%S")


def record(client: redis.Redis, tool: str, where: str, what: str) -> None:
    """Keep (and log) that ``where`` (an endpoint) refused a request of ``tool`` because ``what``."""
    log.warning("LTI %s refused%s: %s", where, f" for tool {tool}" if tool else "", what)
    entry = json.dumps({"at": time.time(), "where": where, "what": what[:1000]})
    try:
        with client.pipeline() as pipe:
            pipe.lpush(KEY.format(tool), entry).ltrim(KEY.format(tool), 0, KEPT - 1).execute()
    except redis.RedisError as e:  # the refusal is answered and logged all the same
        log.error("could not keep an LTI problem in Redis: %s", e)


def recent(client: redis.Redis, tool: str) -> list[Problem]:
    """The latest problems of ``tool`` (``UNKNOWN``: of no known tool), newest first."""
    try:
        entries = client.lrange(KEY.format(tool), 0, KEPT - 1)
    except redis.RedisError as e:
        log.error("could not read the LTI problems from Redis: %s", e)
        return []
    return [Problem(**json.loads(entry)) for entry in entries]
