"""The user's side of the portal: logging in, the tools, starting an attempt (docs/api.md §1)."""

from __future__ import annotations

import re
import threading
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
from sqlalchemy import event, select

from webapp import lifecycle
from webapp.lifecycle import Status
from webapp.models import ToolCall, ToolCallLog


def furnish(app):
    """``app``'s database migrated, with a vendor, its exam "excel" and a candidate."""
    app.extensions["db"].upgrade()
    with app.extensions["db"].session() as session:
        client = add_client(session, "vendor")
        client.receive_start_token_url = "https://vendor.example/start/?lang=en"
        add_tool(session, client, "excel")
        add_user(session, "candidate", password="secret")
    return app


@pytest.fixture(name="portal")
def portal_fixture(app, redis_db):
    return furnish(app)


def start(client, slug="excel", supersede=None):
    page = client.get(f"/tooluser/tools/{slug}/")
    data = {"csrf_token": csrf(page.data)}
    if supersede is not None:
        data["supersede"] = supersede
    return client.post(f"/tooluser/tools/{slug}/", data=data)


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


def test_a_new_attempt_supersedes_the_open_one_once_confirmed(portal):
    client = logged_in(portal, "candidate", "secret")
    start(client)
    page = client.get("/tooluser/tools/excel/").data.decode()  # the confirmation
    assert "Starting a new attempt ends that one" in page and 'name="supersede" value="yes"' in page
    assert start(client, supersede="yes").status_code == 303
    first, second = attempts(portal)
    assert (first.status, second.status) == (Status.FINISHED_ERR, Status.START_TK_SENT)
    assert (first.attempt, second.attempt) == (1, 2)
    with portal.extensions["db"].session() as session:
        last = session.scalars(select(ToolCallLog).where(ToolCallLog.toolcall_id == first.id)).all()[-1]
        assert last.status == "finished-err" and "superseded" in last.details


@pytest.fixture(name="portal_on_each_database")
def portal_on_each_database_fixture(app_on_each_database, redis_db):
    """The portal of ``portal``, once on SQLite and once on PostgreSQL (they lock differently)."""
    return furnish(app_on_each_database)


#: The INSERT of a new attempt (not of a log row: toolcall_toolcalllog).
NEW_ATTEMPT = re.compile(r"\s*INSERT INTO toolcall_toolcall\b", re.IGNORECASE)


def test_two_starts_at_once_leave_one_open_attempt_and_no_number_twice(portal_on_each_database):
    """A double click opens two windows: two starts of the same exam by the same user at once.
    Each request is held at its first INSERT of an attempt until the other one has got there too,
    so both have read the user's attempts before either wrote one -- the race, every time."""
    app = portal_on_each_database
    windows = [logged_in(app, "candidate", "secret") for _ in range(2)]
    tokens = [csrf(window.get("/tooluser/tools/excel/").data) for window in windows]
    both_read = threading.Barrier(2)
    held = threading.local()

    def hold_the_first_insert(_connection, _cursor, statement: str, *_args) -> None:
        if NEW_ATTEMPT.match(statement) and not getattr(held, "once", False):
            held.once = True
            both_read.wait(timeout=30)

    answers: list = [None, None]

    def click(n: int) -> None:
        answers[n] = windows[n].post("/tooluser/tools/excel/", data={"csrf_token": tokens[n]})

    event.listen(app.extensions["db"].engine, "before_cursor_execute", hold_the_first_insert)
    try:
        clicks = [threading.Thread(target=click, args=(n,)) for n in range(2)]
        for thread in clicks:
            thread.start()
        for thread in clicks:
            thread.join(timeout=60)
    finally:
        event.remove(app.extensions["db"].engine, "before_cursor_execute", hold_the_first_insert)
    assert [answer.status_code for answer in answers] == [303, 303]
    made = attempts(app)
    assert sorted(toolcall.attempt for toolcall in made) == [1, 2]
    assert sorted(toolcall.status for toolcall in made) == [Status.FINISHED_ERR, Status.START_TK_SENT]


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


def test_a_start_that_would_end_a_running_attempt_asks_first_and_ends_nothing(portal):
    client = logged_in(portal, "candidate", "secret")
    start(client)
    response = start(client)  # a second click, or a form from before the first start
    assert response.status_code == 409 and b"You have an attempt running" in response.data
    assert [a.status for a in attempts(portal)] == [Status.START_TK_SENT]


def test_the_home_page_shows_the_running_attempt_with_a_way_back(portal):
    client = logged_in(portal, "candidate", "secret")
    html = client.get("/").data.decode()
    assert "The exam opens in a new window." in html and "running-attempt" not in html
    start(client)
    [toolcall] = attempts(portal)
    html = client.get("/").data.decode()
    assert "Your attempt 1" in html and "starting — opening in another window" in html
    assert f'href="/tooluser/attempts/{toolcall.id}/"' in html
    assert 'href="/tooluser/tools/excel/">Start a new attempt' in html
    assert 'action="/tooluser/tools/excel/"' not in html  # no one-click supersede from home


def test_the_attempts_page_lists_the_users_attempts_in_plain_words(portal):
    client = logged_in(portal, "candidate", "secret")
    start(client)
    start(client, supersede="yes")
    html = client.get("/tooluser/attempts/").data.decode()
    assert "Excel" in html and "start-tk-sent" not in html and "finished-err" not in html
    assert "starting — opening in another window" in html and "ended: you started a new attempt" in html
    assert "Times are UTC." in html


def test_a_finished_attempt_shows_the_outcome_and_score(portal):
    from webapp.models import Exam, ToolCallResult, User

    with portal.extensions["db"].session() as session:
        toolcall = lifecycle.create(session, session.scalar(select(Exam)), session.scalar(select(User)))
        for status in HAPPY_LOG[1:]:
            lifecycle.advance(session, toolcall, (status, "test"))
        session.add(
            ToolCallResult(
                toolcall_id=toolcall.id,
                data="{}",
                token="R",
                persnr="N1",
                exam="excel",
                passed=False,
                score=0,
            )
        )
        session.commit()
        toolcall_id = toolcall.id
    client = logged_in(portal, "candidate", "secret")
    assert "not passed — score 0" in client.get("/tooluser/attempts/").data.decode()
    page = client.get(f"/tooluser/attempts/{toolcall_id}/").data.decode()
    assert 'id="attempt-phrase" class="phrase not-passed">not passed — score 0<' in page


def test_an_attempt_page_shows_only_ones_own_attempts(portal):
    with portal.extensions["db"].session() as session:
        add_user(session, "other", password="other")
    start(logged_in(portal, "candidate", "secret"))
    [toolcall] = attempts(portal)
    assert logged_in(portal, "other", "other").get(f"/tooluser/attempts/{toolcall.id}/").status_code == 404


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
        re.findall(r'<tr class="attempt"><td>Excel</td><td><a href="[^"]+">(\d+)</a></td>', page)
        for page in (first, second)
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
