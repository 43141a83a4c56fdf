"""The vendor API v2 (docs/api.md §2, §3): discovery, start data, result tokens, errors."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time

import pytest
from helpers import CALLBACKS_KEY
from portal_support import (
    add_client,
    add_tool,
    add_user,
)
from sqlalchemy import select

from webapp import lifecycle
from webapp.lifecycle import Status
from webapp.models import ResultFetch, ToolCall
from webapp.signing import verify_system

SECRET = "s3cret"


@pytest.fixture(name="portal")
def portal_fixture(app, redis_db):
    """A migrated portal with one attempt waiting for its start data (token issued)."""
    app.extensions["db"].upgrade()
    with app.extensions["db"].session() as session:
        client = add_client(session, "vendor")
        tool = add_tool(session, client, "excel")
        user = add_user(session, "candidate")
        user.first_name, user.last_name, user.email = "Cara", "Candidate", "cara@example.org"
        secured = add_client(session, "secured")
        secured.secret = SECRET
        add_tool(session, secured, "word")
        toolcall = lifecycle.create(session, tool, user)
        lifecycle.advance(session, toolcall, (Status.START_TK_SENT, "token issued"))
        app.config["toolcall_id"] = toolcall.id
    app.config["start_token"] = app.extensions["start_tokens"].issue(app.config["toolcall_id"])
    return app


def new_attempt(app, slug: str) -> str:
    """A fresh attempt at tool ``slug`` waiting for its start data; returns its start token."""
    from webapp.models import Exam, User

    with app.extensions["db"].session() as session:
        tool = session.scalar(select(Exam).where(Exam.slug == slug))
        user = session.scalar(select(User).where(User.username == "candidate"))
        toolcall = lifecycle.create(session, tool, user)
        lifecycle.advance(session, toolcall, (Status.START_TK_SENT, "token issued"))
        toolcall_id = toolcall.id
    return app.extensions["start_tokens"].issue(toolcall_id)


def status_of(app, toolcall_id: int) -> str:
    with app.extensions["db"].session() as session:
        return session.get(ToolCall, toolcall_id).status


def error_of(response) -> str:
    assert response.is_json, response.data[:200]
    body = response.json
    assert body["type"] == "error" and set(body) == {"type", "token", "data"}
    return body["data"]["error"]


def auth_header(name: str, secret: str, target: str, stamp: int | None = None) -> dict:
    stamp = int(time.time()) if stamp is None else stamp
    digest = hmac.new(secret.encode(), f"{stamp}\nGET\n{target}".encode(), hashlib.sha256).hexdigest()
    return {"X-Toolcall-Auth": f"{name} {stamp} {digest}"}


# ---- discovery ------------------------------------------------------------------------------------


def test_discovery_names_the_api_and_its_urls(portal):
    api = portal.test_client().get("/.api/toolcall/v2/").json["api"]
    assert api["metadata"] == {"name": "toolcall", "url": "/.api/toolcall/v2/", "active": True, "version": 2}
    assert api["urls"]["start_data"]["url"] == "fetch-token/"
    assert api["urls"]["result_token"]["url"] == "result/"
    assert api["urls"]["root-url"].startswith("http")


# ---- /fetch-token/ --------------------------------------------------------------------------------


def test_fetch_token_returns_the_start_data_and_advances_the_attempt(portal):
    token = portal.config["start_token"]
    response = portal.test_client().get(f"/fetch-token/?access_token={token}")
    assert response.status_code == 200
    body = response.json
    assert body["type"] == "person" and body["token"] == token and body["msgid"]
    assert "+00:00" in body["timestamp"]
    data = body["data"]
    assert (
        data["firstName"] == "Cara"
        and data["lastName"] == "Candidate"
        and data["email"] == "cara@example.org"
    )
    assert data["exam"] == "excel" and data["exam_kind"] == "start" and data["extra_time"] is False
    assert data["persnr"].startswith("N") and len(data["persnr"]) == 33
    assert verify_system(data["system"], "a test key") == portal.config["toolcall_id"]
    assert status_of(portal, portal.config["toolcall_id"]) == "start-data-sent"


@pytest.mark.parametrize(
    "headers",
    [
        lambda t: {"X-Access-Token": t},
        lambda t: {"Authorization": f'Token token="{t}"'},
        lambda t: {"Authorization": f"Token {t}"},
    ],
    ids=["x-access-token", "authorization-token-token", "authorization-token"],
)
def test_fetch_token_takes_the_token_from_headers(portal, headers):
    response = portal.test_client().get("/fetch-token/", headers=headers(portal.config["start_token"]))
    assert response.status_code == 200


def test_the_query_parameter_wins_over_the_headers(portal):
    response = portal.test_client().get(
        f"/fetch-token/?access_token={portal.config['start_token']}", headers={"X-Access-Token": "x" * 43}
    )
    assert response.status_code == 200


def test_a_start_token_works_once(portal):
    client = portal.test_client()
    url = f"/fetch-token/?access_token={portal.config['start_token']}"
    assert client.get(url).status_code == 200
    again = client.get(url)
    assert again.status_code == 401 and error_of(again) == "token-expired"
    assert again.headers["WWW-Authenticate"] == 'Token realm="Person", location="renew-token-url"'


def test_of_twenty_concurrent_fetches_exactly_one_wins(portal):
    url = f"/fetch-token/?access_token={portal.config['start_token']}"
    barrier = threading.Barrier(20)
    codes: list[int] = []

    def fetch():
        client = portal.test_client()
        barrier.wait()
        codes.append(client.get(url).status_code)

    threads = [threading.Thread(target=fetch) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(codes) == [200] + [401] * 19


def test_fetch_token_without_a_token_is_missing_token(portal):
    response = portal.test_client().get("/fetch-token/")
    assert response.status_code == 400 and error_of(response) == "missing-token"


def test_a_malformed_start_token_is_token_invalid(portal):
    response = portal.test_client().get("/fetch-token/?access_token=not%20a%20token")
    assert response.status_code == 401 and error_of(response) == "token-invalid"


def test_an_unknown_start_token_is_token_expired(portal):
    response = portal.test_client().get("/fetch-token/?access_token=" + "A" * 43)
    assert response.status_code == 401 and error_of(response) == "token-expired"


def test_a_client_with_a_secret_must_authenticate_and_the_token_survives_a_failed_try(portal):
    token = new_attempt(portal, "word")
    client = portal.test_client()
    target = f"/fetch-token/?access_token={token}"
    refused = client.get(target)
    assert refused.status_code == 401 and error_of(refused) == "client-auth-failed"
    forged = client.get(target, headers=auth_header("secured", "wrong", target))
    assert forged.status_code == 401 and error_of(forged) == "client-auth-failed"
    stale = client.get(target, headers=auth_header("secured", SECRET, target, int(time.time()) - 600))
    assert error_of(stale) == "client-auth-failed"
    assert client.get(target, headers=auth_header("secured", SECRET, target)).status_code == 200


@pytest.mark.parametrize(
    "carrier",
    [lambda t: {"X-Access-Token": t}, lambda t: {"Authorization": f"Token {t}"},
     lambda t: {"Authorization": f'Token token="{t}"'}],
    ids=["x-access-token", "authorization-token", "authorization-token-token"],
)  # fmt: skip
def test_a_client_with_a_secret_must_send_the_start_token_where_its_signature_covers_it(portal, carrier):
    """X-Toolcall-Auth signs the path and query: a token in a header is not covered by it, so for a
    client with a secret it is refused, even with a valid signature; the token survives."""
    token = new_attempt(portal, "word")
    client = portal.test_client()
    refused = client.get(
        "/fetch-token/", headers={**carrier(token), **auth_header("secured", SECRET, "/fetch-token/")}
    )
    assert refused.status_code == 401 and error_of(refused) == "client-auth-failed"
    assert "query" in refused.json["data"]["msg"]
    target = f"/fetch-token/?access_token={token}"
    assert client.get(target, headers=auth_header("secured", SECRET, target)).status_code == 200


def test_browsers_get_an_error_page_with_the_same_status(portal):
    response = portal.test_client().get(
        "/fetch-token/", headers={"Accept": "text/html,application/xhtml+xml"}
    )
    assert response.status_code == 400 and response.mimetype == "text/html"
    assert b"missing-token" in response.data


# ---- /result/ -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "code", "status"),
    [
        ("access_token=R1", "missing-client", 400),
        ("access_token=R1&client=nobody", "unknown-client", 404),
        ("client=vendor", "missing-token", 400),
        ("client=nobody", "unknown-client", 404),  # the client is checked before the token
        ("access_token=" + "R" * 256 + "&client=vendor", "token-invalid", 401),
        ("access_token=R%01&client=vendor", "token-invalid", 401),
    ],
)
def test_result_errors_in_the_specified_order(portal, query, code, status):
    response = portal.test_client().get(f"/result/?{query}")
    assert response.status_code == status and error_of(response) == code


def test_result_records_an_owed_fetch_and_queues_it(portal, redis_db):
    response = portal.test_client().get("/result/?access_token=R1&client=vendor")
    assert response.status_code == 200
    assert response.json == {"type": "ok", "token": "R1", "data": {}}
    with portal.extensions["db"].session() as session:
        fetch = session.scalar(select(ResultFetch))
        assert (fetch.token, fetch.state, fetch.client.name) == ("R1", "owed", "vendor")
    assert redis_db.llen(CALLBACKS_KEY) == 1  # the trigger, on the callbacks queue


def test_a_repeated_result_report_queues_nothing_new(portal, redis_db):
    client = portal.test_client()
    for _ in range(3):
        assert client.get("/result/?access_token=R1&client=vendor").status_code == 200
    with portal.extensions["db"].session() as session:
        assert len(session.scalars(select(ResultFetch)).all()) == 1
    assert redis_db.llen(CALLBACKS_KEY) == 1


def test_a_report_after_a_failed_fetch_reopens_it(portal, redis_db):
    client = portal.test_client()
    client.get("/result/?access_token=R1&client=vendor")
    with portal.extensions["db"].session() as session:
        session.scalar(select(ResultFetch)).state = "failed"
    assert client.get("/result/?access_token=R1&client=vendor").status_code == 200
    with portal.extensions["db"].session() as session:
        assert session.scalar(select(ResultFetch)).state == "owed"
    assert redis_db.llen(CALLBACKS_KEY) == 2


def test_a_browser_reporting_a_result_sees_a_page_that_refreshes_until_stored(portal):
    response = portal.test_client().get(
        "/result/?access_token=R1&client=vendor", headers={"Accept": "text/html,application/xhtml+xml"}
    )
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert b'http-equiv="refresh"' in response.data and b"candidate" not in response.data
    assert b"Times are UTC." not in response.data  # no try yet: no time to keep trying until


BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


def test_reloading_the_result_page_of_a_failed_fetch_restarts_nothing(portal, redis_db):
    client = portal.test_client()
    client.get("/result/?access_token=R1&client=vendor")  # the vendor's report
    with portal.extensions["db"].session() as session:
        fetch = session.scalar(select(ResultFetch))
        fetch.state, fetch.attempts, fetch.last_error = (
            "failed",
            7,
            "gave up after 7 attempts; last: HTTP 404",
        )
    for _ in range(3):
        page = client.get("/result/?access_token=R1&client=vendor", headers=BROWSER)
        assert page.status_code == 200 and b"Your result could not be fetched." in page.data
        assert b'http-equiv="refresh"' not in page.data and b"What to do:" in page.data
        assert b"listed on the operators' pages" in page.data and b"notified" not in page.data
        assert b"Times are UTC." not in page.data  # the page shows no time
    with portal.extensions["db"].session() as session:
        assert session.scalar(select(ResultFetch)).state == "failed"
    assert redis_db.llen(CALLBACKS_KEY) == 1  # the first report's trigger only


def test_the_result_page_of_a_stored_result_ends_with_the_outcome_in_words(portal):
    from webapp.models import ToolCallResult

    client = portal.test_client()
    client.get("/result/?access_token=R1&client=vendor")
    with portal.extensions["db"].session() as session:
        toolcall = session.get(ToolCall, portal.config["toolcall_id"])
        lifecycle.advance(
            session,
            toolcall,
            *[(status, "test") for status in ("start-data-sent", "result-tk-received", "result-received-ok")],
            ("result-saved", "test"),
            ("finished-ok", "test"),
        )
        session.add(
            ToolCallResult(
                toolcall_id=toolcall.id,
                data="{}",
                token="R1",
                persnr="N1",
                exam="excel",
                passed=True,
                score=42,
            )
        )
        fetch = session.scalar(select(ResultFetch))
        fetch.state, fetch.toolcall_id = "done", toolcall.id
    page = client.get("/result/?access_token=R1&client=vendor", headers=BROWSER).data.decode()
    assert "Your result has been stored." in page and "passed — score 42" in page
    assert 'http-equiv="refresh"' not in page and "finished-ok" not in page


@pytest.mark.parametrize("stamp", ["²", "1" * 5000, "-5", ""])
def test_a_malformed_client_auth_timestamp_is_client_auth_failed_not_an_error(portal, stamp):
    token = new_attempt(portal, "word")
    response = portal.test_client().get(
        f"/fetch-token/?access_token={token}", headers={"X-Toolcall-Auth": f"secured {stamp} abcdef"}
    )
    assert response.status_code == 401 and error_of(response) == "client-auth-failed"
