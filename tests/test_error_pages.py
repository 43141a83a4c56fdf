"""One look for every page: styled error pages with a way back, the favicon, the times note."""

from __future__ import annotations

import pytest
from portal_support import add_client, add_tool, add_user, csrf, logged_in

#: What a browser sends.
BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


@pytest.fixture(name="portal")
def portal_fixture(app, redis_db):
    app.extensions["db"].upgrade()
    with app.extensions["db"].session() as session:
        add_tool(session, add_client(session, "vendor"), "excel")
        add_user(session, "candidate", password="secret")

    @app.get("/boom/")
    def boom():
        raise RuntimeError("a bug")

    return app


def styled(response, status: int, words: str) -> str:
    """The page of an error: its status, our stylesheet, the words, and a way back."""
    html = response.data.decode()
    assert response.status_code == status and response.mimetype == "text/html", html[:300]
    assert "/static/toolcall.css" in html and words in html, html
    assert 'class="way-back"' in html and 'href="/"' in html
    assert "Werkzeug" not in html and "Traceback" not in html
    return html


def test_an_unknown_page_is_a_styled_404_with_a_link_home_and_the_login(portal):
    html = styled(portal.test_client().get("/no/such/page/", headers=BROWSER), 404, "Page not found")
    assert 'href="/accounts/login/"' in html


def test_a_logged_in_user_is_led_back_to_the_exams(portal):
    client = logged_in(portal, "candidate", "secret")
    html = styled(client.get("/tooluser/tools/nothing/"), 404, "Page not found")
    assert "Back to your exams" in html and 'href="/accounts/login/"' not in html
    styled(client.get("/tooluser/attempts/999/"), 404, "Page not found")


@pytest.mark.parametrize("token", [None, "forged"])
def test_a_form_without_a_valid_csrf_token_is_a_styled_400_saying_what_to_do(portal, token):
    data = {"username": "candidate", "password": "secret"}
    if token:
        data["csrf_token"] = token
    response = portal.test_client().post("/accounts/login/", data=data)
    styled(response, 400, "Go back, reload the page and send it again.")


def test_an_operators_page_for_a_candidate_is_a_styled_403(portal):
    styled(logged_in(portal, "candidate", "secret").get("/ops/"), 403, "operators only")


def test_a_wrong_method_is_a_styled_405(portal):
    response = logged_in(portal, "candidate", "secret").delete("/")
    styled(response, 405, "Not allowed here")
    assert "GET" in response.headers["Allow"]


def test_too_much_data_is_a_styled_413(portal):
    portal.config["MAX_CONTENT_LENGTH"] = 100_000  # a deployment's limit (Flask sets none)
    client = portal.test_client()
    token = csrf(client.get("/accounts/login/").data)
    response = client.post(
        "/accounts/login/", data={"csrf_token": token, "username": "x", "password": "x" * 2_000_000}
    )
    styled(response, 413, "Too much data")


def test_too_many_logins_is_a_styled_429_with_a_way_back(portal):
    portal.config["RATELIMIT_ENABLED"] = True
    client = portal.test_client()
    statuses = []
    for _ in range(12):  # TOOLCALL_RATELIMIT_LOGIN is 10/minute
        token = csrf(client.get("/accounts/login/").data)
        response = client.post(
            "/accounts/login/", data={"csrf_token": token, "username": "c", "password": "x"}
        )
        statuses.append(response.status_code)
    assert statuses[-1] == 429, statuses
    styled(response, 429, "Wait a minute and try again.")


def test_a_failure_of_the_portal_is_a_styled_500(portal):
    portal.testing = False  # answer as in production instead of raising into the test
    portal.config["PROPAGATE_EXCEPTIONS"] = False
    styled(portal.test_client().get("/boom/", headers=BROWSER), 500, "Something went wrong")


def test_the_vendor_api_keeps_its_envelope(portal):
    client = portal.test_client()
    response = client.get("/.api/toolcall/v2/nothing")
    assert response.status_code == 404 and response.json["data"]["error"] == "not-found"
    response = client.post("/result/")
    assert response.status_code == 405 and response.json["data"]["error"] == "method-not-allowed"


def test_the_favicon_is_served_and_linked(portal):
    client = portal.test_client()
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.data[:4] == b"\x00\x00\x01\x00"  # an ICO file
    html = client.get("/accounts/login/").data.decode()
    assert 'rel="icon" href="/static/favicon.svg"' in html
    assert client.get("/static/favicon.svg").status_code == 200
    assert client.get("/static/toolcall.css").status_code == 200


def test_times_are_called_utc_only_on_pages_that_show_times(portal):
    client = logged_in(portal, "candidate", "secret")
    assert "Times are UTC." not in client.get("/").data.decode()  # no attempt running: no times
    assert "Times are UTC." not in client.get("/accounts/login/").data.decode()
    page = client.get("/tooluser/tools/excel/")
    client.post("/tooluser/tools/excel/", data={"csrf_token": csrf(page.data)})
    assert "Times are UTC." in client.get("/").data.decode()
    assert "Times are UTC." in client.get("/tooluser/attempts/").data.decode()
