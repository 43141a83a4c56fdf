"""The vendor API (v2, wire-compatible with the original): discovery, start data, result tokens.

    GET /.api/toolcall/v2/                         discovery
    GET /fetch-token/?access_token=T               start data; the start token is used up (a client
                                                   with a secret signs this query: X-Toolcall-Auth)
    GET /result/?access_token=R&client=NAME        a result is ready: the portal will fetch it
    GET /.api/toolcall/v2/openapi.json             this API as an OpenAPI 3.1 document (webapp/openapi.json)

Every error a vendor gets is the envelope of ``webapp.errors`` -- also a wrong method (405), an
unknown path under ``/.api/`` (404) and a failure of the portal itself (500).
A web request never waits on a vendor: ``/result/`` records the owed fetch and queues it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flask import Blueprint, current_app, g, jsonify, render_template, request, send_file
from sqlalchemy import select
from werkzeug.exceptions import HTTPException

from webapp import fetches, lifecycle, phrases
from webapp.db import get_session
from webapp.errors import api_error, error_page, is_api_path, wants_html
from webapp.lifecycle import Status
from webapp.limits import limiter, made_a_fetch_owed, max_owed_fetches, setting
from webapp.models import Client, ToolCall
from webapp.signing import sign_system
from webapp.tokens import StartTokens

log = logging.getLogger("webapp.api")
bp = Blueprint("api", __name__)

#: A result token R: 1-255 printable ASCII characters (docs/api.md §2).
RESULT_TOKEN = re.compile(r"[\x20-\x7e]{1,255}")
#: Start tokens are ours: URL-safe base64 of 256 bits.
START_TOKEN = re.compile(r"[A-Za-z0-9_-]{20,100}")
#: How far a client's clock may be from ours in X-Toolcall-Auth.
AUTH_WINDOW_SECS = 300
#: The OpenAPI document of this API, served as it is.
OPENAPI = Path(__file__).resolve().parent / "openapi.json"
#: It changes only with a deployment; clients and caches may keep it this long.
OPENAPI_MAX_AGE = 3600
#: When a client with as many owed fetches as it may have is told to report again.
OWED_RETRY_AFTER_SECS = 60


def request_token() -> str | None:
    """The access token: query parameter, else X-Access-Token, else ``Authorization: Token ...``
    (the headers only for clients without a secret, on ``/fetch-token/``)."""
    token = request.args.get("access_token")
    if token:
        return token
    token = request.headers.get("X-Access-Token")
    if token:
        return token
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "token" and value.strip():
        value = value.strip()
        match = re.fullmatch(r'token="([^"]*)"', value)
        return match.group(1) if match else value
    return None


def start_tokens() -> StartTokens:
    return current_app.extensions["start_tokens"]


@bp.get("/.api/toolcall/v2/")
def discovery():
    # The operator's public URL, not one built from the request: a Host header would choose it.
    root = current_app.config["TOOLCALL_PUBLIC_URL"] + "/"
    return jsonify(
        {
            "api": {
                "metadata": {"name": "toolcall", "url": "/.api/toolcall/v2/", "active": True, "version": 2},
                "urls": {
                    "root-url": root,
                    "start_data": {
                        "url": "fetch-token/",
                        "description": "GET with access_token=<start token>: the start data of an attempt "
                        "(the token is used up).",
                    },
                    "result_token": {
                        "url": "result/",
                        "description": "GET with access_token=<result token>&client=<client name>: "
                        "the portal fetches the result from the client's result URL.",
                    },
                },
            }
        }
    )


def _unix_seconds(text: str) -> bool:
    """Plain ASCII digits of a sane length (``isdigit`` alone accepts "²", which int() refuses)."""
    return text.isascii() and text.isdigit() and len(text) <= 15


def client_auth_ok(client: Client) -> bool:
    """``X-Toolcall-Auth: <client> <unix seconds> <hex HMAC-SHA256(secret, "ts\\nMETHOD\\npath?query")>``."""
    parts = request.headers.get("X-Toolcall-Auth", "").split(" ")
    if len(parts) != 3 or not _unix_seconds(parts[1]):
        return False
    name, stamp, signature = parts
    if not hmac.compare_digest(name.encode(), client.name.encode()):
        return False
    if abs(time.time() - int(stamp)) > AUTH_WINDOW_SECS:
        return False
    target = request.path + (f"?{request.query_string.decode('latin-1')}" if request.query_string else "")
    message = f"{stamp}\n{request.method}\n{target}".encode()
    expected = hmac.new(client.secret.encode(), message, hashlib.sha256).hexdigest()
    # As bytes: compare_digest refuses str with non-ASCII characters (a header may carry any).
    return hmac.compare_digest(expected.encode(), signature.lower().encode("utf-8", "replace"))


@bp.get("/fetch-token/")
@limiter.limit(setting("TOOLCALL_RATELIMIT_API"))
def fetch_token():
    if request.method == "HEAD":
        # Flask answers HEAD with the GET view minus the body: here that would use the start token
        # up and move the attempt on while nobody gets the start data (a link checker, a proxy).
        response = api_error("method-not-allowed", "HEAD would use the start token up; use GET")
        response.headers["Allow"] = "GET, OPTIONS"
        return response
    token = request_token()
    if not token:
        return api_error("missing-token", "no access token given (query parameter access_token)")
    if not START_TOKEN.fullmatch(token):
        return api_error("token-invalid", "this is not a start token", token)
    session = get_session()
    tokens = start_tokens()
    # The client is checked before the token is used up: a leaked token cannot be burnt by
    # someone without the client's secret.
    peeked = tokens.peek(token)
    toolcall = session.get(ToolCall, peeked) if peeked is not None else None
    if toolcall is None:
        return api_error("token-expired", "the start token is unknown, already used or expired", token)
    client = toolcall.tool.client
    if client.secret and not request.args.get("access_token"):
        # X-Toolcall-Auth signs the path and query: a token in a header would not be covered.
        return api_error(
            "client-auth-failed",
            f"client {client.name} has a secret: send the start token in the query (access_token), "
            "where X-Toolcall-Auth signs it",
            token,
        )
    if client.secret and not client_auth_ok(client):
        return api_error(
            "client-auth-failed", f"client {client.name} must authenticate (X-Toolcall-Auth)", token
        )
    if tokens.consume(token) != toolcall.id:
        return api_error("token-expired", "the start token is unknown, already used or expired", token)
    try:
        lifecycle.advance(session, toolcall, (Status.START_DATA_SENT, f"start data fetched by {client.name}"))
        session.commit()
    except (lifecycle.IllegalTransition, lifecycle.ConcurrentTransition) as e:
        session.rollback()
        log.warning("fetch-token for toolcall %s: %s", toolcall.id, e)
        return api_error("token-expired", "this attempt is no longer waiting for its start data", token)
    user = toolcall.user
    return jsonify(
        {
            "type": "person",
            "msgid": str(uuid.uuid4()),
            "token": token,
            "timestamp": datetime.now(UTC).isoformat(),
            "data": {
                "firstName": user.first_name,
                "lastName": user.last_name,
                "email": user.email,
                "exam": toolcall.tool.slug,
                "persnr": user.persnr,
                "extra_time": user.extra_time,
                "exam_kind": "start",
                "system": sign_system(toolcall.id, current_app.config["SECRET_KEY"]),
            },
        }
    )


@bp.get("/result/")
@limiter.limit(setting("TOOLCALL_RATELIMIT_API"))
# Only reports that made a fetch owed count (tested before, counted after the view).
@limiter.limit(
    setting("TOOLCALL_RATELIMIT_NEW_FETCHES"), scope="result-fetches-owed", deduct_when=made_a_fetch_owed
)
def result():
    name = request.args.get("client")
    if not name:
        return api_error("missing-client", "no client given (query parameter client)")
    session = get_session()
    # No client name holds a NUL character, and PostgreSQL refuses one even in a query's parameter.
    client = None if "\x00" in name else session.scalar(select(Client).where(Client.name == name))
    if client is None:
        return api_error("unknown-client", f"no client named {name!r}")
    token = request_token()
    if not token:
        return api_error("missing-token", "no result token given (query parameter access_token)")
    if not RESULT_TOKEN.fullmatch(token):
        return api_error("token-invalid", "a result token is 1-255 printable ASCII characters", token)
    # The same URL is the vendor's report and, after the vendor's redirect, the candidate's result
    # page: told apart by the Accept header (``wants_html``). Both record a new report (a vendor may
    # report through the redirect alone); only a vendor's re-report re-opens a failed fetch, so that
    # reloading the page -- or its own refresh -- never restarts anything.
    browser = wants_html()
    try:
        fetch, owed_now = fetches.owe(
            session, client, token, max_owed=max_owed_fetches(), reopen_failed=not browser
        )
    except fetches.TooManyOwed as e:
        response = api_error("rate-limited", str(e), token)
        response.headers["Retry-After"] = str(OWED_RETRY_AFTER_SECS)
        return response
    g.fetch_owed_now = owed_now
    if owed_now:
        fetches.trigger(current_app.extensions["celery"], fetch.id)
    if browser:
        return result_page(fetch)
    return jsonify({"type": "ok", "token": token, "data": {}})


#: The result page reloads itself this often while the next try is near, and at most this seldom.
RESULT_PAGE_REFRESH_SECS = (3, 60)


def result_page(fetch) -> str:
    """The candidate's page for a result fetch: the outcome in words when it is done, what happened
    and what to do when it failed (both final: no refresh), else a page that reloads itself."""
    toolcall = fetch.toolcall
    refresh = None
    if fetch.state == "owed":
        wait = (fetch.next_attempt_at - datetime.now(UTC)).total_seconds()
        refresh = int(min(max(wait, RESULT_PAGE_REFRESH_SECS[0]), RESULT_PAGE_REFRESH_SECS[1]))
    give_up_at = fetch.reported_at + timedelta(seconds=current_app.config["TOOLCALL_FETCH_GIVE_UP_SECS"])
    return render_template(
        "result_status.html",
        fetch=fetch,
        phrase=phrases.of(toolcall) if toolcall is not None else None,
        refresh=refresh,
        give_up_at=give_up_at,
    )


@bp.get("/.api/toolcall/v2/openapi.json")
def openapi():
    """This API as an OpenAPI 3.1 document: no login, cacheable (ETag, max-age)."""
    return send_file(
        OPENAPI, mimetype="application/json", max_age=OPENAPI_MAX_AGE, conditional=True, etag=True
    )


@bp.app_errorhandler(404)
@bp.app_errorhandler(405)
def api_routing_error(error: HTTPException):
    """A wrong method on an endpoint of the API, or an unknown path under ``/.api/``: the
    envelope, not Werkzeug's page (routing errors happen before any blueprint is chosen, so this
    is an app-wide handler; every other path gets the styled page)."""
    if not is_api_path(request.path):
        return error_page(error)
    if error.code == 405:
        response = api_error("method-not-allowed", f"{request.method} is not allowed here; use GET")
        response.headers["Allow"] = ", ".join(sorted(getattr(error, "valid_methods", None) or ["GET"]))
        return response
    return api_error("not-found", f"no such endpoint {request.path}; see /.api/toolcall/v2/")


@bp.errorhandler(500)
def server_error(_error):
    """The portal failed (its database or Redis is down, a bug): the envelope, never a bare 500
    page. Flask has logged the exception already."""
    return api_error(
        "server-error", "the portal could not answer; try again later", request.args.get("access_token")
    )
