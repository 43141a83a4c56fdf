"""The ops pages of LTI tools: registering and editing a tool, the configuration its administrator
needs, the LTI settings of exams, scores and refusals where an operator looks for them."""

from __future__ import annotations

import json
import re

import pytest
from portal_support import add_client, add_user, csrf, logged_in
from sqlalchemy import select

from webapp.lti import grades
from webapp.lti.models import LineItem, LtiRegistration, PlatformKey
from webapp.models import Client, Exam

TOOL = {
    "name": "quizzer",
    "login_url": "https://tool.example/login",
    "launch_url": "https://tool.example/launch",
    "redirect_uris": "https://tool.example/launch\nhttps://tool.example/launch2",
    "jwks_url": "https://tool.example/jwks",
    "send_names": "y",
}


@pytest.fixture(name="ops")
def ops_fixture(app, redis_db):
    app.config["TOOLCALL_PUBLIC_URL"] = "https://portal.example"
    app.extensions["db"].upgrade()
    with app.extensions["db"].session() as session:
        add_client(session, "vendor")
        admin = add_user(session, "operator", "secret")
        admin.is_admin = True
    return app


def post(browser, path: str, **data):
    token = csrf(browser.get(path).data)
    return browser.post(path, data={"csrf_token": token, **data})


def registration(app) -> LtiRegistration:
    with app.extensions["db"].session() as session:
        found = session.scalar(select(LtiRegistration))
        found.client  # noqa: B018
        return found


def test_an_admin_registers_a_tool_and_sees_what_its_administrator_needs(ops):
    client = logged_in(ops, "operator", "secret")
    answer = post(client, "/ops/lti-tools/new/", **TOOL)
    assert answer.status_code == 303 and answer.headers["Location"] == "/ops/lti-tools/quizzer/"
    saved = registration(ops)
    assert saved.redirect_uri_list == ["https://tool.example/launch", "https://tool.example/launch2"]
    page = client.get("/ops/lti-tools/quizzer/").data.decode()
    shown = json.loads(
        re.search(r'<pre id="configuration-json">(.*?)</pre>', page, re.S).group(1).replace("&#34;", '"')
    )
    assert shown == {
        "issuer": "https://portal.example", "client_id": saved.lti_client_id, "deployment_id": saved.deployment_id,
        "auth_login_url": "https://portal.example/lti/1.3/authorize",
        "auth_token_url": "https://portal.example/lti/1.3/token",
        "key_set_url": "https://portal.example/lti/1.3/jwks.json", "auth_audience": None,
    }  # fmt: skip
    assert "https://portal.example/lti/1.3/deep-linking/return" in page
    assert "quizzer" in client.get("/ops/lti-tools/").data.decode()
    assert "LTI tools" in client.get("/ops/").data.decode()


def test_the_platforms_private_key_never_appears_on_a_page(ops):
    client = logged_in(ops, "operator", "secret")
    post(client, "/ops/lti-tools/new/", **TOOL)
    client.get("/lti/1.3/jwks.json")
    with ops.extensions["db"].session() as session:
        stored = session.scalar(select(PlatformKey.private_key))
    for path in ("/ops/lti-tools/", "/ops/lti-tools/quizzer/", "/lti/1.3/jwks.json"):
        page = client.get(path).data.decode()
        assert stored not in page and "PRIVATE" not in page and '"d"' not in page


@pytest.mark.parametrize(
    "change, error",
    [({"public_key": "-----BEGIN PUBLIC KEY-----"}, "either a key set URL or a public key"),
     ({"jwks_url": ""}, "either a key set URL or a public key"),
     ({"name": "vendor"}, "taken by an API v2 client"),
     ({"login_url": "ftp://tool.example/"}, "http or https URL"),
     ({"name": "quiz\x00zer"}, "cannot be stored")],
    ids=["both-keys", "no-key", "vendor-name", "bad-url", "nul"],
)  # fmt: skip
def test_a_registration_that_cannot_be_saved_is_a_form_error(ops, change, error):
    client = logged_in(ops, "operator", "secret")
    answer = post(client, "/ops/lti-tools/new/", **{**TOOL, **change})
    assert answer.status_code == 400 and error in answer.data.decode()
    with ops.extensions["db"].session() as session:
        assert session.scalar(select(LtiRegistration)) is None


def test_editing_a_tool_keeps_its_ids_and_a_vendors_edit_page_leads_there(ops):
    client = logged_in(ops, "operator", "secret")
    post(client, "/ops/lti-tools/new/", **TOOL)
    before = registration(ops)
    post(
        client,
        "/ops/lti-tools/quizzer/",
        **{**TOOL, "launch_url": "https://tool.example/v2", "send_names": ""},
    )
    after = registration(ops)
    assert (after.lti_client_id, after.deployment_id) == (before.lti_client_id, before.deployment_id)
    assert (after.launch_url, after.send_names) == ("https://tool.example/v2", False)
    edit = client.get(f"/ops/clients/{after.client_id}/")
    assert edit.status_code == 303 and edit.headers["Location"] == "/ops/lti-tools/quizzer/"


def test_an_exams_lti_settings_are_edited_on_its_page_and_refused_for_a_vendors(ops):
    client = logged_in(ops, "operator", "secret")
    post(client, "/ops/lti-tools/new/", **TOOL)
    lti_client = registration(ops).client_id
    answer = post(client, "/ops/tools/new/", slug="algebra", client=str(lti_client), name="Algebra",
                  deadline_minutes="60", launch_url="https://tool.example/algebra",
                  custom="chapter=3\nlevel=hard", score_maximum="20")  # fmt: skip
    assert answer.status_code == 303
    with ops.extensions["db"].session() as session:
        exam = session.scalar(select(Exam).where(Exam.slug == "algebra"))
        item = session.scalar(select(LineItem).where(LineItem.default_for == exam.id))
        assert (exam.launch_url, json.loads(exam.custom), item.score_maximum) == (
            "https://tool.example/algebra", {"chapter": "3", "level": "hard"}, 20)  # fmt: skip
        vendor_id = session.scalar(select(Client.id).where(Client.name == "vendor"))
    page = client.get(f"/ops/tools/{exam.id}/").data.decode()
    assert "chapter=3" in page and "https://tool.example/algebra" in page and 'value="20' in page
    refused = post(client, "/ops/tools/new/", slug="word", client=str(vendor_id), name="Word", deadline_minutes="60",
                   launch_url="https://tool.example/word")  # fmt: skip
    assert refused.status_code == 400 and "is a vendor" in refused.data.decode()


def test_a_refused_token_request_is_shown_on_the_tools_page(ops):
    client = logged_in(ops, "operator", "secret")
    post(client, "/ops/lti-tools/new/", **TOOL)
    refused = ops.test_client().post("/lti/1.3/token", data={"grant_type": "password"})
    assert refused.status_code == 400 and refused.json["error"] == "unsupported_grant_type"
    unknown = ops.test_client().get("/lti/1.3/authorize", query_string={"client_id": "nobody"})
    assert unknown.status_code == 400
    page = client.get("/ops/lti-tools/").data.decode()
    assert "client_id is not the client_id of a registered LTI tool" in page


def test_the_default_line_item_follows_the_exams_slug(ops):
    with ops.extensions["db"].session() as session:
        client = add_client(session, "other")
        exam = Exam(client=client, slug="a", name="A")
        session.add(exam)
        item = grades.set_default(session, exam, score_maximum=5)
        assert (item.resource_link_id, item.score_maximum) == ("a", 5)


# ---- the commands' refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, error",
    [(["lti-tools", "add", "vendor", "--login-url", "https://t.example/l", "--launch-url", "https://t.example/x",
       "--jwks-url", "https://t.example/j"], "taken by an API v2 client"),
     (["lti-tools", "add", "t", "--login-url", "https://t.example/l", "--launch-url", "https://t.example/x"],
      "exactly one of --jwks-url and --public-key-file"),
     (["tools", "add", "word", "--client", "vendor", "--name", "Word", "--score-maximum", "5"], "is a vendor"),
     (["tools", "add", "word", "--client", "vendor", "--name", "Word", "--custom", "x"], "is a vendor")],
    ids=["vendor-name", "no-key", "vendor-score-maximum", "vendor-custom"],
)  # fmt: skip
def test_a_command_that_cannot_save_says_why_and_saves_nothing(ops, args, error):
    result = ops.test_cli_runner().invoke(args=args)
    assert result.exit_code == 2 and error in result.output
    with ops.extensions["db"].session() as session:
        assert session.scalar(select(LtiRegistration)) is None and session.scalar(select(Exam)) is None


def test_lti_keys_rotate_makes_a_new_current_key(ops):
    result = ops.test_cli_runner().invoke(args=["lti-keys", "rotate"])
    assert result.exit_code == 0 and "is current" in result.output
    with ops.extensions["db"].session() as session:
        [key] = session.scalars(select(PlatformKey)).all()
        assert key.kid in result.output and key.retired is None
