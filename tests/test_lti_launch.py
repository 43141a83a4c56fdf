"""LTI 1.3 launches end to end: the portal and a PyLTI1p3 tool as real servers on two hosts.

A candidate logs in, presses Start, and the browser goes portal → the tool's login → the portal's
authorization → the tool's launch; the tool checks the id_token with PyLTI1p3 and records what it
got. The tool then gets an access token with its client assertion, publishes a score (which
finishes the attempt), and reads results, line items and members. Deep linking adds exams. The
checks PyLTI1p3 never makes a platform face -- a replayed hint, another user's hint, a wrong
redirect_uri, a forged or expired id_token, an unknown key -- are made here by hand.

The servers run once for the module (starting them is most of the time); each test makes its own
users and exams.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from helpers import HAPPY_LOG, forge_signature
from lti_support import (
    PORTAL_SECRET,
    REDIS_URL,
    TOOL_NAME,
    Browser,
    LtiSystem,
    csrf_of,
    forms,
    launch_form,
    running_lti_system,
)
from portal_support import empty_redis
from sqlalchemy import select

from webapp.lti import keys
from webapp.lti.models import LineItem, Score
from webapp.lti.vocabulary import (
    AGS_ENDPOINT,
    CONTEXT,
    CUSTOM,
    DEPLOYMENT_ID,
    INSTRUCTOR,
    LEARNER,
    MESSAGE_TYPE,
    NRPS,
    RESOURCE_LINK,
    ROLES,
    SCOPES,
    TARGET_LINK_URI,
    VERSION,
)
from webapp.models import Exam, ToolCall

pytestmark = pytest.mark.process


@pytest.fixture(scope="module", name="lti")
def lti_fixture(tmp_path_factory) -> Iterator[LtiSystem]:
    with empty_redis(REDIS_URL), running_lti_system(tmp_path_factory.mktemp("lti")) as system:
        yield system


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def add_exam(lti: LtiSystem, *options: str) -> str:
    """A new exam of the tool: through ``tools add`` when there are options, else saved directly."""
    slug = unique("exam")
    if options:
        lti.cli("tools", "add", slug, "--client", TOOL_NAME, "--name", f"Exam {slug}", *options)
    else:
        lti.add_exam(slug)
    return slug


def attempt(lti: LtiSystem, slug: str) -> ToolCall:
    with lti.database() as database, database.session() as session:
        [toolcall] = session.scalars(select(ToolCall).join(ToolCall.tool).where(Exam.slug == slug)).all()
        toolcall.log  # loaded while the session is open  # noqa: B018
        toolcall.results  # noqa: B018
        return toolcall


def launches_of(lti: LtiSystem, sub: str) -> list[dict]:
    return [r["claims"] for r in lti.records("launch") if r["claims"]["sub"] == sub]


# ---- the happy path ---------------------------------------------------------------------------------


def test_a_candidate_is_launched_publishes_a_score_and_the_attempt_finishes(lti):
    with lti.logs_on_failure():
        slug = add_exam(lti, "--custom", "chapter=3", "--score-maximum", "10")
        name = unique("cand")
        sub = lti.add_user(name, "pw", first_name="Uma", last_name="User", email="uma@example.org")
        admin_sub = lti.add_user(unique("admin"), "pw", admin=True)
        browser = lti.browser(name, "pw")

        page = browser.launch(lti.portal_url, slug)
        assert page.status_code == 200 and "Hello Uma" in page.text, page.text[:500]
        [claims] = launches_of(lti, sub)
        config = lti.registration
        assert (claims["iss"], claims["aud"], claims["azp"]) == (
            lti.portal_url,
            config["client_id"],
            config["client_id"],
        )
        assert claims["exp"] - claims["iat"] <= 300
        assert claims[MESSAGE_TYPE] == "LtiResourceLinkRequest" and claims[VERSION] == "1.3.0"
        assert claims[DEPLOYMENT_ID] == config["deployment_id"]
        assert claims[TARGET_LINK_URI] == f"{lti.tool_url}/launch"
        assert claims[ROLES] == [LEARNER]
        assert claims[RESOURCE_LINK] == {"id": slug, "title": f"Exam {slug}"}
        assert (claims[CONTEXT]["id"], claims[CONTEXT]["title"]) == (slug, f"Exam {slug}")
        assert claims[CUSTOM] == {"chapter": "3", "toolcall_attempt": "1", "toolcall_extra_time": "false"}
        assert (claims["given_name"], claims["family_name"], claims["email"]) == (
            "Uma",
            "User",
            "uma@example.org",
        )
        ags = claims[AGS_ENDPOINT]
        assert ags["lineitems"] == f"{lti.portal_url}/lti/1.3/contexts/{slug}/lineitems"
        assert ags["lineitem"].startswith(ags["lineitems"] + "/") and set(ags["scope"]) == set(SCOPES[:4])
        assert claims[NRPS] == {
            "context_memberships_url": f"{lti.portal_url}/lti/1.3/contexts/{slug}/memberships",
            "service_versions": ["2.0"],
        }
        toolcall = attempt(lti, slug)
        assert [e.status for e in toolcall.log] == HAPPY_LOG[:3]
        assert f"posted to {lti.tool_url}/launch" in toolcall.log[-1].details

        done = browser.submit(page, score="8")
        assert done.status_code == 200 and "Score sent" in done.text, done.text[:500]
        [finished] = [r for r in lti.records("finished") if any(g["userId"] == sub for g in r["grades"])]
        [grade] = finished["grades"]
        assert (grade["resultScore"], grade["resultMaximum"], grade["comment"]) == (8.0, 10, "well done")
        [line_item] = finished["lineitems"]
        assert (line_item["label"], line_item["scoreMaximum"], line_item["resourceLinkId"]) == (
            f"Exam {slug}",
            10,
            slug,
        )
        members = {m["user_id"]: m for m in finished["members"]}
        assert members[sub]["roles"] == [LEARNER] and members[sub]["name"] == "Uma User"
        assert members[admin_sub]["roles"] == [INSTRUCTOR]
        assert all(m["status"] == "Active" for m in members.values())

        toolcall = attempt(lti, slug)
        assert toolcall.status == "finished-ok" and [e.status for e in toolcall.log] == HAPPY_LOG
        assert "AGS score" in toolcall.log[3].details and "8/10" in toolcall.log[3].details
        [result] = toolcall.results
        with lti.database() as database, database.session() as session:
            [score] = session.scalars(select(Score).where(Score.toolcall_id == toolcall.id)).all()
        assert result.data == score.data and json.loads(result.data)["scoreGiven"] == 8
        assert (result.persnr, result.score, result.passed, result.late) == (sub, 8, True, False)


def test_lti_tools_add_json_prints_exactly_the_one_configuration_object(lti):
    printed = lti.cli("lti-tools", "add", unique("other"), "--login-url", "https://t.example/login",
                      "--launch-url", "https://t.example/launch", "--jwks-url", "https://t.example/jwks",
                      "--json")  # fmt: skip
    config = json.loads(printed)
    assert printed.strip().count("\n") == 0
    issuer = lti.portal_url
    assert config == {
        "issuer": issuer, "client_id": config["client_id"], "deployment_id": config["deployment_id"],
        "auth_login_url": f"{issuer}/lti/1.3/authorize", "auth_token_url": f"{issuer}/lti/1.3/token",
        "key_set_url": f"{issuer}/lti/1.3/jwks.json", "auth_audience": None,
    }  # fmt: skip
    assert config["client_id"] != lti.registration["client_id"]


# ---- the authorization's refusals --------------------------------------------------------------------


def authorize_url(browser, lti: LtiSystem, slug: str) -> str:
    """Press Start and follow the redirects by hand up to the portal's authorization, unvisited."""
    page = browser.get(f"{lti.portal_url}/tooluser/tools/{slug}/", timeout=30)
    answer = browser.post(f"{lti.portal_url}/tooluser/tools/{slug}/", data={"csrf_token": csrf_of(page.text)},
                          allow_redirects=False, timeout=30)  # fmt: skip
    assert answer.status_code == 303 and answer.headers["Location"].startswith(f"{lti.tool_url}/login?")
    login = browser.get(answer.headers["Location"], allow_redirects=False, timeout=30)
    assert login.status_code == 302, login.text[:300]
    assert login.headers["Location"].startswith(f"{lti.portal_url}/lti/1.3/authorize?")
    return login.headers["Location"]


def candidate(lti: LtiSystem):
    name = unique("cand")
    sub = lti.add_user(name, "pw", first_name="Cora")
    return sub, lti.browser(name, "pw")


def status_of(lti: LtiSystem, slug: str) -> str:
    return attempt(lti, slug).status


def test_a_second_use_of_the_launch_hint_is_refused_back_to_the_tool(lti):
    slug = add_exam(lti)
    _, browser = candidate(lti)
    url = authorize_url(browser, lti, slug)
    first = launch_form(browser.get(url, timeout=30))
    assert "id_token" in first.fields
    again = launch_form(browser.get(url, timeout=30))
    assert again.action == f"{lti.tool_url}/launch"
    assert again.fields["error"] == "invalid_request_object" and "id_token" not in again.fields
    assert again.fields["state"] == parse_qs(urlsplit(url).query)["state"][0]
    assert [e.status for e in attempt(lti, slug).log] == HAPPY_LOG[:3]  # launched once


def test_a_redirect_uri_that_is_not_registered_gets_a_page_and_the_hint_stays_good(lti):
    slug = add_exam(lti)
    _, browser = candidate(lti)
    url = authorize_url(browser, lti, slug)
    query = parse_qs(urlsplit(url).query)
    query["redirect_uri"] = ["https://evil.example/launch"]
    refused = browser.get(
        f"{lti.portal_url}/lti/1.3/authorize", params={k: v[0] for k, v in query.items()}, timeout=30
    )
    assert refused.status_code == 400 and "redirect_uri" in refused.text
    assert "evil.example" not in "".join(f.action for f in forms(refused.text))
    assert status_of(lti, slug) == "start-tk-sent"
    page = browser.submit(browser.get(url, timeout=30))  # the genuine request still launches
    assert "Hello Cora" in page.text


def test_another_users_login_hint_is_refused_and_does_not_burn_the_launch(lti):
    slug = add_exam(lti)
    _, owner = candidate(lti)
    _, intruder = candidate(lti)
    url = authorize_url(owner, lti, slug)
    refused = launch_form(intruder.get(url, timeout=30))
    assert refused.fields["error"] == "login_required" and "id_token" not in refused.fields
    anonymous = Browser()
    nobody = launch_form(anonymous.get(url, timeout=30))
    assert nobody.fields["error"] == "login_required"
    assert (
        anonymous.get(f"{lti.portal_url}/", allow_redirects=False, timeout=30).status_code == 302
    )  # not logged in
    assert status_of(lti, slug) == "start-tk-sent"
    assert "Hello Cora" in owner.submit(owner.get(url, timeout=30)).text


def test_an_unknown_client_id_gets_a_page(lti):
    answer = requests.get(
        f"{lti.portal_url}/lti/1.3/authorize",
        params={"client_id": "nobody", "redirect_uri": f"{lti.tool_url}/launch"},
        timeout=30,
    )
    assert (
        answer.status_code == 400
        and "unauthorized_client" in answer.text
        and "lti-form-post" not in answer.text
    )


# ---- the id_token, judged by the tool ------------------------------------------------------------------


def genuine_launch(lti: LtiSystem):
    """A candidate's browser at the portal's launch page (not yet posted) and its form."""
    slug = add_exam(lti)
    sub, browser = candidate(lti)
    page = browser.start(lti.portal_url, slug)
    return browser, launch_form(page)


def post_to_tool(browser, form, id_token: str) -> requests.Response:
    return browser.post(form.action, data={"id_token": id_token, "state": form.fields["state"]}, timeout=30)


def portal_config() -> dict:
    return {"SECRET_KEY": PORTAL_SECRET, "SECRET_KEY_FALLBACKS": [],
            "TOOLCALL_LTI_KEY_OVERLAP_DAYS": 7}  # fmt: skip


def test_an_id_token_with_a_flipped_signature_bit_is_refused_by_the_tool(lti):
    browser, form = genuine_launch(lti)
    refused = post_to_tool(browser, form, forge_signature(form.fields["id_token"], sep="."))
    assert refused.status_code == 400 and "decode id_token" in refused.text


def test_an_id_token_whose_claims_were_changed_is_refused_by_the_tool(lti):
    browser, form = genuine_launch(lti)
    header, payload, signature = form.fields["id_token"].split(".")
    claims = jwt.decode(form.fields["id_token"], options={"verify_signature": False})
    claims[ROLES] = [INSTRUCTOR]
    changed = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    refused = post_to_tool(browser, form, f"{header}.{changed}.{signature}")
    assert refused.status_code == 400 and "decode id_token" in refused.text


def test_an_expired_id_token_signed_with_the_platforms_key_is_refused_by_the_tool(lti):
    browser, form = genuine_launch(lti)
    claims = jwt.decode(form.fields["id_token"], options={"verify_signature": False})
    claims.update(iat=int(time.time()) - 900, exp=int(time.time()) - 600)
    with lti.database() as database, database.session() as session:
        expired = keys.sign(session, portal_config(), claims)
    refused = post_to_tool(browser, form, expired)
    assert refused.status_code == 400 and "expired" in refused.text


def test_an_id_token_signed_with_a_key_of_unknown_kid_is_refused_by_the_tool(lti):
    browser, form = genuine_launch(lti)
    claims = jwt.decode(form.fields["id_token"], options={"verify_signature": False})
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims, stranger, algorithm="RS256", headers={"kid": "not-a-platform-key"})
    refused = post_to_tool(browser, form, forged)
    assert refused.status_code == 400 and "Unable to find public key" in refused.text


# ---- key rotation ---------------------------------------------------------------------------------------


def test_after_a_rotation_launches_are_signed_with_the_new_key_and_the_old_one_stays_published(lti):
    before = requests.get(f"{lti.portal_url}/lti/1.3/jwks.json", timeout=30).json()["keys"]
    printed = lti.cli("lti-keys", "rotate")
    after = requests.get(f"{lti.portal_url}/lti/1.3/jwks.json", timeout=30).json()["keys"]
    new = [key for key in after if key["kid"] not in {k["kid"] for k in before}]
    assert len(new) == 1 and new[0]["kid"] in printed
    assert {k["kid"] for k in before} < {k["kid"] for k in after}
    assert all(set(k) >= {"kty", "kid", "alg", "use", "n", "e"} and "d" not in k for k in after)
    browser, form = genuine_launch(lti)
    assert jwt.get_unverified_header(form.fields["id_token"])["kid"] == new[0]["kid"]
    assert "Hello Cora" in post_to_tool(browser, form, form.fields["id_token"]).text


# ---- deep linking --------------------------------------------------------------------------------------


def exams_named(lti: LtiSystem, *names: str) -> list[Exam]:
    with lti.database() as database, database.session() as session:
        found = session.scalars(select(Exam).where(Exam.name.in_(names)).order_by(Exam.id)).all()
        return [
            (exam, session.scalar(select(LineItem).where(LineItem.default_for == exam.id))) for exam in found
        ]


def test_an_admin_adds_exams_from_the_tool_by_deep_linking_and_a_replay_adds_nothing(lti):
    name = unique("admin")
    lti.add_user(name, "pw", admin=True, first_name="Ada")
    admin = lti.browser(name, "pw")
    page = admin.get(f"{lti.portal_url}/ops/lti-tools/{TOOL_NAME}/deep-link/", timeout=30)
    assert forms(page.text)[0].action == "" and forms(page.text)[0].method == "post"  # its first form
    launch_page = admin.submit(page)
    choose = admin.submit(launch_page)
    assert "Choose exams" in choose.text, choose.text[:300]
    [claims] = [r["claims"] for r in lti.records("launch") if r["claims"]["given_name"] == "Ada"]
    settings_ = claims["https://purl.imsglobal.org/spec/lti-dl/claim/deep_linking_settings"]
    assert claims[MESSAGE_TYPE] == "LtiDeepLinkingRequest" and claims[ROLES] == [INSTRUCTOR]
    assert settings_["deep_link_return_url"] == f"{lti.portal_url}/lti/1.3/deep-linking/return"
    assert (settings_["accept_types"], settings_["accept_presentation_document_targets"]) == (
        ["ltiResourceLink"],
        ["window"],
    )
    assert settings_["accept_multiple"] is True and settings_["data"]

    response = admin.submit(choose)  # the tool's self-posting form with the JWT
    [form] = forms(response.text)
    before = len(exams_named(lti, "Algebra quiz", "Geometry quiz"))
    added = admin.submit(response)
    assert added.status_code == 200 and "Algebra quiz" in added.text and "Geometry quiz" in added.text
    created = exams_named(lti, "Algebra quiz", "Geometry quiz")[before:]
    (algebra, algebra_item), (geometry, geometry_item) = created
    assert algebra.launch_url == f"{lti.tool_url}/launch?quiz=algebra"  # launches go there: its redirect_uri
    assert json.loads(algebra.custom) == {"quiz": "algebra"}
    assert (algebra_item.score_maximum, algebra_item.label) == (20, "Algebra")
    assert (geometry_item.score_maximum, geometry_item.label) == (100, None)

    replay = admin.post(form.action, data=form.fields, timeout=30)
    assert replay.status_code == 400 and "Nothing was added" in replay.text
    tampered = admin.post(form.action, data={"JWT": forge_signature(form.fields["JWT"], sep=".")}, timeout=30)
    assert tampered.status_code == 400 and "Nothing was added" in tampered.text
    assert len(exams_named(lti, "Algebra quiz", "Geometry quiz")) == before + 2

    sub, browser = candidate(lti)  # the new exam launches with its custom parameters
    assert "Hello Cora" in browser.launch(lti.portal_url, algebra.slug).text
    [launched] = launches_of(lti, sub)
    assert launched[CUSTOM]["quiz"] == "algebra" and launched[RESOURCE_LINK]["title"] == "Algebra quiz"


def test_the_deep_linking_page_is_for_admins_only(lti):
    _, browser = candidate(lti)
    page = browser.get(f"{lti.portal_url}/ops/lti-tools/{TOOL_NAME}/deep-link/", timeout=30)
    assert page.status_code == 403


def test_the_authorization_request_may_come_as_a_post(lti):
    slug = add_exam(lti)
    _, browser = candidate(lti)
    url = authorize_url(browser, lti, slug)
    fields = {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}
    page = browser.post(f"{lti.portal_url}/lti/1.3/authorize", data=fields, timeout=30)
    assert "id_token" in launch_form(page).fields
    assert "Hello Cora" in browser.submit(page).text
