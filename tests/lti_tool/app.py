"""A small LTI 1.3 tool written with PyLTI1p3, as a tool's developer would write one, for the tests.

It is configured only from what the portal prints (``lti-tools add --json``), turned into
PyLTI1p3's ``ToolConfDict`` the way docs/lti.md shows. Settings (environment):

    LTI_TOOL_CONFIG        the file holding the portal's JSON (read at each request: it is written
                           after the tool has started, once its URL is known)
    LTI_TOOL_PRIVATE_KEY   the tool's private key (PEM file); its public key is served at /jwks
    LTI_TOOL_RECORDS       a file where the tool appends, one JSON line each, what it received and got
    LTI_TOOL_SECRET        the Flask secret key (its session keeps the OIDC nonce and the launch)

    GET, POST /login        OIDC login initiation (PyLTI1p3's FlaskOIDCLogin)
    POST /launch            the launch: validated by PyLTI1p3, recorded; a resource launch shows
                            the exam with a "Finish" form, a deep-linking launch offers two exams
    POST /finish            publishes a score through AGS, then reads the results and the members
    POST /deep-link         answers the deep-linking request with two ltiResourceLinks
    GET  /jwks              the tool's public key set
"""

from __future__ import annotations

import datetime
import html
import json
import os
from pathlib import Path

from flask import Flask, jsonify, request
from pylti1p3.contrib.flask import FlaskMessageLaunch, FlaskOIDCLogin, FlaskRequest
from pylti1p3.deep_link_resource import DeepLinkResource
from pylti1p3.exception import LtiException, LtiServiceException
from pylti1p3.grade import Grade
from pylti1p3.lineitem import LineItem
from pylti1p3.tool_config import ToolConfDict


def tool_configuration(portal: dict, private_key: str, public_key: str) -> ToolConfDict:
    """PyLTI1p3's configuration from the portal's ``--json`` output (as docs/lti.md shows)."""
    conf = ToolConfDict(
        {
            portal["issuer"]: [
                {
                    "default": True,
                    "client_id": portal["client_id"],
                    "auth_login_url": portal["auth_login_url"],
                    "auth_token_url": portal["auth_token_url"],
                    "auth_audience": portal["auth_audience"],
                    "key_set_url": portal["key_set_url"],
                    "deployment_ids": [portal["deployment_id"]],
                }
            ]
        }
    )
    conf.set_private_key(portal["issuer"], private_key, client_id=portal["client_id"])
    conf.set_public_key(portal["issuer"], public_key, client_id=portal["client_id"])
    return conf


def create_app() -> Flask:
    app = Flask(__name__)
    app.secret_key = os.environ["LTI_TOOL_SECRET"]
    private_key = Path(os.environ["LTI_TOOL_PRIVATE_KEY"]).read_text()
    public_key = Path(os.environ["LTI_TOOL_PRIVATE_KEY"] + ".pub").read_text()
    records = Path(os.environ["LTI_TOOL_RECORDS"])

    def conf() -> ToolConfDict:
        portal = json.loads(Path(os.environ["LTI_TOOL_CONFIG"]).read_text())
        return tool_configuration(portal, private_key, public_key)

    def record(event: str, **data) -> None:
        with open(records, "a", encoding="utf-8") as f:
            f.write(json.dumps({"event": event, **data}) + "\n")

    def page(title: str, body: str) -> str:
        return (
            f"<!doctype html><html><head><title>{html.escape(title)}</title></head><body>{body}</body></html>"
        )

    @app.errorhandler(LtiException)
    def refused(error: LtiException):
        record("refused", error=str(error))
        return page("Refused", f"<h1>Launch refused</h1><p id='error'>{html.escape(str(error))}</p>"), 400

    @app.route("/login", methods=["GET", "POST"])
    def login():
        target = request.values.get("target_link_uri")
        if not target:
            raise LtiException("no target_link_uri")
        return FlaskOIDCLogin(FlaskRequest(), conf()).redirect(target)

    @app.post("/launch")
    def launch():
        if request.form.get("error"):  # the platform refused the authorization
            record("oidc-error", error=request.form["error"], description=request.form.get("error_description"),
                   state=request.form.get("state"))  # fmt: skip
            return page("Refused", f"<h1 id='error'>{html.escape(request.form['error'])}</h1>"), 400
        message = FlaskMessageLaunch(FlaskRequest(), conf())
        claims = message.get_launch_data()
        record("launch", claims=claims, launch_id=message.get_launch_id())
        launch_id = html.escape(message.get_launch_id())
        if message.is_deep_link_launch():
            return page(
                "Choose exams",
                f"<h1>Choose exams</h1><form method='post' action='/deep-link'><input type='hidden' name='launch_id' "
                f"value='{launch_id}'><button type='submit'>Add two exams</button></form>",
            )
        name = html.escape(claims.get("given_name", "candidate"))
        return page(
            "Exam",
            f"<h1>Hello {name}</h1><form method='post' action='/finish'><input type='hidden' name='launch_id' "
            f"value='{launch_id}'><input name='score' value='8'><button type='submit'>Finish</button></form>",
        )

    @app.post("/finish")
    def finish():
        message = FlaskMessageLaunch.from_cache(request.form["launch_id"], FlaskRequest(), conf())
        claims = message.get_launch_data()
        ags = message.get_ags()
        grade = (
            Grade()
            .set_score_given(float(request.form.get("score", 8)))
            .set_score_maximum(10)
            .set_timestamp(datetime.datetime.now(datetime.UTC).isoformat())
            .set_activity_progress("Completed")
            .set_grading_progress("FullyGraded")
            .set_user_id(claims["sub"])
            .set_comment("well done")
        )
        try:
            published = ags.put_grade(grade)
            grades = ags.get_grades()
            lineitems = ags.get_lineitems()
            members = message.get_nrps().get_members()
        except LtiServiceException as e:
            record("service-error", error=str(e))
            return page(
                "Service error", f"<h1>Service error</h1><p id='error'>{html.escape(str(e))}</p>"
            ), 502
        record("finished", score_status=published["headers"].get("Content-Type"), grades=grades,
               lineitems=lineitems, members=members)  # fmt: skip
        return page("Done", "<h1>Score sent</h1>")

    @app.post("/deep-link")
    def deep_link():
        message = FlaskMessageLaunch.from_cache(request.form["launch_id"], FlaskRequest(), conf())
        base = request.host_url.rstrip("/")
        resources = [
            DeepLinkResource()
            .set_url(f"{base}/launch?quiz=algebra")
            .set_title("Algebra quiz")
            .set_custom_params({"quiz": "algebra"})
            .set_lineitem(LineItem().set_score_maximum(20).set_label("Algebra")),
            DeepLinkResource().set_url(f"{base}/launch").set_title("Geometry quiz"),
        ]
        record("deep-link-response", titles=[r.get_title() for r in resources])
        return message.get_deep_link().output_response_form(resources)

    @app.get("/jwks")
    def jwks():
        return jsonify(conf().get_jwks())

    return app
