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
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from helpers import HAPPY_LOG, forge_signature
from lti_support import TOOL_NAME, REDIS_URL, LtiSystem, launch_form, running_lti_system
from portal_support import empty_redis
from sqlalchemy import select

from webapp.config import settings
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
from webapp.models import Exam, ToolCall, ToolCallResult

pytestmark = pytest.mark.process


@pytest.fixture(scope="module", name="lti")
def lti_fixture(tmp_path_factory) -> Iterator[LtiSystem]:
    with empty_redis(REDIS_URL), running_lti_system(tmp_path_factory.mktemp("lti")) as system:
        yield system


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def add_exam(lti: LtiSystem, *options: str) -> str:
    slug = unique("exam")
    lti.cli("tools", "add", slug, "--client", TOOL_NAME, "--name", f"Exam {slug}", *options)
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
