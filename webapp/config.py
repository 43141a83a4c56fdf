"""Settings of the portal, from the environment, with a working default for every one on one machine.

See the table in docs/operating.md ("Configuration reference"). ``settings(instance_path,
overrides)`` is called by ``create_app`` (``overrides`` being the app's own config, e.g. a test's)
and by the Celery tasks, which have no Flask app. Variables are read the way every process reads
them (``celeryconfig``).
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from celeryconfig import (
    ConfigurationError,
    broker_url,
    flag,
    number,
    redis_url,
    result_backend,
    seconds,
    whole_number,
)
from toolbus.descriptors import default_tools_path

__all__ = ["ConfigurationError", "settings"]

#: The development key's file in the instance folder.
SECRET_KEY_FILE = "secret_key"
#: The largest request body the portal reads (``TOOLCALL_MAX_CONTENT_LENGTH``): its forms are a few
#: fields, and the vendor API takes no body at all.
MAX_CONTENT_LENGTH = 1 << 20
#: Multipart forms: the most one non-file field may hold, and the most fields a form may have.
MAX_FORM_MEMORY_SIZE = 64 << 10
MAX_FORM_PARTS = 100
#: How long a login lasts (``TOOLCALL_SESSION_LIFETIME_SECS``): a working day, counted from the login.
SESSION_LIFETIME_SECS = 8 * 3600


def _secret_key(instance_path: Path, production: bool, configured: str | None = None) -> str:
    key = configured or os.environ.get("SECRET_KEY")
    if key:
        return key
    if production:
        raise ConfigurationError(
            "SECRET_KEY must be set when TOOLCALL_PRODUCTION is set: "
            'set it to a long random string, e.g. the output of python -c "import secrets; print(secrets.token_hex(32))"'
        )
    # Development: one random key per machine, shared by every process (web, workers) through the
    # instance folder, so that what one signs the others verify.
    path = instance_path / SECRET_KEY_FILE
    instance_path.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # Written completely under another name, then linked into place: a process starting at the
        # same moment sees either no key file or the whole key, never an empty one. The first link wins.
        fd, draft = tempfile.mkstemp(dir=instance_path, prefix=".secret_key-")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
            try:
                os.link(draft, path)
            except FileExistsError:
                pass
        finally:
            os.unlink(draft)
    key = path.read_text().strip()
    if not key:
        raise ConfigurationError(f"the development key file {path} is empty; delete it and a new key is made")
    return key


def default_instance_path() -> Path:
    return Path(os.environ.get("TOOLCALL_INSTANCE", Path(__file__).resolve().parent.parent / "instance"))


def public_url(overrides: Mapping | None = None) -> str:
    """``TOOLCALL_PUBLIC_URL`` without its trailing slash; by default the portal on this machine
    (``http://127.0.0.1:$PORT``)."""
    overrides = overrides or {}
    url = overrides.get("TOOLCALL_PUBLIC_URL") or os.environ.get("TOOLCALL_PUBLIC_URL", "").strip()
    if not url:
        url = f"http://127.0.0.1:{os.environ.get('PORT', '').strip() or 5000}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigurationError(
            f"TOOLCALL_PUBLIC_URL={url!r} is not the portal's root URL; set e.g. "
            "TOOLCALL_PUBLIC_URL=https://portal.example.org"
        )
    return url.rstrip("/")


def settings(instance_path: Path | str | None = None, overrides: Mapping | None = None) -> dict:
    """The settings: the environment's, with ``overrides`` on top.

    Settings that follow from others (whether a secret key is required, secure cookies, the token
    lifetime's default) follow the values in ``overrides`` too, so a config that sets
    ``TOOLCALL_PRODUCTION`` gets production's rules.
    """
    overrides = dict(overrides or {})
    instance_path = Path(overrides.get("INSTANCE_PATH") or instance_path or default_instance_path())
    if "TOOLCALL_PRODUCTION" in overrides:
        production = bool(overrides["TOOLCALL_PRODUCTION"])
    else:
        production = flag("TOOLCALL_PRODUCTION")
    redis = overrides.get("REDIS_URL") or redis_url()
    fallbacks = os.environ.get("SECRET_KEY_FALLBACKS", "")
    database_url = overrides.get("DATABASE_URL") or os.environ.get("DATABASE_URL")
    if not database_url:
        # The default database lives in the instance folder, which SQLite will not create.
        instance_path.mkdir(parents=True, exist_ok=True)
        database_url = f"sqlite:///{instance_path / 'toolcall.sqlite3'}"
    values = {
        "INSTANCE_PATH": str(instance_path),
        "DATABASE_URL": database_url,
        "REDIS_URL": redis,
        # Celery's broker and result backend follow REDIS_URL unless set on their own.
        "CELERY_BROKER_URL": broker_url(redis),
        "CELERY_RESULT_BACKEND": result_backend(redis),
        "SECRET_KEY": _secret_key(instance_path, production, overrides.get("SECRET_KEY")),
        "SECRET_KEY_FALLBACKS": [key.strip() for key in fallbacks.split(",") if key.strip()],
        "TOOLCALL_PRODUCTION": production,
        "TOOLCALL_TOKEN_TIMEOUT_SECS": seconds("TOOLCALL_TOKEN_TIMEOUT_SECS", 10 if production else 200, int),
        "TOOLCALL_SWEEP_SECS": seconds("TOOLCALL_SWEEP_SECS", 10),
        # 0 is allowed: the sweep then re-queues an owed fetch as soon as it is due (a duplicate
        # message is harmless, the task claims the fetch first).
        "TOOLCALL_REQUEUE_GRACE_SECS": seconds("TOOLCALL_REQUEUE_GRACE_SECS", 30, zero=True),
        "TOOLCALL_FETCH_GIVE_UP_SECS": seconds("TOOLCALL_FETCH_GIVE_UP_SECS", 86400),
        # The base of the retry delay, min(base * 2^n, 1 h) with equal jitter (docs/api.md §5: 5 s).
        "TOOLCALL_FETCH_BACKOFF_BASE_SECS": seconds("TOOLCALL_FETCH_BACKOFF_BASE_SECS", 5),
        # The most one sweep run queues, and ends of each kind of stale attempt. A run's time grows
        # with its batch (a message costs 0.5-0.9 ms to publish here, half a run: bench/volume.py)
        # and must stay well under the period and the lock's 60 s: 1,000 takes about a second, and
        # every 10 s drains a lost backlog at the pace of one callbacks process (docs/operating.md,
        # "The sweep"; 2,000 took 1.8 s, too close to the 2 s target in docs/performance.md).
        "TOOLCALL_SWEEP_BATCH": whole_number("TOOLCALL_SWEEP_BATCH", 1000, least=1),
        # How often each worker writes its state for the ops page (a worker silent for three times
        # this is shown as not heard from).
        "TOOLCALL_WORKER_STATE_SECS": seconds("TOOLCALL_WORKER_STATE_SECS", 10),
        # Prometheus scrapes /metrics with "Authorization: Bearer <this>"; unset, only a logged-in
        # admin may read it.
        "TOOLCALL_METRICS_TOKEN": os.environ.get("TOOLCALL_METRICS_TOKEN") or None,
        # The ops pages: the tools file (as the workers read it), and where Flower is (it asks its
        # own login).
        "TOOLCALL_TOOLS": str(default_tools_path()),
        "FLOWER_URL": os.environ.get("FLOWER_URL") or "http://127.0.0.1:5555/",
        "TOOLCALL_RATELIMIT": os.environ.get("TOOLCALL_RATELIMIT", "on").strip().lower() != "off",
        "TOOLCALL_RATELIMIT_LOGIN": os.environ.get("TOOLCALL_RATELIMIT_LOGIN") or "10/minute",
        "TOOLCALL_RATELIMIT_LOGIN_ADDRESS": os.environ.get("TOOLCALL_RATELIMIT_LOGIN_ADDRESS") or "60/minute",
        "TOOLCALL_RATELIMIT_API": os.environ.get("TOOLCALL_RATELIMIT_API") or "600/minute",
        # Reports that make a result fetch owed (a new token, a failed one again), per address; and
        # how many fetches one client may have owed at once (webapp/limits.py).
        "TOOLCALL_RATELIMIT_NEW_FETCHES": os.environ.get("TOOLCALL_RATELIMIT_NEW_FETCHES") or "300/minute",
        "TOOLCALL_MAX_OWED_FETCHES": whole_number("TOOLCALL_MAX_OWED_FETCHES", 10000, least=1),
        # Where the web process listens (the Procfile binds ${HOST:-127.0.0.1}).
        "HOST": os.environ.get("HOST") or "127.0.0.1",
        # How many reverse proxies in front of the portal set X-Forwarded-For and -Proto: their hops
        # are believed (Werkzeug's ProxyFix), no others -- a client cannot choose its address.
        "TOOLCALL_TRUSTED_PROXIES": whole_number("TOOLCALL_TRUSTED_PROXIES", 0),
        "MAX_CONTENT_LENGTH": whole_number("TOOLCALL_MAX_CONTENT_LENGTH", MAX_CONTENT_LENGTH, 1, "bytes"),
        "MAX_FORM_MEMORY_SIZE": MAX_FORM_MEMORY_SIZE,
        "MAX_FORM_PARTS": MAX_FORM_PARTS,
        # The portal's public root URL (no trailing slash): discovery's root-url, the LTI issuer, and
        # the base of every URL the portal gives a vendor or a tool (never one built from a request's
        # Host header, which the client chooses).
        "TOOLCALL_PUBLIC_URL": public_url(overrides),
        # How long a rotated LTI signing key stays in the key set (tools cache key sets).
        "TOOLCALL_LTI_KEY_OVERLAP_DAYS": number("TOOLCALL_LTI_KEY_OVERLAP_DAYS", 7, zero=True, unit="days"),
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": production,
        "REMEMBER_COOKIE_SECURE": production,
    }
    values.update(overrides)
    values["MAX_FORM_MEMORY_SIZE"] = min(values["MAX_FORM_MEMORY_SIZE"], values["MAX_CONTENT_LENGTH"])
    # The session's lifetime, and the cookie settings that follow it (an override's too).
    if "TOOLCALL_SESSION_LIFETIME_SECS" not in overrides:
        values["TOOLCALL_SESSION_LIFETIME_SECS"] = seconds(
            "TOOLCALL_SESSION_LIFETIME_SECS", SESSION_LIFETIME_SECS, int
        )
    lifetime = timedelta(seconds=values["TOOLCALL_SESSION_LIFETIME_SECS"])
    values.setdefault("PERMANENT_SESSION_LIFETIME", lifetime)
    # Remember-me cookies are not offered; were one set, it would last no longer than a session.
    values.setdefault("REMEMBER_COOKIE_DURATION", lifetime)
    values["INSTANCE_PATH"] = str(instance_path)
    values["TOOLCALL_PRODUCTION"] = production
    return values
