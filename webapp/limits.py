"""Rate limits (Flask-Limiter, counted in Redis so that every web process shares them).

Login: 10 a minute per (address, username) and 60 a minute per address -- the same answer whether
the username exists or not. The vendor API: 600 a minute per address. ``TOOLCALL_RATELIMIT=off``
turns them off; the numbers are settings (``TOOLCALL_RATELIMIT_LOGIN`` and friends). The address is
the client's: behind ``TOOLCALL_TRUSTED_PROXIES`` proxies, the one they forwarded (``webapp.inbound``).
"""

from __future__ import annotations

from flask import current_app, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

limiter = Limiter(key_func=get_remote_address)


def login_key() -> str:
    return f"{get_remote_address()}|{request.form.get('username', '').strip().lower()}"


def setting(name: str):
    """A limit read from the app's settings when the request comes (tests may change them)."""
    return lambda: current_app.config[name]
