"""The portal's defences, each proved against the real thing (docs/api.md §1, §3, §5, §8, §9).

- **CSRF** on every route that changes state: the app's URL map is walked, so a new POST route is
  covered (or this fails until it is classified). The vendor API takes no forms -- it is GET only,
  server to server, authenticated by its tokens -- and is listed as exempt by design, as are the LTI
  platform's endpoints, authorized by single-use hints, signed JWTs and bearer tokens.
- **Cookies**: the session cookie is HttpOnly and SameSite=Lax, and Secure in production.
- **Login**: rate limits that neither letter case nor a forged X-Forwarded-For get around (the
  limits themselves: test_limits.py); no user enumeration, neither by the answer nor by its time;
  no open redirect through ``next``, judged the way a browser reads the Location.
- **Security headers** on every page the URL map has, for every kind of visitor.
- **Vendor secrets and Standard Webhooks signatures** in the demo vendor: test_demo_vendor.py
  (referenced below, not repeated); the portal's real signed fetches verified by the official
  libraries: test_signed_fetch.py.
- **Requests** (body size against the real gunicorn, trusted proxies, NUL and lone surrogates on
  PostgreSQL, JSON on form pages): test_inbound.py. **Sessions** ending at logout, at a new password
  and with their lifetime: test_sessions.py.
- **Production's vendor URLs**: https only, and addresses checked at connect time -- against a
  resolver that answers differently each time (DNS rebinding), a mixed answer, a network that
  delivers elsewhere, and end to end through a production ``callbacks`` worker. The unit tests of
  ``check_address`` are in test_outbound.py, the http/loopback refusals in test_vendor_client.py.
- **Flower**, started as the Procfile starts it: its pages and API need the basic-auth login;
  ``/metrics`` and ``/healthcheck`` do not (asserted as they are -- see the test's note).

Redis: the in-process portals use database 4 (portal_support); the production worker and Flower
use database 1 of the tests' Redis (``TOOLCALL_TEST_REDIS``), shared with test_vendor_faults.py, which
runs before or after this module, never with it (each flushes it at start and end).
"""

from __future__ import annotations

import ast
import contextlib
import errno
import ipaddress
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import quote, urljoin, urlsplit

import pytest
import requests
from callbacks_worker import CLEARED
from fetch_support import Portal, new_token, running_portal
from helpers import REPO, free_port, listening_addresses, procfile_line, suite_redis_url, wait_until
from portal_support import (
    REDIS_URL,
    add_client,
    add_tool,
    add_user,
    csrf,
    login,
)
from sqlalchemy import select
from vendor_stub import Answer, VendorStub

from webapp import SECURITY_HEADERS, create_app, lifecycle, outbound, vendor_client
from webapp.lifecycle import Status
from webapp.models import Base, Client, Exam, ResultFetch, ToolCall, User

WORKER_REDIS_URL = suite_redis_url(1)
STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
#: Routes that take no CSRF token, and why. Nothing else may be exempt.
CSRF_EXEMPT_BY_DESIGN = {
    "api.discovery": "vendor API: GET only, no state",
    "api.openapi": "vendor API: GET only, a static document",
    "api.fetch_token": "vendor API: GET only, server to server; the start token (and X-Toolcall-Auth) authenticate",
    "api.result": "vendor API: GET only (a vendor may redirect the browser here); it only makes the portal "
    "pull from the client's registered URL",
}
#: Blueprints that take no CSRF token, and why (webapp/lti/views.py). Nothing else may be exempt.
CSRF_EXEMPT_BLUEPRINTS_BY_DESIGN = {
    "lti": "LTI platform endpoints reached from the tool's pages: a launch is authorized by its single-use hint "
    "for the logged-in user, a deep-linking response by the tool's signed JWT",
    "lti_services": "LTI token, AGS and NRPS: server to server, authorized by a signed client assertion or a "
    "bearer token, never by cookies",
}
#: What Flask-WTF answers (400) to a missing, a malformed, and another session's token.
CSRF_REFUSED = b"The CSRF token"


# ---- a portal with one of everything ------------------------------------------------------------------


@dataclass(frozen=True)
class Rows:
    client: int
    tool: int
    fetch: int
    slug: str = "excel"


def make_portal(tmp_path: Path, ratelimit: bool):
    """A migrated portal on a SQLite file of its own with one of everything: a client and its tool,
    a candidate, an operator (admin) and a failed result fetch."""
    app = create_app(
        {"TESTING": True, "INSTANCE_PATH": tmp_path / "instance", "DATABASE_URL": f"sqlite:///{tmp_path / 'p.sqlite3'}",
         "REDIS_URL": REDIS_URL, "SECRET_KEY": "a test key", "TOOLCALL_RATELIMIT": ratelimit}
    )  # fmt: skip
    app.extensions["db"].upgrade()
    with app.extensions["db"].session() as session:
        client = add_client(session, "vendor")
        tool = add_tool(session, client, "excel")
        add_user(session, "candidate", "secret")
        admin = add_user(session, "operator", "operator secret")
        admin.is_admin = True
        fetch = ResultFetch(client_id=client.id, token="R1", state="failed", last_error="HTTP 400")
        session.add(fetch)
        session.flush()
        app.config["rows"] = Rows(client.id, tool.id, fetch.id)
    return app


@pytest.fixture(name="portal")
def portal_fixture(tmp_path, portal_environment, redis_db):
    """The portal without rate limits (tests that log in again and again)."""
    app = make_portal(tmp_path, ratelimit=False)
    yield app
    app.extensions["db"].dispose()


@pytest.fixture(name="limited_portal")
def limited_portal_fixture(tmp_path, portal_environment, redis_db):
    """The portal with its rate limits, as configured by default."""
    app = make_portal(tmp_path, ratelimit=True)
    yield app
    app.extensions["db"].dispose()


def logged_in(app, username: str, password: str):
    client = app.test_client()
    assert login(client, username, password).status_code == 302
    return client


def path_of(rule, rows: Rows) -> str:
    values = {"client_id": rows.client, "tool_id": rows.tool, "fetch_id": rows.fetch, "slug": rows.slug,
              "toolcall_id": 1, "filename": "missing.css", "context": rows.slug, "item_id": "1", "name": "vendor"}  # fmt: skip
    missing = rule.arguments - set(values)
    assert not missing, f"{rule.rule}: give path_of a value for {missing}"
    return rule.build({name: values[name] for name in rule.arguments})[1]


def snapshot(app, redis_db) -> tuple:
    """Every row of every table, and the keys in Redis (rate-limit counters aside)."""
    with app.extensions["db"].engine.connect() as connection:
        tables = {
            table.name: sorted(map(tuple, connection.execute(select(table))))
            for table in Base.metadata.sorted_tables
        }
    keys = sorted(key for key in redis_db.keys() if b"LIMITER" not in key)
    return tables, keys


# ---- CSRF ----------------------------------------------------------------------------------------------


def test_csrf_is_on_and_nothing_is_exempt_but_the_vendor_api_and_the_lti_endpoints(portal):
    assert portal.config["WTF_CSRF_ENABLED"] is not False and portal.config["WTF_CSRF_CHECK_DEFAULT"]
    csrf_protect = portal.extensions["csrf"]
    assert not csrf_protect._exempt_views
    exempt = {getattr(blueprint, "name", blueprint) for blueprint in csrf_protect._exempt_blueprints}
    assert exempt == set(CSRF_EXEMPT_BLUEPRINTS_BY_DESIGN)
    api_rules = [rule for rule in portal.url_map.iter_rules() if rule.endpoint.startswith("api.")]
    assert {rule.endpoint for rule in api_rules} == set(CSRF_EXEMPT_BY_DESIGN)
    for rule in api_rules:  # exempt because nothing there takes a form
        assert not rule.methods & STATE_CHANGING, rule.rule
        response = portal.test_client().post(rule.rule)
        assert response.status_code == 405 and response.json["data"]["error"] == "method-not-allowed"


def test_every_state_changing_route_refuses_a_post_without_a_valid_csrf_token(portal, redis_db):
    rows = portal.config["rows"]
    guarded = [rule for rule in portal.url_map.iter_rules() if rule.methods & STATE_CHANGING
               and rule.endpoint.partition(".")[0] not in CSRF_EXEMPT_BLUEPRINTS_BY_DESIGN]  # fmt: skip
    assert {rule.endpoint for rule in guarded} >= {"auth.login", "auth.logout", "portal.start", "ops.retry_fetch",
                                                   "ops.client_new", "ops.client_edit", "ops.tool_new", "ops.tool_edit",
                                                   "lti_admin.new", "lti_admin.show", "lti_admin.deep_link"}  # fmt: skip
    other_session_token = csrf(logged_in(portal, "candidate", "secret").get("/accounts/logout/").data)
    before = snapshot(portal, redis_db)
    for rule in guarded:
        path = path_of(rule, rows)
        for method in sorted(rule.methods & STATE_CHANGING):
            # As an admin, so that neither a login nor a permission check answers first.
            client = logged_in(portal, "operator", "operator secret")
            send = getattr(client, method.lower())
            for token, why in [
                (None, b"The CSRF token is missing."),
                ("not-a-token", b"The CSRF token is invalid."),
                (other_session_token, b"The CSRF tokens do not match."),
            ]:
                data = {"username": "operator", "password": "operator secret", "name": "x"}
                if token is not None:
                    data["csrf_token"] = token
                response = send(path, data=data)
                assert response.status_code == 400 and why in response.data, (
                    f"{method} {path} with token {token!r}: {response.status_code} {response.data[:300]!r}"
                )
            assert client.get("/ops/").status_code == 200, f"{method} {path} logged the operator out"
    assert snapshot(portal, redis_db) == before, "a refused POST changed something"
    # With the token, each of them gets past the check (so the refusals above were the check's).
    for rule in guarded:
        client = logged_in(portal, "operator", "operator secret")
        token = csrf(client.get("/accounts/logout/").data)
        for method in sorted(rule.methods & STATE_CHANGING):
            response = getattr(client, method.lower())(path_of(rule, rows), data={"csrf_token": token})
            assert CSRF_REFUSED not in response.data, f"{method} {rule.rule} refused a valid token"


def test_production_also_refuses_a_post_from_another_origin(tmp_path, portal_environment, redis_db):
    """Over https Flask-WTF checks the Referer too: a valid token posted from another site is refused."""
    app = create_app({"INSTANCE_PATH": tmp_path / "i", "DATABASE_URL": f"sqlite:///{tmp_path / 'p.sqlite3'}",
                      "REDIS_URL": REDIS_URL, "SECRET_KEY": "k", "TOOLCALL_PRODUCTION": True})  # fmt: skip
    app.extensions["db"].upgrade()
    client = app.test_client()
    base = "https://portal.example"
    token = csrf(client.get("/accounts/login/", base_url=base).data)
    form = {"username": "nobody", "password": "x", "csrf_token": token}
    foreign = client.post(
        "/accounts/login/", base_url=base, data=form, headers={"Referer": "https://evil.example/"}
    )
    assert foreign.status_code == 400 and b"referrer does not match" in foreign.data
    own = client.post(
        "/accounts/login/", base_url=base, data=form, headers={"Referer": f"{base}/accounts/login/"}
    )
    assert own.status_code == 401  # past the check: an unknown user
    app.extensions["db"].dispose()


def test_a_head_request_does_not_use_a_start_token_up(portal):
    """A HEAD is a GET without the body: on /fetch-token/ it would burn the token (and move the
    attempt on) with nobody getting the start data. It is refused; the token still works."""
    with portal.extensions["db"].session() as session:
        tool, user = session.scalar(select(Exam)), session.scalar(select(User))
        toolcall = lifecycle.create(session, tool, user)
        lifecycle.advance(session, toolcall, (Status.START_TK_SENT, "token issued"))
        toolcall_id = toolcall.id
    token = portal.extensions["start_tokens"].issue(toolcall_id)
    head = portal.test_client().head(f"/fetch-token/?access_token={token}")
    assert head.status_code == 405 and head.headers["Allow"] == "GET, OPTIONS"
    with portal.extensions["db"].session() as session:
        assert session.get(ToolCall, toolcall_id).status == "start-tk-sent"
    assert portal.test_client().get(f"/fetch-token/?access_token={token}").status_code == 200


# ---- cookies -------------------------------------------------------------------------------------------


def session_cookie(response) -> dict[str, str | bool]:
    [header] = [h for h in response.headers.getlist("Set-Cookie") if h.startswith("session=")]
    morsel = SimpleCookie(header)["session"]
    return {
        "httponly": bool(morsel["httponly"]),
        "samesite": morsel["samesite"],
        "secure": bool(morsel["secure"]),
    }


def test_the_session_cookie_is_httponly_and_samesite_lax(portal):
    client = portal.test_client()
    assert session_cookie(client.get("/accounts/login/")) == {
        "httponly": True,
        "samesite": "Lax",
        "secure": False,
    }
    answer = login(client, "candidate", "secret")
    assert answer.status_code == 302
    assert session_cookie(answer) == {"httponly": True, "samesite": "Lax", "secure": False}
    assert not [h for h in answer.headers.getlist("Set-Cookie") if h.startswith("remember_token=")]


def test_in_production_the_session_cookie_is_also_secure(tmp_path, portal_environment, redis_db):
    app = create_app({"INSTANCE_PATH": tmp_path / "i", "DATABASE_URL": f"sqlite:///{tmp_path / 'p.sqlite3'}",
                      "REDIS_URL": REDIS_URL, "SECRET_KEY": "k", "TOOLCALL_PRODUCTION": True})  # fmt: skip
    app.extensions["db"].upgrade()
    with app.extensions["db"].session() as session:
        add_user(session, "candidate", password="secret")
    client = app.test_client()
    base = "https://portal.example"
    page = client.get("/accounts/login/", base_url=base)
    assert session_cookie(page) == {"httponly": True, "samesite": "Lax", "secure": True}
    answer = client.post(
        "/accounts/login/", base_url=base, headers={"Referer": f"{base}/accounts/login/"},
        data={"username": "candidate", "password": "secret", "csrf_token": csrf(page.data)},
    )  # fmt: skip
    assert answer.status_code == 302
    assert session_cookie(answer) == {"httponly": True, "samesite": "Lax", "secure": True}
    app.extensions["db"].dispose()


# ---- login: limits, enumeration, redirects ----------------------------------------------------------------


def test_varying_the_usernames_case_and_spaces_does_not_escape_its_limit(limited_portal):
    client = limited_portal.test_client()
    spellings = ["candidate", "Candidate", "CANDIDATE", " candidate", "candidate ", "cAnDiDaTe"] * 2
    codes = [login(client, name, "wrong").status_code for name in spellings[:10]]
    assert codes == [401] * 10
    assert login(client, "candidate", "secret").status_code == 429


def test_a_forged_x_forwarded_for_does_not_escape_the_address_limit(limited_portal):
    """No proxy is trusted: the limit is per connecting address, whatever the header claims."""
    limited_portal.config["TOOLCALL_RATELIMIT_LOGIN_ADDRESS"] = "5/minute"  # read per request
    client = limited_portal.test_client()
    codes = []
    for i in range(6):
        token = csrf(client.get("/accounts/login/").data)
        response = client.post(
            "/accounts/login/", headers={"X-Forwarded-For": f"198.51.100.{i}", "X-Real-IP": f"203.0.113.{i}"},
            data={"username": f"user{i}", "password": "wrong", "csrf_token": token},
        )  # fmt: skip
        codes.append(response.status_code)
    assert codes == [401] * 5 + [429]


def normalised(page: bytes, username: str) -> bytes:
    """A login page without what differs by request anyway: its CSRF token and the echoed username."""
    page = re.sub(rb'name="csrf_token" type="hidden" value="[^"]+"', b"CSRF", page)
    return page.replace(f'value="{username}"'.encode(), b'value="USERNAME"')


def test_an_unknown_user_and_a_wrong_password_get_the_same_answer(portal):
    answers = {}
    for username in ("candidate", "nobody"):
        response = login(portal.test_client(), username, "wrong")
        answers[username] = (
            response.status_code,
            sorted(response.headers.keys()),
            normalised(response.data, username),
        )
    assert answers["candidate"] == answers["nobody"]
    assert answers["candidate"][0] == 401


def test_an_unknown_user_takes_as_long_as_a_wrong_password(portal):
    """Checking a password hash is most of a login's time: an unknown user must not skip it, or the
    clock alone would tell which usernames exist."""
    with portal.extensions["db"].session() as session:
        add_user(session, "someone", password="secret")  # hashed as every user's password is
    client = portal.test_client()
    login(client, "nobody", "warm-up")  # the first unknown user makes the stand-in hash once
    times: dict[str, list[float]] = {"someone": [], "nobody": []}
    for _ in range(5):
        for username in times:  # interleaved, so that a busy moment hits both alike
            started = time.perf_counter()
            assert login(client, username, "wrong").status_code == 401
            times[username].append(time.perf_counter() - started)
    known, unknown = statistics.median(times["someone"]), statistics.median(times["nobody"])
    # Without the stand-in hash an unknown user took about a thirtieth of the time.
    assert unknown > known / 2, (times, "an unknown user is answered faster")


def where_a_browser_goes(
    location: str, base: str = "https://portal.example/accounts/login/"
) -> tuple[str, str]:
    """(scheme, host) a browser would go to for ``location`` (the WHATWG URL parser's leniencies:
    surrounding spaces and controls stripped, tabs and newlines removed, '\\' read as '/')."""
    location = location.strip("".join(map(chr, range(0x21))))
    location = re.sub(r"[\t\n\r]", "", location).replace("\\", "/")
    target = urlsplit(urljoin(base, location))
    return target.scheme.lower(), (target.hostname or "").lower()


NEXT_PAYLOADS = [
    "https://evil.example/", "http://evil.example", "HTTPS://EVIL.EXAMPLE", "//evil.example", "///evil.example",
    "////evil.example", "/\\evil.example", "\\/evil.example", "\\\\evil.example", "/\\/evil.example",
    "/\t/evil.example", "/\n/evil.example", " //evil.example", "\x00//evil.example", "/.//evil.example",
    "/../..//evil.example", "javascript:alert(1)", "JaVaScRiPt:alert(1)", " javascript:alert(1)",
    "java\tscript:alert(1)", "data:text/html,<script>alert(1)</script>", "vbscript:msgbox(1)",
    "https:evil.example", "https:/evil.example", "/%2F%2Fevil.example", "/%5Cevil.example", "%2F%2Fevil.example",
    "evil.example", "@evil.example", "/@evil.example", "https://portal.example@evil.example/",
    "//portal.example@evil.example", "/\uff0f/evil.example", "\u3002evil.example", "/tooluser/attempts/?x=//evil",
    "/%252F%252Fevil.example", "%5C%5Cevil.example", "%2F%5Cevil.example", "https%3A%2F%2Fevil.example",
    "%68ttps://evil.example", "/%09/evil.example", "%20//evil.example",
]  # fmt: skip


@pytest.mark.parametrize("encoding", ["form-encoded", "raw"])
@pytest.mark.parametrize("target", NEXT_PAYLOADS)
def test_next_never_leads_off_site(portal, target, encoding):
    client = portal.test_client()
    token = csrf(client.get("/accounts/login/").data)
    form = {"username": "candidate", "password": "secret", "csrf_token": token}
    if encoding == "raw":
        # As a crafted link carries it: its own %-escapes decoded by the server, so that
        # "%2F%2Fevil.example" arrives as "//evil.example"; only what a URL cannot hold is escaped.
        link = "".join(c if 0x21 <= ord(c) < 0x7F and c not in "&#+" else quote(c, safe="") for c in target)
        response = client.post("/accounts/login/?next=" + link, data=form)
    else:
        response = client.post("/accounts/login/", query_string={"next": target}, data=form)
    if "\x00" in target:  # refused before the login is even looked at (test_inbound.py)
        assert response.status_code == 400 and "Location" not in response.headers
        return
    assert response.status_code == 302
    assert where_a_browser_goes(response.headers["Location"]) == ("https", "portal.example"), (
        response.headers["Location"]
    )


def test_the_browser_model_itself_sees_an_open_redirect():
    """The oracle above is not blind: it flags the redirects it must."""
    for location in ["//evil.example", "/\\evil.example", " https://evil.example", "/\t/evil.example"]:
        assert where_a_browser_goes(location) != ("https", "portal.example"), location


# ---- security headers -------------------------------------------------------------------------------------


def test_every_page_for_every_visitor_carries_the_security_headers(portal):
    rows = portal.config["rows"]
    visitors = {
        "anonymous": portal.test_client(),
        "candidate": logged_in(portal, "candidate", "secret"),
        "operator": logged_in(portal, "operator", "operator secret"),
    }
    gets = [rule for rule in portal.url_map.iter_rules() if "GET" in rule.methods]
    assert len(gets) >= 15
    seen = set()
    for who, client in visitors.items():
        for rule in gets:
            response = client.get(path_of(rule, rows))
            seen.add(response.status_code)
            for name, value in SECURITY_HEADERS.items():
                assert response.headers.get(name) == value, (who, rule.rule, response.status_code, name)
            if response.mimetype == "text/html":
                policy = response.headers["Content-Security-Policy"]
                assert "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy
                # every style comes from the stylesheet, so the policy needs no 'unsafe-inline'
                inline = re.search(r"<style|\sstyle=", response.get_data(as_text=True))
                assert inline is None, (who, rule.rule, inline)
    for path in ("/no/such/page", "/ops/toolcalls/999999/"):
        response = visitors["operator"].get(path)
        seen.add(response.status_code)
        assert all(response.headers.get(n) == v for n, v in SECURITY_HEADERS.items()), path
    assert {200, 302, 404} <= seen  # pages, redirects to the login and errors were all among them


# ---- the demo vendor's side: referenced, not repeated -------------------------------------------------------

DEMO_VENDOR_SECURITY_TESTS = {
    "test_a_vendor_without_the_right_secret_gets_no_start_data_and_says_why": "X-Toolcall-Auth required, token not burnt",
    "test_result_data_without_a_valid_signature_is_401": "unsigned, wrong secret, other id, ten-minutes-old signature",
    "test_the_portals_fetch_with_the_wrong_secret_fails_for_good": "a 401 from the vendor is not retried",
    "test_a_whsec_secret_that_is_not_base64_is_refused_at_startup": "a misconfigured secret fails loudly",
    "test_a_malformed_signature_timestamp_is_401_not_a_crash": "odd timestamps are refused, not a 500",
    "test_a_candidate_takes_the_exam_and_the_portal_can_fetch_a_valid_result": "both secrets' kinds, end to end",
}


def test_the_demo_vendors_secret_and_signature_checks_are_tested_there():
    tree = ast.parse((Path(__file__).parent / "test_demo_vendor.py").read_text(encoding="utf-8"))
    names = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert set(DEMO_VENDOR_SECURITY_TESTS) <= names, set(DEMO_VENDOR_SECURITY_TESTS) - names


# ---- production: vendor addresses checked at connect time ----------------------------------------------------


class Network:
    """A resolver with scripted answers (one list per lookup, the last repeated) and sockets whose
    connects are recorded. Only loopback is really connected to -- or, with ``deliver_to``, every
    connect is delivered there, as a NAT would -- so nothing leaves this machine."""

    def __init__(self, answers: list[list[str]], deliver_to: tuple[str, int] | None = None):
        self.answers = answers
        self.deliver_to = deliver_to
        self.lookups: list[str] = []
        self.connects: list[str] = []
        network = self

        class RecordingSocket(socket.socket):
            def connect(self, address):
                network.connects.append(address[0])
                if network.deliver_to is not None:
                    return super().connect(network.deliver_to)
                if ipaddress.ip_address(address[0]).is_loopback:
                    return super().connect(address)
                raise ConnectionRefusedError(
                    errno.ECONNREFUSED, "refused here: no traffic leaves this machine"
                )

        self.socket = RecordingSocket

    def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):
        self.lookups.append(host)
        answer = self.answers[min(len(self.lookups), len(self.answers)) - 1]
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, port, 0, 0))
            if ":" in ip
            else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))
            for ip in answer
        ]


@pytest.fixture(name="network")
def network_fixture(monkeypatch: pytest.MonkeyPatch):
    """Installs a ``Network`` in place of the resolver and sockets outbound calls use."""

    def install(answers: list[list[str]], deliver_to: tuple[str, int] | None = None) -> Network:
        network = Network(answers, deliver_to)
        monkeypatch.setattr(outbound.socket, "getaddrinfo", network.getaddrinfo)
        monkeypatch.setattr(outbound.socket, "socket", network.socket)
        return network

    return install


@pytest.fixture(name="stub")
def stub_fixture() -> Iterator[VendorStub]:
    stub = VendorStub()
    stub.script("v", "R", Answer.json({"data": {}}))
    yield stub
    stub.close()


def fetch_in_production(url: str):
    return vendor_client.fetch_result(
        url, "R", client_secret=None, webhook_id="1", production=True, within_grace=True,
        connect_timeout=2, total_timeout=3,
    )  # fmt: skip


PUBLIC = "93.184.216.34"


def test_a_name_that_resolves_to_a_public_address_first_and_to_loopback_later_is_not_rebound(network, stub):
    network = network([[PUBLIC], ["127.0.0.1"]])
    outcome = fetch_in_production(f"https://vendor.example:{stub.port}/v/result/")
    # Resolved once; the socket went to the address that was checked, never to a second answer.
    assert network.lookups == ["vendor.example"]
    assert network.connects == [PUBLIC]
    assert (outcome.kind, outcome.error) == ("retry", "connection refused")
    assert stub.requests("v") == []


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ([PUBLIC, "10.0.0.7"], "vendor address 10.0.0.7 is private"),
        (["169.254.169.254"], "vendor address 169.254.169.254 is link-local"),  # cloud metadata
        (["fd00::1"], "vendor address fd00::1 is private"),
        (["::ffff:192.168.0.1"], "vendor address ::ffff:192.168.0.1 is private (as 192.168.0.1)"),
        (["100.64.0.1"], "vendor address 100.64.0.1 is "),
        (["127.0.0.1"], "vendor address 127.0.0.1 is loopback"),
    ],
    ids=["mixed-answer", "metadata", "ipv6-private", "mapped-private", "shared-space", "loopback"],
)
def test_a_name_resolving_to_a_non_public_address_is_refused_before_connecting(network, stub, answer, reason):
    network = network([answer])
    outcome = fetch_in_production(f"https://vendor.example:{stub.port}/v/result/")
    assert outcome.kind == "fail" and outcome.error.startswith(reason), outcome.error
    assert network.connects == []


def test_a_connection_that_lands_on_a_private_peer_is_dropped_before_a_byte_is_sent(network, stub):
    """The resolver said public, but the network delivered the connection to loopback: the peer of
    the connected socket is checked again, and the request is never sent."""
    network = network([[PUBLIC]], deliver_to=("127.0.0.1", stub.port))
    outcome = fetch_in_production(f"https://vendor.example:{stub.port}/v/result/")
    assert network.connects == [PUBLIC]
    assert outcome.kind == "fail" and outcome.error.startswith("vendor address 127.0.0.1 is loopback")
    assert stub.requests("v") == []


@pytest.fixture(scope="module", name="production")
def production_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    """The portal and a callbacks worker, both with TOOLCALL_PRODUCTION set."""
    stub = VendorStub()
    directory = tmp_path_factory.mktemp("production")
    try:
        yield from running_portal(
            directory, f"sqlite:///{directory / 'portal.sqlite3'}", WORKER_REDIS_URL, stub,
            "callbacks-production", production=True,
        )  # fmt: skip
    finally:
        stub.close()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:{port}/{name}/result/", "http vendor URLs are refused in production"),
        ("https://127.0.0.1:{port}/{name}/result/", "vendor address 127.0.0.1 is loopback"),
        ("https://localhost:{port}/{name}/result/", "vendor address "),
        ("https://[::ffff:127.0.0.1]:{port}/{name}/result/", "vendor address ::ffff:127.0.0.1 is loopback"),
        ("https://0.0.0.0:{port}/{name}/result/", "vendor address 0.0.0.0 is unspecified"),
    ],
    ids=["http", "loopback-ip", "localhost", "mapped-loopback", "unspecified"],
)
def test_a_production_worker_refuses_a_vendor_url_that_is_not_https_to_a_public_address(
    production, url, reason
):
    vendor = production.new_vendor()
    attempt = production.begin(vendor)
    token = new_token()
    production.stub.script(
        vendor.name, token, Answer.json({"token": token, "data": {"system": attempt.start["system"]}})
    )
    with production.db.session() as session:
        client = session.scalar(select(Client).where(Client.name == vendor.name))
        client.receive_result_token_url = url.format(port=production.stub.port, name=vendor.name)
    production.report(vendor, token)
    fetch = production.wait_fetch(vendor, token)
    assert (fetch.state, fetch.attempts) == ("failed", 1)  # not retried: it can never succeed
    assert fetch.last_error.startswith(reason), fetch.last_error
    if "localhost" in url:
        assert re.match(r"vendor address (127\.0\.0\.1|::1) is loopback", fetch.last_error)
    assert production.requests(vendor) == []  # nothing reached the vendor
    assert production.toolcall(attempt.toolcall_id).status == "start-data-sent"


# ---- Flower ---------------------------------------------------------------------------------------------


def procfile_environment(extra: dict[str, str]) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith((*CLEARED, "FLOWER_"))}
    path = f"{Path(sys.executable).parent}{os.pathsep}{inherited.get('PATH', '')}"
    return {**inherited, "PATH": path, "REDIS_URL": WORKER_REDIS_URL, **extra}


@dataclass
class Flower:
    url: str
    port: int
    process: subprocess.Popen
    log: Path

    def get(self, path: str, auth: tuple[str, str] | None = None) -> requests.Response:
        return requests.get(self.url + path, auth=auth, timeout=10, allow_redirects=False)


FLOWER_LOGIN = ("flower-user", "flower-password")


@pytest.fixture(scope="module", name="flower")
def flower_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flower]:
    """Flower started by the Procfile's own line (through bash, as honcho does), with a login."""
    port = free_port()
    log = tmp_path_factory.mktemp("flower") / "flower.log"
    env = procfile_environment({"FLOWER_PORT": str(port), "FLOWER_BASIC_AUTH": ":".join(FLOWER_LOGIN)})
    with open(log, "wb") as out:
        process = subprocess.Popen(
            ["bash", "-c", procfile_line("flower")], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole below
        )  # fmt: skip
    flower = Flower(f"http://127.0.0.1:{port}", port, process, log)

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(
                f"Flower exited with status {process.returncode}:\n{log.read_text()[-3000:]}"
            )
        with contextlib.suppress(requests.ConnectionError):
            return flower.get("/healthcheck").status_code == 200
        return False

    try:
        wait_until(up, timeout=60, what="Flower to answer")
        yield flower
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.parametrize("path", ["/", "/workers", "/tasks", "/broker"])
def test_flowers_pages_need_its_login(flower, path):
    anonymous = flower.get(path)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == 'Basic realm="flower"'  # browsers ask for the login
    assert flower.get(path, auth=(FLOWER_LOGIN[0], "wrong")).status_code == 401
    assert flower.get(path, auth=FLOWER_LOGIN).status_code == 200


@pytest.mark.parametrize("path", ["/api/workers", "/api/tasks", "/api/task/types"])
def test_flowers_api_needs_its_login(flower, path):
    assert flower.get(path).status_code == 401
    assert flower.get(path, auth=(FLOWER_LOGIN[0], "wrong")).status_code == 401
    answer = flower.get(path, auth=FLOWER_LOGIN)
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("application/json")


def test_flower_answers_metrics_and_healthcheck_without_a_login(flower):
    """NOTE -- a finding, asserted as it is so that it cannot go unnoticed: Flower serves its
    Prometheus metrics (worker names, task names and counts, queue lengths) to anyone who can reach
    its port, whatever --basic-auth says; Flower has no option to protect them. The Procfile binds
    Flower to 127.0.0.1 (next test), so that is anyone on this machine; a deployment that exposes
    Flower must put a proxy in front of it that guards /metrics too."""
    metrics = flower.get("/metrics")
    assert metrics.status_code == 200 and b"# HELP flower_" in metrics.content
    assert flower.get("/healthcheck").text == "OK"


def test_flower_started_by_the_procfile_listens_on_loopback_only(flower):
    """Flower's default address is every interface; the Procfile's --address=127.0.0.1 keeps the
    unauthenticated /metrics above off the network."""
    assert listening_addresses(flower.port) == {"127.0.0.1"}


def test_the_procfile_refuses_to_start_flower_in_production_without_a_login():
    result = subprocess.run(
        ["bash", "-c", procfile_line("flower")], cwd=REPO, capture_output=True, text=True, timeout=60,
        env=procfile_environment({"TOOLCALL_PRODUCTION": "1", "FLOWER_PORT": str(free_port())}),
    )  # fmt: skip
    assert result.returncode != 0
    assert "set FLOWER_BASIC_AUTH=user:password in production" in result.stderr


def test_a_flower_password_with_spaces_reaches_flower_whole():
    # The Procfile's own line, with ``celery`` replaced by a function printing the words it gets.
    script = 'celery() { printf "%s\\n" "$@"; }; ' + procfile_line("flower")
    result = subprocess.run(
        ["bash", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60,
        env=procfile_environment({"FLOWER_BASIC_AUTH": "admin:two words *"}),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--basic-auth=admin:two words *" in result.stdout.splitlines(), result.stdout
