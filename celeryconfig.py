"""The environment, read one way by every process, and Celery's settings from it.

The portal (``webapp.config``), the workers and the Celery apps read the environment through the
functions here, so a variable means the same everywhere and a bad value gets the same clear error:

    REDIS_URL               events, records, rate limits, start tokens; default redis://127.0.0.1:6379/0
    CELERY_BROKER_URL       broker (Redis or RabbitMQ); default REDIS_URL
    CELERY_RESULT_BACKEND   result backend; default REDIS_URL
    TOOLCALL_SWEEP_SECS     how often beat queues the sweep (seconds, default 10)

``settings()`` reads the environment as it is now and returns Celery's settings as a dict: the
worker app (``worker.app``) and every client app (the Bus, the portal) are configured from it.
"""

from __future__ import annotations

import os

from toolbus.descriptors import tool_queue

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

#: Longest end-to-end timeout a caller may give an eval (seconds); the broker's visibility timeout
#: must exceed it, or Redis would hand an unacknowledged eval to a second worker.
MAX_EVAL_TIMEOUT = 3600

#: The queue of the toolcall tasks (result fetches, the sweep): the Procfile's `callbacks` worker.
CALLBACKS_QUEUE = "callbacks"

#: Celery's keys in Redis (queues, results, events, remote control) start with this, so that other
#: Celery apps using the same Redis database -- database 0 is every project's default -- neither
#: see our tasks, workers and events nor show up in our Flower. (RabbitMQ ignores it.)
REDIS_KEY_PREFIX = "toolcall:"


class ConfigurationError(RuntimeError):
    """A setting is missing or wrong; the message says which and what to do."""


def flag(name: str) -> bool:
    """A yes/no variable: unset, empty, 0, false, no and off are no."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def seconds(name: str, default: float, kind: type = float, zero: bool = False) -> float:
    """A number of seconds from the environment: more than 0, or at least 0 where ``zero`` is allowed."""
    return number(name, default, kind, zero, unit="seconds")


def number(name: str, default: float, kind: type = float, zero: bool = False, unit: str = "seconds") -> float:
    """A number of ``unit`` from the environment: more than 0, or at least 0 where ``zero`` is allowed."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return kind(default)
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigurationError(
            f"{name}={raw!r} is not a number of {unit}; set e.g. {name}={default}"
        ) from None
    if value < 0 or (value == 0 and not zero):
        least = "0 or more" if zero else "more than 0"
        raise ConfigurationError(f"{name}={raw!r} must be {least} {unit}; set e.g. {name}={default}")
    return value


def whole_number(name: str, default: int, least: int = 0, unit: str = "") -> int:
    """A whole number from the environment (a count, a size in bytes), at least ``least``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    what = f"a whole number{f' of {unit}' if unit else ''} of at least {least}"
    digits = raw[1:] if raw.startswith("-") else raw
    if not (digits.isascii() and digits.isdigit()) or int(raw) < least:
        raise ConfigurationError(f"{name}={raw!r} must be {what}; set e.g. {name}={default}")
    return int(raw)


def redis_url() -> str:
    """``REDIS_URL``, or Redis on this machine."""
    return os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL


def broker_url(redis: str | None = None) -> str:
    """``CELERY_BROKER_URL``, else the Redis at ``redis`` (default ``redis_url()``)."""
    return os.environ.get("CELERY_BROKER_URL") or redis or redis_url()


def result_backend(redis: str | None = None) -> str:
    """``CELERY_RESULT_BACKEND``, else the Redis at ``redis`` (default ``redis_url()``)."""
    return os.environ.get("CELERY_RESULT_BACKEND") or redis or redis_url()


def route_task(name, args, kwargs, options, task=None, **kw):
    """ToolBus calls go to the queue of their tool, toolbus.<tool>; toolcall tasks to callbacks."""
    if name.startswith("toolcall."):
        return {"queue": CALLBACKS_QUEUE}
    if name.startswith("toolbus."):
        tool = kwargs.get("tool") if kwargs else None
        if tool is None and args:
            tool = args[0]
        if tool:
            return {"queue": tool_queue(tool)}
    return None


def settings() -> dict:
    """Celery's settings, each with its reason, from the environment as it is now."""
    return {
        "broker_url": broker_url(),
        "result_backend": result_backend(),
        # JSON only: calls and values travel as ATerm text; nothing is ever unpickled.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Each tool has its own queue (toolbus.<tool>); workers create the queues they consume.
        "task_routes": (route_task,),
        "task_create_missing_queues": True,
        "task_default_queue": "celery",
        # A tool serves one request at a time: a child should not hoard calls it cannot start yet,
        # and with --max-tasks-per-child the next child picks up the rest.
        "worker_prefetch_multiplier": 1,
        # At most once: an eval is acknowledged when it is received, so a worker child that dies
        # mid-call does not run it again; the caller gets ToolCrashed instead.
        "task_acks_late": False,
        "task_reject_on_worker_lost": False,
        # No ack emulation on Redis: with it, kombu 5.7.0 crashes a worker (exit 1) that loses the
        # broker connection while it holds reserved messages (docs/reliability.md). Nothing relies
        # on Redis redelivering a dead worker's messages: evals run at most once (a redelivery would
        # come after the caller's deadline anyway), and owed result fetches are re-queued from the
        # database by the sweep. (Should emulation come back, its visibility timeout must exceed every
        # eval timeout.)
        "broker_transport_options": {
            "ack_emulation": False,
            "visibility_timeout": MAX_EVAL_TIMEOUT + 600,
            "global_keyprefix": REDIS_KEY_PREFIX,
        },
        "result_backend_transport_options": {"global_keyprefix": REDIS_KEY_PREFIX},
        # A tool call carries its own deadline, and its hard time limit ends with it
        # (worker.deadlines); this is the ceiling of any task. No soft time limit: the prefork pool
        # arms a task's hard limit only once its soft limit has passed, so a one-hour soft limit
        # kept every shorter hard limit from ever firing.
        "task_time_limit": MAX_EVAL_TIMEOUT + 60,
        # Results are read once by the caller within its timeout; keep them an hour for Flower.
        "result_expires": 3600,
        "result_extended": True,
        # Events on, so that Flower sees every task and worker.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "broker_connection_retry_on_startup": True,
        # Worker logs are read by operators: one line per task is enough.
        "worker_hijack_root_logger": False,
        # The sweep (docs/api.md §5): re-queues lost result fetches, expires unused tokens and attempts.
        "beat_schedule": {
            "toolcall-sweep": {
                "task": "toolcall.sweep",
                "schedule": seconds("TOOLCALL_SWEEP_SECS", 10),
                "options": {"queue": CALLBACKS_QUEUE, "expires": 60},
            }
        },
    }
