"""The demo vendor's web app: receives start tokens, runs the exam, serves results (docs/api.md §1).

    GET  /start/?access_token=T        the user arrives from the portal; we fetch the start data
    GET  /exam/                        the exam (the start data is kept server-side, see store.py)
    POST /exam/                        score it, store the result under a new R, report R to the portal
    GET  /result-data/?access_token=R  the portal fetches the result data (signed, if we have a secret)

Settings (``create_app(config)`` overrides the environment):

    PORTAL_URL     TOOLCALL_PORTAL_URL   http://127.0.0.1:5000
    CLIENT_NAME    VENDOR_CLIENT_NAME    testclient
    CLIENT_SECRET  VENDOR_CLIENT_SECRET  unset: no client authentication, no signature check
    SECRET_KEY     VENDOR_SECRET_KEY     made once in the instance folder (signs our session cookie)
    INSTANCE_PATH  VENDOR_INSTANCE       examples/vendor/instance (holds vendor.sqlite3)
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path

from flask import (
    Blueprint,
    Flask,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from examples.vendor import exam
from examples.vendor.portal import Portal, PortalError
from examples.vendor.signatures import signed_by_portal, webhook_key
from examples.vendor.store import Attempt, Store

log = logging.getLogger("examples.vendor")
bp = Blueprint("vendor", __name__)


def create_app(config: dict | None = None) -> Flask:
    config = dict(config or {})
    instance = Path(
        config.get("INSTANCE_PATH")
        or os.environ.get("VENDOR_INSTANCE")
        or Path(__file__).resolve().parent / "instance"
    )
    app = Flask(__name__, instance_path=str(instance))
    instance.mkdir(parents=True, exist_ok=True)
    app.config.update(
        PORTAL_URL=os.environ.get("TOOLCALL_PORTAL_URL") or "http://127.0.0.1:5000",
        CLIENT_NAME=os.environ.get("VENDOR_CLIENT_NAME") or "testclient",
        CLIENT_SECRET=os.environ.get("VENDOR_CLIENT_SECRET") or None,
        SECRET_KEY=os.environ.get("VENDOR_SECRET_KEY"),
        DATABASE=str(instance / "vendor.sqlite3"),
        # The portal's cookie is called "session" too, and browsers share cookies between ports of
        # one host: with the default name, trying the demo on 127.0.0.1 would log the user out there.
        SESSION_COOKIE_NAME="vendor_session",
        SESSION_COOKIE_SAMESITE="Lax",
    )
    app.config.update(config)
    app.config["SECRET_KEY"] = app.config["SECRET_KEY"] or _development_key(instance)
    if app.config["CLIENT_SECRET"]:
        webhook_key(app.config["CLIENT_SECRET"])  # a malformed whsec_ secret fails now, not per request
    app.extensions["vendor_store"] = Store(app.config["DATABASE"])
    app.register_blueprint(bp)
    return app


def _development_key(instance: Path) -> str:
    """One random key kept in the instance folder, so sessions survive a restart."""
    path = instance / "secret_key"
    try:
        with path.open("x") as f:
            f.write(secrets.token_hex(32))
    except FileExistsError:
        pass
    return path.read_text().strip()


def portal() -> Portal:
    config = current_app.config
    return Portal(config["PORTAL_URL"], config["CLIENT_NAME"], config["CLIENT_SECRET"])


def store() -> Store:
    return current_app.extensions["vendor_store"]


def problem(message: str, status: int, code: str | None = None):
    """A page for the user saying what went wrong and what to do."""
    return render_template("problem.html", message=message, code=code, portal_url=portal().url), status


def current_attempt() -> Attempt | None:
    return store().attempt(session.get("attempt"))


@bp.get("/")
def index():
    return render_template("index.html", portal_url=portal().url)


@bp.get("/start/")
def start():
    """README steps 1-2: the portal sent the user here with a start token; fetch the start data."""
    token = request.args.get("access_token", "")
    if not token:
        return problem("The link has no access token.", 400, "missing-token")
    try:
        start_data = portal().fetch_start_data(token)
    except PortalError as e:
        log.warning("start data for a start token refused: %s", e)
        return problem(f"Your exam could not be started: {e}.", e.status, e.code)
    session.clear()
    session["attempt"] = store().new_attempt(start_data)
    session["csrf"] = secrets.token_urlsafe(32)
    # Redirect, so that the (used-up) token leaves the address bar and a reload shows the exam.
    return redirect(url_for(".exam_page"), code=303)


@bp.get("/exam/")
def exam_page():
    """README step 3: the exam, for the attempt in this browser's session."""
    attempt = current_attempt()
    if attempt is None:
        return problem("There is no exam in progress in this browser.", 400)
    if attempt.result_token:
        return redirect(portal().result_page(attempt.result_token), code=303)
    return render_template(
        "exam.html", start=attempt.start_data, questions=exam.QUESTIONS, csrf=session.get("csrf", "")
    )


@bp.post("/exam/")
def submit_exam():
    """README steps 4-5: score the answers, store the result under a new result token R, report R."""
    attempt = current_attempt()
    if attempt is None:
        return problem("There is no exam in progress in this browser.", 400)
    expected = session.get("csrf", "")
    if not expected or not hmac.compare_digest(request.form.get("csrf", "").encode(), expected.encode()):
        return problem("This form has expired. Open the exam again from the portal.", 403)
    token = attempt.result_token
    if token is None:
        token = secrets.token_urlsafe(32)  # R: ours, unique, and unguessable
        token = store().finish(attempt.id, token, result_body(attempt, token, request.form))
        try:
            # Server to server, so the report does not depend on the browser following the redirect.
            portal().report_result(token)
        except PortalError as e:
            log.warning("reporting result %s failed (the browser's redirect reports it again): %s", token, e)
    # The portal's page shows the state of the result, refreshing until it is stored.
    return redirect(portal().result_page(token), code=303)


def result_body(attempt: Attempt, token: str, answers) -> str:
    """The result data of docs/api.md §4, as the JSON text we will serve at /result-data/."""
    start = attempt.start_data
    points = exam.score(answers)
    return json.dumps(
        {
            "token": token,
            "type": "result",
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "data": {
                "persnr": start["persnr"],
                "participant_id": str(attempt.id),
                "exam": start["exam"],
                "passed": exam.passed(points),
                "score": points,
                "system": start["system"],
                "exam_type": start.get("exam_kind", "start"),
            },
        }
    )


@bp.get("/result-data/")
def result_data():
    """README step 6: the portal fetches the result data for R (after we reported R)."""
    secret = current_app.config["CLIENT_SECRET"]
    token = request.args.get("access_token", "")
    # The portal signs the token it asks for: a signature made for another result is refused.
    if secret and not signed_by_portal(secret, request.headers, token):
        return api_error("signature-invalid", "this call is not signed by the portal", None, 401)
    if not token:
        return api_error("missing-token", "no result token given (query parameter access_token)", None, 400)
    body = store().result(token)
    if body is None:
        return api_error("unknown-token", "no result is stored under this token", token, 404)
    return current_app.response_class(body, mimetype="application/json")


def api_error(code: str, msg: str, token: str | None, status: int):
    """The portal's error envelope (docs/api.md §2), for the portal's benefit when it reads our answers."""
    return jsonify({"type": "error", "token": token, "data": {"error": code, "msg": msg}}), status
