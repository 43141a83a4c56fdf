"""The LTI platform's browser-facing endpoints (blueprint ``lti``), and the blueprints' registration.

    GET  /lti/1.3/jwks.json                 the platform's public keys
    GET, POST /lti/1.3/authorize            OIDC authorization (the launch's second half)
    POST /lti/1.3/deep-linking/return       a tool's deep-linking response (form field JWT)

None of them takes a CSRF token: they are reached from the tool's pages, and what they do is
authorized by what they carry -- a single-use launch hint for the logged-in user, a JWT signed by
the tool's key -- not by the browser's cookies alone.

The id_token (or an OIDC error) goes back to the tool as a form posted at once by a script served
from this site (the Content-Security-Policy allows no inline script), with a button for browsers
without scripts.
"""

from __future__ import annotations

import redis
from flask import Blueprint, Flask, current_app, jsonify, render_template, request
from flask_login import current_user

from webapp.db import get_session
from webapp.lti import deep_linking, keys, launch, problems
from webapp.lti.transient import Transient

bp = Blueprint("lti", __name__, url_prefix="/lti/1.3", static_folder="static", static_url_path="/static")


def register(app: Flask) -> None:
    """The LTI blueprints, their Redis store, and their exemption from CSRF (see the module)."""
    from webapp.lti import admin, services

    app.extensions["lti_transient"] = Transient(redis.Redis.from_url(app.config["REDIS_URL"]))
    for blueprint in (bp, services.bp):
        app.register_blueprint(blueprint)
        app.extensions["csrf"].exempt(blueprint)
    app.register_blueprint(admin.bp)


def transient() -> Transient:
    return current_app.extensions["lti_transient"]


def record(tool: str, where: str, what: str) -> None:
    problems.record(transient().redis, tool, where, what)


@bp.get("/jwks.json")
def jwks():
    """The key set: public keys only; tools may cache it for a while."""
    response = jsonify(keys.key_set(get_session(), current_app.config))
    response.cache_control.public = True
    response.cache_control.max_age = 300
    return response


@bp.route("/authorize", methods=["GET", "POST"])
def authorize():
    params = request.args if request.method == "GET" else request.form
    params = {name: params.get(name) for name in launch.PARAMETERS}
    user = current_user._get_current_object() if current_user.is_authenticated else None
    session = get_session()
    try:
        granted = launch.authorize(
            session, params, user, current_app.extensions["start_tokens"], transient(), current_app.config
        )
    except launch.Refusal as refusal:
        session.rollback()
        record(refusal.tool, "authorization", f"{refusal.error}: {refusal.description}")
        if refusal.redirect_uri is None:
            return _page(400, refusal.error, f"This launch cannot go on: {refusal.description}.")
        fields = {"error": refusal.error, "error_description": refusal.description}
        if params.get("state"):
            fields["state"] = params["state"]
        return render_template(
            "lti/form_post.html", action=refusal.redirect_uri, fields=fields, tool=refusal.tool
        )
    except keys.KeyUnavailable as e:
        session.rollback()
        record("", "authorization", str(e))
        return _page(
            503, "platform-key-unavailable", "The portal cannot sign launches now; an operator has been told."
        )
    fields = {"id_token": granted.id_token}
    if granted.state:
        fields["state"] = granted.state
    current_app.logger.info("LTI %s for tool %s", granted.what, granted.tool)
    response = current_app.make_response(
        render_template("lti/form_post.html", action=granted.redirect_uri, fields=fields, tool=granted.tool)
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/deep-linking/return")
def deep_linking_return():
    session = get_session()
    try:
        registration, exams = deep_linking.receive(
            session, request.form.get("JWT", ""), transient(), current_app.config
        )
        session.commit()
    except deep_linking.DeepLinkingError as e:
        session.rollback()
        record(e.tool, "deep-linking return", str(e))
        return _page(400, "deep-linking-refused", f"Nothing was added: {e}.")
    current_app.logger.info("deep linking added %d exams from %s", len(exams), registration.client.name)
    return render_template("lti/deep_linking_done.html", registration=registration, exams=exams)


def _page(status: int, code: str, msg: str):
    return render_template("error.html", status=status, code=code, msg=msg), status
