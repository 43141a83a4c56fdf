"""What the portal accepts from a request before a view sees it (webapp/inbound.py).

- **Bodies are bounded** (``TOOLCALL_MAX_CONTENT_LENGTH``, 1 MiB): proved against the Procfile's own
  ``web`` line (gunicorn), because whether a body is read at all is the server's business -- a body
  declared too large is answered 413 before a byte of it is read, a streamed (chunked) one is cut
  off at the limit, and the worker's peak memory stays where it was. Through Flask's test client: a
  browser gets the site's page, a vendor the API's envelope; multipart fields and parts have limits
  of their own.
- **Rate limits see the client, not the proxy**: ``TOOLCALL_TRUSTED_PROXIES`` hops of
  X-Forwarded-For are believed, and none by default. ``HOST`` is where the Procfile binds the portal,
  ``TOOLCALL_PUBLIC_URL`` the root URL it gives out.
- **Text the database cannot store** (a NUL; lone surrogates, which only a JSON body could carry)
  is a 400 wherever it comes from, checked on PostgreSQL, which refuses a NUL even as a query
  parameter; form pages take forms only (a JSON body is 415).

Redis: database 4 (portal_support), flushed around each test; the gunicorn processes run with rate
limits off and touch Redis only for their start-token store, which these tests never use.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from callbacks_worker import CLEARED
from helpers import REPO, descendants, free_port, listening_addresses, procfile_line, wait_until
from portal_support import (
    REDIS_URL,
    add_client,
    add_tool,
    add_user,
    csrf,
    logged_in,
    login,
    scratch_postgres_schema,
)
from sqlalchemy import func, select

from webapp import create_app
from webapp.config import ConfigurationError
from webapp.db import Database
from webapp.models import Client, Exam

MiB = 1 << 20
BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


# ---- the Procfile's web line, as honcho runs it --------------------------------------------------------


@dataclass
class Web:
    port: int
    host: str
    process: subprocess.Popen
    log: Path

    def workers(self) -> list[int]:
        return list(descendants(self.process.pid))

    def peak_memory_kib(self) -> int:
        """The sum over gunicorn's processes of their peak resident memory (VmHWM)."""
        total = 0
        for pid in [self.process.pid, *self.workers()]:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
        return total


@contextlib.contextmanager
def web_process(directory: Path, **env: str) -> Iterator[Web]:
    """The Procfile's ``web`` line (through bash, as honcho runs it) on a migrated SQLite file."""
    database_url = f"sqlite:///{directory / 'portal.sqlite3'}"
    database = Database(database_url)
    database.upgrade()
    database.dispose()
    port = free_port()
    inherited = {k: v for k, v in os.environ.items() if not k.startswith((*CLEARED, "HOST", "PORT"))}
    environment = {
        **inherited,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{inherited.get('PATH', '')}",
        "PORT": str(port),
        "DATABASE_URL": database_url,
        "REDIS_URL": REDIS_URL,
        "SECRET_KEY": "the web line's key",
        "TOOLCALL_INSTANCE": str(directory / "instance"),
        "TOOLCALL_RATELIMIT": "off",
        **env,
    }
    log = directory / "web.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            ["bash", "-c", procfile_line("web")], cwd=REPO, env=environment, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    web = Web(port, env.get("HOST", "127.0.0.1"), process, log)

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(
                f"gunicorn exited with status {process.returncode}:\n{log.read_text()[-3000:]}"
            )
        with contextlib.suppress(OSError), socket.create_connection((web.host, port), timeout=1):
            return True
        return False

    try:
        wait_until(up, timeout=60, what="the web line to listen")
        yield web
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module", name="web")
def web_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    with web_process(tmp_path_factory.mktemp("web")) as web:
        yield web


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes


def exchange(web: Web, head: bytes, body: Iterable[bytes] = (), timeout: float = 20) -> Answer:
    """Sends ``head`` and then ``body`` (from a thread of its own, so that a server that stops
    reading cannot block the test), and reads the answer; a server still waiting for the body after
    ``timeout`` seconds fails the test."""
    sock = socket.create_connection((web.host, web.port), timeout=timeout)

    def send() -> None:
        with contextlib.suppress(OSError):  # the server may answer and close before it has all
            sock.sendall(head)
            for piece in body:
                sock.sendall(piece)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
            content = response.read()
        except TimeoutError:
            raise AssertionError(f"no answer within {timeout:g} s: the server is reading the body") from None
        return Answer(response.status, response.getheader("Content-Type", ""), content)
    finally:
        sock.close()
        sender.join(timeout=timeout)


def chunked(total: int, piece: int = 64 * 1024) -> Iterator[bytes]:
    """A urlencoded form of ``total`` bytes (one long username) in chunked transfer encoding."""
    sent = 0
    first = b"username="
    while sent < total:
        data = first + b"a" * (min(piece, total - sent) - len(first))
        first = b""
        sent += len(data)
        yield b"%x\r\n%s\r\n" % (len(data), data)
    yield b"0\r\n\r\n"


def test_a_body_declared_larger_than_the_limit_is_answered_413_before_it_is_read(web):
    """The attack as it was made: a 150 MiB form posted to the login page. Only the headers are
    sent; the portal must answer from them alone (before, it waited for the body, then held all of it
    and its decoded copies in memory: 450 MiB)."""
    head = (
        f"POST /accounts/login/ HTTP/1.1\r\nHost: {web.host}:{web.port}\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {150 * MiB}\r\n"
        f"Accept: {BROWSER['Accept']}\r\n\r\n"
    ).encode()
    answer = exchange(web, head, timeout=15)
    assert answer.status == 413 and answer.content_type.startswith("text/html")
    assert b"Too much data" in answer.body and b"1 MiB" in answer.body


def test_a_streamed_body_is_cut_off_at_the_limit_and_the_worker_does_not_grow(web):
    """Chunked, a body has no declared length: it is read up to the limit and refused there. The
    workers' peak memory is measured around it (before the limit, 64 MiB grew it by about 190 MiB)."""
    for _ in range(8):  # every worker and thread has served a page before the measurement
        assert exchange(web, b"GET /accounts/login/ HTTP/1.1\r\nHost: x\r\n\r\n").status == 200
    before = web.peak_memory_kib()
    head = (
        b"POST /accounts/login/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nAccept: application/json\r\n\r\n"
    )
    answer = exchange(web, head, chunked(64 * MiB), timeout=30)
    assert answer.status == 413
    grown = (web.peak_memory_kib() - before) / 1024
    assert grown < 24, f"gunicorn's peak memory grew by {grown:.0f} MiB for a refused body"


def test_the_web_line_binds_the_address_in_host(tmp_path):
    with web_process(tmp_path, HOST="127.0.0.2") as web:
        assert listening_addresses(web.port) == {"127.0.0.2"}


def test_the_web_line_binds_loopback_by_default(web):
    assert listening_addresses(web.port) == {"127.0.0.1"}


# ---- bodies through the app: pages, envelopes, settings -------------------------------------------------


@pytest.fixture(name="portal")
def portal_fixture(app, redis_db):
    """A migrated portal with a client, its tool, a candidate and an operator."""
    app.extensions["db"].upgrade()
    with app.extensions["db"].session() as session:
        client = add_client(session, "vendor")
        add_tool(session, client, "excel")
        add_user(session, "candidate", password="secret")
        add_user(session, "operator", password="operator secret").is_admin = True
    return app


def test_a_browser_gets_the_sites_page_for_a_body_too_large(portal):
    client = portal.test_client()
    response = client.post("/accounts/login/", data={"username": "x" * (2 * MiB)}, headers=BROWSER)
    assert response.status_code == 413 and response.mimetype == "text/html"
    assert b"Too much data" in response.data and b"1 MiB" in response.data


@pytest.mark.parametrize(
    ("method", "path"),
    [("get", "/result/?access_token=R1&client=vendor"), ("get", "/fetch-token/?access_token=" + "A" * 43),
     ("post", "/fetch-token/"), ("get", "/.api/toolcall/v2/")],
)  # fmt: skip
def test_a_vendor_gets_the_api_envelope_for_a_body_too_large(portal, method, path):
    response = getattr(portal.test_client(), method)(path, data=b"x" * (MiB + 1))
    assert response.status_code == 413 and response.is_json
    assert response.json["type"] == "error" and response.json["data"]["error"] == "content-too-large"


def test_the_body_limit_is_a_setting(tmp_path, portal_environment, redis_db):
    portal_environment.setenv("TOOLCALL_MAX_CONTENT_LENGTH", "4096")
    app = create_app({"TESTING": True, "INSTANCE_PATH": tmp_path / "i", "REDIS_URL": REDIS_URL,
                      "DATABASE_URL": f"sqlite:///{tmp_path / 'p.sqlite3'}", "SECRET_KEY": "k"})  # fmt: skip
    app.extensions["db"].upgrade()
    assert app.config["MAX_CONTENT_LENGTH"] == 4096
    client = app.test_client()
    assert client.post("/accounts/login/", data={"username": "x" * 5000}).status_code == 413
    assert client.post("/accounts/login/", data={"username": "x" * 3000}).status_code == 400  # no CSRF token
    app.extensions["db"].dispose()


@pytest.mark.parametrize("value", ["0", "-1", "a lot", "1.5"])
def test_a_body_limit_that_is_no_positive_number_of_bytes_is_refused(tmp_path, portal_environment, value):
    portal_environment.setenv("TOOLCALL_MAX_CONTENT_LENGTH", value)
    with pytest.raises(ConfigurationError, match="TOOLCALL_MAX_CONTENT_LENGTH"):
        create_app({"INSTANCE_PATH": tmp_path, "SECRET_KEY": "k", "REDIS_URL": REDIS_URL})


def test_a_multipart_field_or_a_form_of_many_parts_over_their_limits_is_413(portal):
    client = portal.test_client()
    token = csrf(client.get("/accounts/login/").data)
    big_field = {"csrf_token": token, "username": "x" * (100 * 1024), "password": "p"}
    assert (
        client.post("/accounts/login/", data=big_field, content_type="multipart/form-data").status_code == 413
    )
    many = {"csrf_token": token, "username": "u", "password": "p", **{f"f{i}": "v" for i in range(300)}}
    assert client.post("/accounts/login/", data=many, content_type="multipart/form-data").status_code == 413
    fine = {"csrf_token": token, "username": "candidate", "password": "secret"}
    assert client.post("/accounts/login/", data=fine, content_type="multipart/form-data").status_code == 302


# ---- proxies ----------------------------------------------------------------------------------------------

PROXY = "10.1.2.3"


def proxied_logins(app, forwarded_for: str, count: int) -> list[int]:
    """``count`` failed logins arriving from ``PROXY`` on behalf of ``forwarded_for``."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = PROXY
    codes = []
    for i in range(count):
        token = csrf(client.get("/accounts/login/").data)
        response = client.post(
            # Over https as the proxy says, so Flask-WTF wants a Referer of this site too.
            "/accounts/login/", headers={"X-Forwarded-For": forwarded_for, "X-Forwarded-Proto": "https",
                                         "Referer": "https://localhost/accounts/login/"},
            data={"username": f"user{forwarded_for}-{i}", "password": "wrong", "csrf_token": token},
        )  # fmt: skip
        codes.append(response.status_code)
    return codes


def limited_portal(tmp_path, portal_environment, proxies: str | None):
    if proxies is not None:
        portal_environment.setenv("TOOLCALL_TRUSTED_PROXIES", proxies)
    app = create_app({"TESTING": True, "INSTANCE_PATH": tmp_path / "i", "REDIS_URL": REDIS_URL,
                      "DATABASE_URL": f"sqlite:///{tmp_path / 'p.sqlite3'}", "SECRET_KEY": "k",
                      "TOOLCALL_RATELIMIT_LOGIN_ADDRESS": "3/minute"})  # fmt: skip
    app.extensions["db"].upgrade()
    return app


def test_behind_one_trusted_proxy_each_client_has_its_own_login_bucket(
    tmp_path, portal_environment, redis_db
):
    app = limited_portal(tmp_path, portal_environment, "1")
    assert proxied_logins(app, "198.51.100.7", 4) == [401, 401, 401, 429]
    # Another client behind the same proxy is not locked out by the first one's failures.
    assert proxied_logins(app, "203.0.113.9", 3) == [401, 401, 401]
    # A client cannot pick another bucket by prepending addresses: only the proxy's hop is believed.
    assert proxied_logins(app, "192.0.2.1, 198.51.100.7", 1) == [429]
    app.extensions["db"].dispose()


@pytest.mark.parametrize("proxies", [None, "0"], ids=["unset", "zero"])
def test_without_trusted_proxies_x_forwarded_for_is_ignored(tmp_path, portal_environment, redis_db, proxies):
    """An attacker cannot pick their bucket: every forged address counts against the connection's."""
    app = limited_portal(tmp_path, portal_environment, proxies)
    assert app.config["TOOLCALL_TRUSTED_PROXIES"] == 0
    assert proxied_logins(app, "198.51.100.7", 3) == [401, 401, 401]
    assert proxied_logins(app, "203.0.113.9", 1) == [429]
    app.extensions["db"].dispose()


@pytest.mark.parametrize("value", ["-1", "one", "1.0"])
def test_trusted_proxies_must_be_a_count(tmp_path, portal_environment, value):
    portal_environment.setenv("TOOLCALL_TRUSTED_PROXIES", value)
    with pytest.raises(ConfigurationError, match="TOOLCALL_TRUSTED_PROXIES"):
        create_app({"INSTANCE_PATH": tmp_path, "SECRET_KEY": "k", "REDIS_URL": REDIS_URL})


def test_discovery_gives_out_the_public_url(tmp_path, portal_environment, redis_db):
    portal_environment.setenv("TOOLCALL_PUBLIC_URL", "https://exams.example.org/portal")
    app = create_app({"INSTANCE_PATH": tmp_path, "SECRET_KEY": "k", "REDIS_URL": REDIS_URL})
    assert app.config["TOOLCALL_PUBLIC_URL"] == "https://exams.example.org/portal"  # no trailing slash
    # Whatever Host the request names: the root URL is the operator's, not the client's.
    answer = app.test_client().get("/.api/toolcall/v2/", headers={"Host": "evil.example"})
    assert answer.json["api"]["urls"]["root-url"] == "https://exams.example.org/portal/"


@pytest.mark.parametrize(
    ("port", "url"), [(None, "http://127.0.0.1:5000"), ("5123", "http://127.0.0.1:5123")]
)
def test_the_public_url_defaults_to_the_local_port(tmp_path, portal_environment, port, url):
    portal_environment.delenv("TOOLCALL_PUBLIC_URL", raising=False)
    portal_environment.delenv("HOST", raising=False)
    if port is None:
        portal_environment.delenv("PORT", raising=False)
    else:
        portal_environment.setenv("PORT", port)
    app = create_app({"INSTANCE_PATH": tmp_path, "SECRET_KEY": "k", "REDIS_URL": REDIS_URL})
    assert (app.config["TOOLCALL_PUBLIC_URL"], app.config["HOST"]) == (url, "127.0.0.1")


# ---- text the database cannot store ---------------------------------------------------------------------


@pytest.fixture(name="pg_portal")
def pg_portal_fixture(postgres_url, tmp_path, portal_environment, redis_db):
    """The portal on a PostgreSQL schema of its own, with rate limits off (many logins)."""
    with scratch_postgres_schema(postgres_url) as url:
        app = create_app({"TESTING": True, "INSTANCE_PATH": tmp_path / "i", "DATABASE_URL": url,
                          "REDIS_URL": REDIS_URL, "SECRET_KEY": "k", "TOOLCALL_RATELIMIT": False})  # fmt: skip
        app.extensions["db"].upgrade()
        with app.extensions["db"].session() as session:
            client = add_client(session, "vendor")
            add_tool(session, client, "excel")
            add_user(session, "candidate", password="secret")
            add_user(session, "operator", password="operator secret").is_admin = True
        yield app
        app.extensions["db"].dispose()


NUL = "\x00"
#: (who, method, path, form): a NUL in a form field, a path or a query, everywhere a page takes one.
NUL_REQUESTS = [
    (None, "post", "/accounts/login/", {"username": f"cand{NUL}idate", "password": "secret"}),
    (None, "post", "/accounts/login/", {"username": "candidate", "password": f"sec{NUL}ret"}),
    (None, "post", "/accounts/login/?next=/%00", {"username": "candidate", "password": "secret"}),
    ("candidate", "get", "/tooluser/tools/%00/", None),
    ("candidate", "post", "/tooluser/tools/ex%00cel/", {}),
    ("operator", "get", "/ops/toolcalls/?tool=%00", None),
    ("operator", "get", "/ops/toolcalls/?status=x%00", None),
    ("operator", "get", "/ops/fetches/?state=%00", None),
    ("operator", "get", "/ops/?chart=%00", None),
    ("operator", "post", "/ops/clients/new/", {"name": f"a{NUL}", "start_url": "https://a.example/s/",
                                               "result_url": "https://a.example/r/"}),
    ("operator", "post", "/ops/clients/new/", {"name": "acme", "start_url": f"https://a.example/{NUL}/",
                                               "result_url": "https://a.example/r/"}),
    ("operator", "post", "/ops/clients/new/", {"name": "acme", "start_url": "https://a.example/s/",
                                               "result_url": "https://a.example/r/", "secret": f"s{NUL}"}),
    ("operator", "post", "/ops/tools/new/", {"slug": "word", "client": "1", "name": f"W{NUL}rd",
                                             "deadline_minutes": "60"}),
    ("operator", "post", "/ops/tools/new/", {"slug": "word", "client": "1", "name": "Word",
                                             "description": NUL, "deadline_minutes": "60"}),
    ("operator", "post", "/ops/fetches/1/retry", {"next": f"/ops/{NUL}"}),
]  # fmt: skip


@pytest.mark.parametrize(("who", "method", "path", "form"), NUL_REQUESTS)
def test_a_nul_in_a_form_field_or_a_url_is_a_400_on_postgresql(pg_portal, who, method, path, form):
    passwords = {"candidate": "secret", "operator": "operator secret"}
    client = logged_in(pg_portal, who, passwords[who]) if who else pg_portal.test_client()
    kwargs = {}
    if form is not None:
        kwargs["data"] = {
            **form,
            "csrf_token": csrf(client.get("/accounts/logout/" if who else "/accounts/login/").data),
        }
    response = getattr(client, method)(path, headers=BROWSER, **kwargs)
    assert response.status_code == 400 and response.mimetype == "text/html", response.data[:300]
    assert b"NUL" in response.data
    with pg_portal.extensions["db"].session() as session:
        assert session.scalar(select(func.count()).select_from(Client)) == 1
        assert session.scalar(select(func.count()).select_from(Exam)) == 1


def test_a_nul_in_a_vendor_api_parameter_gets_the_apis_own_answer_on_postgresql(pg_portal):
    """The vendor API answers by its own table (docs/api.md §2): a NUL in a client name is an unknown client,
    in a token an invalid token."""
    client = pg_portal.test_client()
    cases = [
        ("/result/?access_token=R1&client=vendor%00", "unknown-client"),
        ("/result/?access_token=R%00&client=vendor", "token-invalid"),
        ("/fetch-token/?access_token=%00", "token-invalid"),
        ("/fetch-token/?access_token=" + "A" * 42 + "%00", "token-invalid"),
    ]
    for path, code in cases:
        response = client.get(path)
        assert response.is_json and response.json["data"]["error"] == code, (path, response.data)


@pytest.mark.parametrize(
    "body",
    ["5", "[]", json.dumps({"username": "\ud800", "password": "secret"}),
     json.dumps({"username": f"cand{NUL}idate", "password": "secret"})],
    ids=["number", "list", "lone-surrogate", "nul"],
)  # fmt: skip
def test_a_json_body_posted_to_a_form_page_is_415(pg_portal, body):
    """Flask-WTF reads a JSON body as form data: the only way a lone surrogate (which no database
    encoding can store) reaches a query, and a body that is no object was a 500."""
    client = pg_portal.test_client()
    token = csrf(client.get("/accounts/login/").data)
    response = client.post(
        "/accounts/login/",
        data=body,
        content_type="application/json",
        headers={"X-CSRFToken": token, **BROWSER},
    )
    assert response.status_code == 415 and response.mimetype == "text/html"
    assert login(client, "candidate", "secret").status_code == 302  # forms still work
