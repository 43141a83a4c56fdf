"""The LTI services over HTTP against the real portal: the token endpoint, AGS and NRPS.

The requests a well-behaved PyLTI1p3 tool makes are in test_lti_launch.py; here the tool's side is
played by hand -- client assertions signed with the tool's own key (PyJWT), bare HTTP -- to make
the requests a library never makes: a reused jti, an unknown kid, an expired or far-reaching
assertion, a missing scope, another tool's context, a wrong media type, a stale score. Paging is
followed the way PyLTI1p3 follows it, with the whole Link header lower-cased.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from helpers import HAPPY_LOG
from lti_support import REDIS_URL, TOOL_NAME, LtiSystem, running_lti_system
from portal_support import empty_redis
from sqlalchemy import func, select

from webapp.lti import registrations
from webapp.lti.models import Score
from webapp.lti.vocabulary import (
    INSTRUCTOR,
    LEARNER,
    MEDIA_LINEITEM,
    MEDIA_LINEITEMS,
    MEDIA_MEMBERSHIPS,
    MEDIA_RESULTS,
    MEDIA_SCORE,
    SCOPE_LINEITEM_READONLY,
    SCOPE_MEMBERSHIPS,
    SCOPE_RESULT_READONLY,
    SCOPE_SCORE,
    SCOPES,
)
from webapp.models import Exam, ToolCall, ToolCallResult

pytestmark = pytest.mark.process
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture(scope="module", name="lti")
def lti_fixture(tmp_path_factory) -> Iterator[LtiSystem]:
    with empty_redis(REDIS_URL), running_lti_system(tmp_path_factory.mktemp("lti")) as system:
        yield system


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ---- the tool's side, by hand ---------------------------------------------------------------------------


def tool_kid(lti: LtiSystem) -> str:
    [key] = requests.get(f"{lti.tool_url}/jwks", timeout=30).json()["keys"]
    return key["kid"]


def assertion(lti: LtiSystem, key=None, kid: str | None = None, **changes) -> str:
    now = int(time.time())
    client_id = lti.registration["client_id"]
    claims = {"iss": client_id, "sub": client_id, "aud": lti.registration["auth_token_url"], "iat": now,
              "exp": now + 60, "jti": uuid.uuid4().hex}  # fmt: skip
    claims.update(changes)
    return jwt.encode(claims, key or lti.tool_key.private_pem, algorithm="RS256",
                      headers={"kid": kid or tool_kid(lti)})  # fmt: skip


def ask_token(lti: LtiSystem, signed: str, scope: str | None = " ".join(SCOPES), **form) -> requests.Response:
    data = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": signed,
    }
    if scope is not None:
        data["scope"] = scope
    data.update(form)
    return requests.post(lti.registration["auth_token_url"], data=data, timeout=30)


def access(lti: LtiSystem, *scopes: str) -> str:
    answer = ask_token(lti, assertion(lti), " ".join(scopes or SCOPES))
    assert answer.status_code == 200, answer.text
    return answer.json()["access_token"]


def call(method: str, url: str, token: str | None, body=None, media: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        data = json.dumps(body) if not isinstance(body, str | bytes) else body
        headers["Content-Type"] = media or "application/json"
    return requests.request(method, url, headers=headers, data=data, timeout=30)


def context(lti: LtiSystem, slug: str) -> str:
    return f"{lti.portal_url}/lti/1.3/contexts/{slug}"


def launched(lti: LtiSystem, slug: str | None = None) -> tuple[str, str, str]:
    """An exam of the tool and a candidate launched into it: (slug, sub, the exam's line item URL)."""
    slug = slug or unique("exam")
    lti.add_exam(slug)
    name = unique("cand")
    sub = lti.add_user(name, "pw", first_name="Cy", last_name="Candidate")
    browser = lti.browser(name, "pw")
    assert "Hello Cy" in browser.launch(lti.portal_url, slug).text
    [claims] = [r["claims"] for r in lti.records("launch") if r["claims"]["sub"] == sub]
    return slug, sub, claims["https://purl.imsglobal.org/spec/lti-ags/claim/endpoint"]["lineitem"]


def score(
    sub: str, given: float | None = 7, at: datetime | None = None, grading: str = "FullyGraded"
) -> dict:
    body = {"userId": sub, "activityProgress": "Completed", "gradingProgress": grading,
            "timestamp": (at or datetime.now(UTC)).isoformat()}  # fmt: skip
    if given is not None:
        body.update(scoreGiven=given, scoreMaximum=10)
    return body


def status_and_log(lti: LtiSystem, slug: str) -> tuple[str, list[str], int, int]:
    with lti.database() as database, database.session() as session:
        toolcall = session.scalar(select(ToolCall).join(ToolCall.tool).where(Exam.slug == slug))
        results = session.scalar(select(func.count()).where(ToolCallResult.toolcall_id == toolcall.id))
        scores = session.scalar(select(func.count()).where(Score.toolcall_id == toolcall.id))
        return toolcall.status, [entry.status for entry in toolcall.log], results, scores


# ---- the token endpoint ----------------------------------------------------------------------------------


def test_a_client_assertion_gets_a_bearer_token_with_the_scopes_asked_for(lti):
    answer = ask_token(
        lti, assertion(lti), f"{SCOPE_SCORE} {SCOPE_RESULT_READONLY} https://example.org/other"
    )
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store"
    body = answer.json()
    assert (body["token_type"], body["expires_in"]) == ("Bearer", 3600)
    assert set(body["scope"].split()) == {SCOPE_SCORE, SCOPE_RESULT_READONLY}
    everything = ask_token(lti, assertion(lti), scope=None).json()
    assert set(everything["scope"].split()) == set(SCOPES)


def test_a_reused_jti_is_refused(lti):
    signed = assertion(lti)
    assert ask_token(lti, signed).status_code == 200
    again = ask_token(lti, signed)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    "case",
    [
        "unknown kid",
        "stranger's key",
        "expired",
        "wrong aud",
        "unknown iss",
        "sub is not the client",
        "HS256",
    ],
)
def test_a_client_assertion_that_does_not_verify_is_invalid_client(lti, case):
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    signed = {
        "unknown kid": lambda: assertion(lti, kid="no-such-kid"),
        "stranger's key": lambda: assertion(lti, key=stranger),
        "expired": lambda: assertion(lti, iat=now - 600, exp=now - 300),
        "wrong aud": lambda: assertion(lti, aud="https://elsewhere.example/token"),
        "unknown iss": lambda: assertion(lti, iss="nobody", sub="nobody"),
        "sub is not the client": lambda: assertion(lti, sub="someone-else"),
        "HS256": lambda: jwt.encode(
            {"iss": lti.registration["client_id"]},
            "a shared secret of at least thirty-two bytes",
            algorithm="HS256",
        ),
    }[case]()
    answer = ask_token(lti, signed)
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_client", answer.text


def test_an_assertion_reaching_more_than_five_minutes_ahead_is_refused(lti):
    answer = ask_token(lti, assertion(lti, exp=int(time.time()) + 3600))
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"


def test_the_token_endpoints_other_errors_are_rfc_6749s(lti):
    grant = ask_token(lti, assertion(lti), grant_type="password")
    assert grant.status_code == 400 and grant.json()["error"] == "unsupported_grant_type"
    scope = ask_token(lti, assertion(lti), "https://example.org/unknown")
    assert scope.status_code == 400 and scope.json()["error"] == "invalid_scope"


# ---- access to the services -----------------------------------------------------------------------------


def test_a_service_without_a_live_token_is_401(lti):
    slug, _, _ = launched(lti)
    for token in (None, "not-a-token"):
        answer = call("GET", f"{context(lti, slug)}/lineitems", token)
        assert answer.status_code == 401 and answer.json()["error"] == "invalid_token"
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_missing_scope_is_403_and_changes_nothing(lti):
    slug, sub, item = launched(lti)
    token = access(lti, SCOPE_LINEITEM_READONLY)
    answer = call("POST", f"{item}/scores", token, score(sub), MEDIA_SCORE)
    assert answer.status_code == 403 and answer.json()["error"] == "insufficient_scope"
    assert call("GET", f"{context(lti, slug)}/memberships", token).status_code == 403
    assert status_and_log(lti, slug)[0] == "start-data-sent"


def test_another_tools_context_is_403(lti):
    slug, sub, item = launched(lti)
    other = unique("other")
    lti.cli("lti-tools", "add", other, "--login-url", "https://o.example/login", "--launch-url",
            "https://o.example/launch", "--public-key-file", f"{lti.tool_key.path}.pub", "--json")  # fmt: skip
    with lti.database() as database, database.session() as session:
        other_client_id = registrations.by_name(session, other).lti_client_id
    signed = assertion(lti, iss=other_client_id, sub=other_client_id)  # PEM registration: any kid
    answer = ask_token(lti, signed)
    assert answer.status_code == 200, answer.text
    token = answer.json()["access_token"]
    refused = call("POST", f"{item}/scores", token, score(sub), MEDIA_SCORE)
    assert refused.status_code == 403 and "another tool" in refused.json()["error_description"]


def test_a_score_in_another_media_type_is_415(lti):
    slug, sub, item = launched(lti)
    token = access(lti)
    answer = call("POST", f"{item}/scores", token, score(sub), "application/json")
    assert answer.status_code == 415
    item_answer = call(
        "POST", f"{context(lti, slug)}/lineitems", token, {"label": "x", "scoreMaximum": 1}, "text/plain"
    )
    assert item_answer.status_code == 415
    assert status_and_log(lti, slug)[0] == "start-data-sent"


# ---- scores ----------------------------------------------------------------------------------------------


def test_a_score_not_later_than_the_last_is_409_and_changes_nothing(lti):
    slug, sub, item = launched(lti)
    token = access(lti)
    at = datetime.now(UTC)
    pending = call("POST", f"{item}/scores", token, score(sub, 3, at, grading="Pending"), MEDIA_SCORE)
    assert pending.status_code == 204
    for when in (at, at - timedelta(seconds=1)):
        stale = call("POST", f"{item}/scores", token, score(sub, 9, when), MEDIA_SCORE)
        assert stale.status_code == 409 and stale.json()["error"] == "conflict"
    assert status_and_log(lti, slug) == ("start-data-sent", HAPPY_LOG[:3], 0, 1)
    [result] = call("GET", f"{item}/results", token).json()
    assert result["resultScore"] == 3


def test_pending_scores_are_kept_the_first_fully_graded_finishes_and_a_later_one_is_stored_late(lti):
    slug, sub, item = launched(lti)
    token = access(lti)
    at = datetime.now(UTC)
    assert (
        call("POST", f"{item}/scores", token, score(sub, None, at, "Pending"), MEDIA_SCORE).status_code == 204
    )
    assert status_and_log(lti, slug) == ("start-data-sent", HAPPY_LOG[:3], 0, 1)
    graded = score(sub, 6, at + timedelta(seconds=1))
    assert call("POST", f"{item}/scores", token, graded, MEDIA_SCORE).status_code == 204
    assert status_and_log(lti, slug) == ("finished-ok", HAPPY_LOG, 1, 2)
    regraded = call("POST", f"{item}/scores", token, score(sub, 9, at + timedelta(seconds=2)), MEDIA_SCORE)
    assert regraded.status_code == 204
    assert status_and_log(lti, slug) == ("finished-ok", HAPPY_LOG, 2, 3)
    with lti.database() as database, database.session() as session:
        stored = session.scalars(
            select(ToolCallResult)
            .join(ToolCall)
            .join(ToolCall.tool)
            .where(Exam.slug == slug)
            .order_by(ToolCallResult.id)
        ).all()
    assert [(json.loads(r.data)["scoreGiven"], r.late) for r in stored] == [(6, False), (9, True)]
    assert json.loads(stored[0].data) == graded  # verbatim
    [result] = call("GET", f"{item}/results", token).json()
    assert (result["userId"], result["resultScore"], result["resultMaximum"]) == (sub, 9, 10)


def test_a_score_for_someone_who_is_not_a_member_is_400(lti):
    slug, _, item = launched(lti)
    stranger = lti.add_user(unique("stranger"), "pw")
    answer = call("POST", f"{item}/scores", access(lti), score(stranger), MEDIA_SCORE)
    assert answer.status_code == 400 and "member" in answer.json()["error_description"]


@pytest.mark.parametrize(
    "change",
    [{"timestamp": "yesterday"}, {"timestamp": "2026-01-01T00:00:00"}, {"timestamp": "9999-12-31T23:30:00-05:00"},
     {"gradingProgress": "Done"}, {"scoreGiven": -1}, {"scoreGiven": 1e300}, {"scoreMaximum": None},
     {"userId": None}],
    ids=["not-a-time", "no-offset", "past-year-9999", "grading", "negative", "huge", "no-maximum", "no-user"],
)  # fmt: skip
def test_an_invalid_score_is_400(lti, change):
    slug, sub, item = launched(lti)
    body = {key: value for key, value in {**score(sub), **change}.items() if value is not None}
    answer = call("POST", f"{item}/scores", access(lti), body, MEDIA_SCORE)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_request"


# ---- line items, results and members, paged --------------------------------------------------------------


def follow_lowercased(answer: requests.Response) -> str | None:
    """The next page's URL as PyLTI1p3 reads it: the whole Link header lower-cased."""
    link = answer.headers.get("Link", "").lower()
    if 'rel="next"' not in link:
        return None
    return link.split("<", 1)[1].split(">", 1)[0]


def test_line_items_are_made_changed_listed_by_page_and_deleted(lti):
    slug, _, own = launched(lti, slug=unique("Exam-UPPER"))
    token = access(lti)
    made = []
    for n in range(3):
        answer = call("POST", f"{context(lti, slug)}/lineitems", token,
                      {"label": f"Part {n}", "scoreMaximum": 5, "tag": "Part", "resourceId": f"R{n}"}, MEDIA_LINEITEM)  # fmt: skip
        assert answer.status_code == 201 and answer.headers["Content-Type"].startswith(MEDIA_LINEITEM)
        made.append(answer.json())
    changed = call(
        "PUT", made[0]["id"], token, {**made[0], "label": "Part zero", "scoreMaximum": 8}, MEDIA_LINEITEM
    )
    assert (changed.json()["label"], changed.json()["scoreMaximum"]) == ("Part zero", 8)

    url, seen = f"{context(lti, slug)}/lineitems?limit=2", []
    while url:
        page = call("GET", url, token)
        assert page.status_code == 200 and page.headers["Content-Type"].startswith(MEDIA_LINEITEMS)
        seen += page.json()
        url = follow_lowercased(page)
    assert [item["id"] for item in seen] == [own] + [item["id"] for item in made]
    tagged = call("GET", f"{context(lti, slug)}/lineitems?tag=Part", token).json()
    assert len(tagged) == 3

    assert call("DELETE", made[2]["id"], token).status_code == 204
    assert call("GET", made[2]["id"], token).status_code == 404
    kept = call("DELETE", own, token)
    assert kept.status_code == 409 and call("GET", own, token).status_code == 200


def test_results_and_members_page_through_a_context_with_upper_case_in_its_name(lti):
    slug, sub, item = launched(lti, slug=unique("Exam-UPPER"))
    name = unique("cand")
    second = lti.add_user(name, "pw")
    lti.browser(name, "pw").launch(lti.portal_url, slug)
    token = access(lti)
    for who, given in ((sub, 4), (second, 5)):
        assert call("POST", f"{item}/scores", token, score(who, given), MEDIA_SCORE).status_code == 204

    url, results = f"{item}/results?limit=1", []
    while url:
        page = call("GET", url, token)
        assert page.headers["Content-Type"].startswith(MEDIA_RESULTS)
        results += page.json()
        url = follow_lowercased(page)
    assert sorted((r["userId"], r["resultScore"]) for r in results) == sorted([(sub, 4), (second, 5)])
    [mine] = call("GET", f"{item}/results?user_id={sub}", token).json()
    assert mine["userId"] == sub

    url, members = f"{context(lti, slug)}/memberships?limit=1", []
    while url:
        page = call("GET", url, token)
        assert page.headers["Content-Type"].startswith(MEDIA_MEMBERSHIPS)
        assert page.json()["context"]["id"] == slug
        members += page.json()["members"]
        url = follow_lowercased(page)
    learners = {m["user_id"]: m for m in members if m["roles"] == [LEARNER]}
    assert set(learners) == {sub, second}
    assert learners[sub]["given_name"] == "Cy" and learners[sub]["status"] == "Active"
    instructors = call("GET", f"{context(lti, slug)}/memberships?role=Instructor", token).json()["members"]
    assert all(m["roles"] == [INSTRUCTOR] for m in instructors)
    assert call("GET", f"{context(lti, slug)}/memberships", access(lti, SCOPE_MEMBERSHIPS)).status_code == 200


def test_a_tool_registered_without_names_gets_none(lti):
    slug, sub, _ = launched(lti)
    lti.cli("lti-tools", "add", TOOL_NAME, "--login-url", f"{lti.tool_url}/login", "--launch-url",
            f"{lti.tool_url}/launch", "--jwks-url", f"{lti.tool_url}/jwks", "--no-names", "--json")  # fmt: skip
    try:
        [member] = [m for m in call("GET", f"{context(lti, slug)}/memberships", access(lti)).json()["members"]
                    if m["user_id"] == sub]  # fmt: skip
        assert set(member) == {"user_id", "roles", "status"}
    finally:
        lti.cli("lti-tools", "add", TOOL_NAME, "--login-url", f"{lti.tool_url}/login", "--launch-url",
                f"{lti.tool_url}/launch", "--jwks-url", f"{lti.tool_url}/jwks")  # fmt: skip
