"""The toolcall portal: users start exams hosted by vendors (API v2) and by LTI 1.3 tools.

``create_app(config=None)`` builds the Flask app: settings from the environment (``webapp.config``)
with ``config`` on top, the database, and the CLI commands. Nothing happens at import time.
"""

from __future__ import annotations

import os
from pathlib import Path

import redis
from flask import Flask, send_from_directory
from flask_wtf import CSRFProtect
from werkzeug.exceptions import HTTPException

from webapp.config import settings
from webapp.db import Database, close_session
from webapp.tokens import StartTokens
from worker.app import make_app


def create_app(config: dict | None = None) -> Flask:
    # The views and commands are imported here, as the Flask tutorial does: importing a domain
    # module (a Celery worker does) never loads the web layer.
    from webapp import api, auth, cli, inbound, metrics, ops, portal
    from webapp.errors import http_error, too_many_requests
    from webapp.limits import limiter
    from webapp.lti import views as lti

    app = Flask(__name__, instance_relative_config=True)
    config = dict(config or {})
    instance = Path(config.get("INSTANCE_PATH") or os.environ.get("TOOLCALL_INSTANCE") or app.instance_path)
    app.instance_path = str(instance)
    # ``config`` goes in with the environment, not after it: a config that sets TOOLCALL_PRODUCTION
    # must meet production's rules (a required SECRET_KEY, secure cookies).
    app.config.update(settings(instance, config))
    app.extensions["db"] = Database(app.config["DATABASE_URL"])
    app.teardown_appcontext(close_session)
    app.extensions["start_tokens"] = StartTokens(
        redis.Redis.from_url(app.config["REDIS_URL"]), app.config["TOOLCALL_TOKEN_TIMEOUT_SECS"]
    )
    # Only to queue tasks by name; the tasks themselves live in worker/.
    app.extensions["celery"] = make_app(
        "toolcall-web",
        broker_url=app.config["CELERY_BROKER_URL"],
        result_backend=app.config["CELERY_RESULT_BACKEND"],
    )
    inbound.install(app)  # first: before anything reads a request's body
    CSRFProtect(app)  # every form; the vendor API takes no forms (GET only); LTI: see webapp.lti.views
    app.config.setdefault("RATELIMIT_STORAGE_URI", app.config["REDIS_URL"])
    app.config.setdefault("RATELIMIT_ENABLED", app.config["TOOLCALL_RATELIMIT"])
    app.config.setdefault("RATELIMIT_HEADERS_ENABLED", True)
    limiter.init_app(app)
    app.register_error_handler(429, too_many_requests)
    # Every other HTTP error, and an unhandled exception (a 500), on every path: one styled page
    # (the vendor API keeps its envelope: webapp.api's own handlers, and http_error on its paths).
    app.register_error_handler(HTTPException, http_error)
    app.add_url_rule("/favicon.ico", "favicon", favicon)
    auth.login_manager.init_app(app)
    app.register_blueprint(auth.bp)
    app.register_blueprint(portal.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(ops.bp)
    lti.register(app)
    app.register_blueprint(metrics.bp)
    app.after_request(security_headers)
    cli.register(app)
    return app


#: Sent with every answer. No ``form-action``: the start form's answer redirects to the vendor, and
#: browsers apply ``form-action`` to that redirect too.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
}


#: Browsers ask for /favicon.ico whatever the pages link; it may be cached for a day.
FAVICON_MAX_AGE = 86400


def favicon():
    """The site's icon at the address browsers ask for by default (pages link the SVG one)."""
    return send_from_directory(
        Path(__file__).resolve().parent / "static", "favicon.ico", max_age=FAVICON_MAX_AGE
    )


def security_headers(response):
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response
