"""The user's side of the portal: logging in, the tools, starting an attempt (spec §1)."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
from helpers import HAPPY_LOG
from portal_support import (
    add_client,
    add_tool,
    add_user,
    csrf,
    logged_in,
)
from sqlalchemy import select

from webapp import lifecycle
from webapp.lifecycle import Status
from webapp.models import ToolCall, ToolCallLog


@pytest.fixture(name="portal")
def portal_fixture(app, redis_db):
    app.extensions["db"].upgrade()
    with app.extensions["db"].session() as session:
        client = add_client(session, "vendor")
        client.receive_start_token_url = "https://vendor.example/start/?lang=en"
        add_tool(session, client, "excel")
        add_user(session, "candidate", password="secret")
    return app


def start(client, slug="excel"):
    page = client.get(f"/tooluser/tools/{slug}/")
    return client.post(f"/tooluser/tools/{slug}/", data={"csrf_token": csrf(page.data)})


def attempts(app) -> list[ToolCall]:
    with app.extensions["db"].session() as session:
        return session.scalars(select(ToolCall).order_by(ToolCall.id)).all()


def test_pages_need_a_login(portal):
    response = portal.test_client().get("/")
    assert response.status_code == 302 and "/accounts/login/" in response.headers["Location"]


def test_a_wrong_password_and_an_unknown_user_get_the_same_answer(portal):
    client = portal.test_client()
    answers = []
    for username, password in [("candidate", "wrong"), ("nobody", "secret")]:
        token = csrf(client.get("/accounts/login/").data)
        response = client.post(
            "/accounts/login/", data={"username": username, "password": password, "csrf_token": token}
        )
        answers.append((response.status_code, b"Unknown username or wrong password." in response.data))
    assert answers == [(401, True), (401, True)]


def test_login_without_a_csrf_token_is_refused(portal):
    response = portal.test_client().post(
        "/accounts/login/", data={"username": "candidate", "password": "secret"}
    )
    assert response.status_code == 400


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example/", "/\\evil.example", "javascript:alert(1)"]
)
def test_login_does_not_redirect_off_site(portal, target):
    client = portal.test_client()
    token = csrf(client.get("/accounts/login/").data)
    response = client.post(
        "/accounts/login/", query_string={"next": target},
        data={"username": "candidate", "password": "secret", "csrf_token": token},
    )  # fmt: skip
    assert response.headers["Location"] == "/"


def test_login_goes_on_to_a_page_of_this_site(portal):
    client = portal.test_client()
    token = csrf(client.get("/accounts/login/").data)
    response = client.post(
        "/accounts/login/", query_string={"next": "/tooluser/attempts/"},
        data={"username": "candidate", "password": "secret", "csrf_token": token},
    )  # fmt: skip
    assert response.headers["Location"] == "/tooluser/attempts/"


def test_home_lists_the_tools_with_a_start_form_opening_a_new_window_without_opener(portal):
    html = logged_in(portal, "candidate", "secret").get("/").data.decode()
    form = re.search(r"<form[^>]*action=\"/tooluser/tools/excel/\"[^>]*>", html).group(0)
    assert 'method="post"' in form and 'target="_blank"' in form and 'rel="noopener"' in form
    assert 'name="csrf_token"' in html


def test_the_start_url_shows_the_same_form_on_get(portal):
    html = logged_in(portal, "candidate", "secret").get("/tooluser/tools/excel/").data.decode()
    assert 'action="/tooluser/tools/excel/"' in html and 'target="_blank"' in html
    assert attempts(portal) == []  # a GET changes nothing


def test_starting_issues_a_token_and_sends_the_user_to_the_vendor(portal, redis_db):
    response = start(logged_in(portal, "candidate", "secret"))
    assert response.status_code == 303
    location = urlsplit(response.headers["Location"])
    assert (location.scheme, location.netloc, location.path) == ("https", "vendor.example", "/start/")
    query = parse_qs(location.query)
    assert query["lang"] == ["en"] and len(query["access_token"][0]) >= 43
    [toolcall] = attempts(portal)
    assert toolcall.status == Status.START_TK_SENT
    assert portal.extensions["start_tokens"].peek(query["access_token"][0]) == toolcall.id


def test_a_new_attempt_supersedes_the_open_one(portal):
    client = logged_in(portal, "candidate", "secret")
    start(client)
    start(client)
    first, second = attempts(portal)
    assert (first.status, second.status) == (Status.FINISHED_ERR, Status.START_TK_SENT)
    assert (first.attempt, second.attempt) == (1, 2)
    with portal.extensions["db"].session() as session:
        last = session.scalars(select(ToolCallLog).where(ToolCallLog.toolcall_id == first.id)).all()[-1]
        assert last.status == "finished-err" and "superseded" in last.details


def test_a_tool_that_is_not_restartable_cannot_be_started_after_a_finished_attempt(portal):
    with portal.extensions["db"].session() as session:
        from webapp.models import Exam, User

        tool = session.scalar(select(Exam))
        tool.restartable = False
        toolcall = lifecycle.create(session, tool, session.scalar(select(User)))
        for status in HAPPY_LOG[1:]:
            lifecycle.advance(session, toolcall, (status, "test"))
    response = start(logged_in(portal, "candidate", "secret"))
    assert response.status_code == 409 and b"cannot be taken again" in response.data
    assert len(attempts(portal)) == 1


def test_the_attempts_page_lists_the_users_attempts_with_their_status(portal):
    client = logged_in(portal, "candidate", "secret")
    start(client)
    html = client.get("/tooluser/attempts/").data.decode()
    assert "start-tk-sent" in html and "Excel" in html


def test_the_attempts_page_shows_fifty_at_a_time_and_only_the_users_own(portal):
    from datetime import timedelta

    from webapp.models import Exam, User, utcnow

    with portal.extensions["db"].session() as session:
        other = add_user(session, "other")
        tool = session.scalar(select(Exam))
        me = session.scalar(select(User).where(User.username == "candidate"))
        start_at = utcnow() - timedelta(days=2)
        for i in range(55):
            lifecycle.create(session, tool, me).started = start_at + timedelta(minutes=i)
        lifecycle.create(session, tool, other)
    client = logged_in(portal, "candidate", "secret")
    first = client.get("/tooluser/attempts/").data.decode()
    older = re.search(r'rel="next" href="([^"]+)"', first).group(1).replace("&amp;", "&")
    second = client.get(older).data.decode()
    numbers = [
        re.findall(r'<tr class="attempt"><td>Excel</td><td>(\d+)</td>', page) for page in (first, second)
    ]
    assert numbers == [[str(n) for n in range(55, 5, -1)], ["5", "4", "3", "2", "1"]]
    assert "55 in all" in first and 'rel="next"' not in second


def test_a_broken_link_to_an_attempts_page_is_a_400_page(portal):
    response = logged_in(portal, "candidate", "secret").get("/tooluser/attempts/?after=bogus")
    assert response.status_code == 400 and b"link is broken" in response.data


def test_logout_needs_a_post_with_csrf(portal):
    client = logged_in(portal, "candidate", "secret")
    page = client.get("/accounts/logout/")
    assert client.get("/").status_code == 200  # a GET of the logout page logs nobody out
    response = client.post("/accounts/logout/", data={"csrf_token": csrf(page.data)})
    assert response.status_code == 302 and client.get("/").status_code == 302


@pytest.mark.parametrize("path", ["/accounts/login/", "/", "/.api/toolcall/v2/", "/fetch-token/"])
def test_every_answer_carries_the_security_headers(portal, path):
    headers = portal.test_client().get(path).headers
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["Referrer-Policy"] == "same-origin"
