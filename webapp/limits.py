"""Rate limits (Flask-Limiter, counted in Redis so that every web process shares them).

Login: 10 a minute per (address, username) and 60 a minute per address -- the same answer whether
the username exists or not. The vendor API: 600 a minute per address, and of those, 300 a minute
that make a result fetch owed (a new result token, or a failed fetch's token again: each costs the
portal a row and requests to the vendor; repeats of a known token cost nothing and are not
counted). ``TOOLCALL_RATELIMIT=off`` turns them off, and the cap of owed fetches per client with
them (``webapp.fetches.owe``); the numbers are settings (``TOOLCALL_RATELIMIT_LOGIN`` and friends).
The address is the client's: behind ``TOOLCALL_TRUSTED_PROXIES`` proxies, the one they forwarded
(``webapp.inbound``).
"""

from __future__ import annotations

from flask import current_app, g, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

limiter = Limiter(key_func=get_remote_address)


def login_key() -> str:
    return f"{get_remote_address()}|{request.form.get('username', '').strip().lower()}"


def setting(name: str):
    """A limit read from the app's settings when the request comes (tests may change them)."""
    return lambda: current_app.config[name]


def made_a_fetch_owed(_response) -> bool:
    """Whether the request made a result fetch owed (``deduct_when`` of the limit on such reports:
    the view says so in ``g.fetch_owed_now``)."""
    return bool(g.get("fetch_owed_now"))


def max_owed_fetches() -> int | None:
    """How many result fetches a client may have owed at once; None when the limits are off."""
    config = current_app.config
    return config["TOOLCALL_MAX_OWED_FETCHES"] if config["TOOLCALL_RATELIMIT"] else None
