"""The demo vendor (examples/vendor) with the real portal: both run as HTTP servers on 127.0.0.1,
pointing at each other, and a ``requests.Session`` plays the candidate's browser (docs/api.md §1–§5).

The portal is ``webapp.create_app`` on a SQLite file of its own and Redis database 6, migrated and
loaded with the demo data through its CLI; its client "testclient" is pointed at the vendor's real
port with ``clients add``. The portal's result fetch runs in a Celery worker, which is not part of
these tests: they check that the fetch is *owed*, then make it themselves with the portal's own
``fetch_result`` and check the body with the portal's own ``attribute``/``validate``.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests
from flask import Flask
from helpers import suite_redis_url
from portal_support import (
    empty_redis,
)
from sqlalchemy import select
from werkzeug.serving import BaseWSGIServer, make_server

from examples.vendor.app import create_app as create_vendor
from webapp import create_app as create_portal
from webapp.models import Client, ResultFetch, ToolCall
from webapp.results import attribute, validate
from webapp.vendor_client import FetchOutcome, fetch_result
from webapp.webhooks import sign_webhook

#: The Redis database of these tests (portal tests use 4, worker tests 8-15).
REDIS_URL = suite_redis_url(6)
PORTAL_KEY = "a test key"
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
PLAIN_SECRET = "a shared secret"
WHSEC_SECRET = "whsec_" + base64.b64encode(b"sixteen byte key" * 2).decode()
ALL_RIGHT = {"q1": "sum", "q2": "absolute", "q3": "equals"}
ONE_RIGHT = {"q1": "sum", "q2": "currency", "q3": "hash"}


# ---- two servers ------------------------------------------------------------------------------------


class Server:
    """A WSGI app served on an ephemeral port of 127.0.0.1 by a thread, until ``stop``."""

    def __init__(self, app: Flask):
        self.server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.port}"
        # A short poll keeps shutdown (which waits for one poll) quick.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)
        self.server.server_close()


@dataclass
class System:
    portal: Flask
    vendor: Flask
    portal_url: str
    vendor_url: str
    secret: str | None

    def session(self):
        return self.portal.extensions["db"].session()


@pytest.fixture(name="redis_db6")
def redis_db6_fixture() -> Iterator[None]:
    with empty_redis(REDIS_URL):
        yield


def cli(app: Flask, *args: str) -> None:
    result = app.test_cli_runner().invoke(args=list(args))
    assert result.exit_code == 0, f"{' '.join(args)}: {result.output}{result.exception!r}"


@pytest.fixture(name="start_system")
def start_system_fixture(
    tmp_path: Path, portal_environment: pytest.MonkeyPatch, redis_db6: None
) -> Iterator[Callable[..., System]]:
    """Starts the portal and the demo vendor; ``portal_secret`` is testclient's secret at the
    portal, ``vendor_secret`` the one the vendor uses."""
    portal_environment.setenv("TOOLCALL_RATELIMIT", "off")
    started: list[tuple[Flask, list[Server]]] = []

    def start(portal_secret: str | None = None, vendor_secret: str | None = None) -> System:
        portal = create_portal(
            {
                "INSTANCE_PATH": tmp_path / "portal",
                "DATABASE_URL": f"sqlite:///{tmp_path / 'portal.sqlite3'}",
                "REDIS_URL": REDIS_URL,
                "CELERY_BROKER_URL": REDIS_URL,
                "CELERY_RESULT_BACKEND": REDIS_URL,
                "SECRET_KEY": PORTAL_KEY,
                "TOOLCALL_RATELIMIT": False,
            }
        )
        servers: list[Server] = []
        started.append((portal, servers))
        cli(portal, "init-db")
        cli(portal, "load-demo")
        servers.append(Server(portal))
        vendor = create_vendor(
            {
                "INSTANCE_PATH": tmp_path / "vendor",
                "PORTAL_URL": servers[0].url,
                "CLIENT_NAME": "testclient",
                "CLIENT_SECRET": vendor_secret,
                "SECRET_KEY": "the vendor's test key",
            }
        )
        servers.append(Server(vendor))
        vendor_url = servers[1].url
        secret = ["--secret", portal_secret] if portal_secret else []
        cli(portal, "clients", "add", "testclient", "--start-url", f"{vendor_url}/start/",
            "--result-url", f"{vendor_url}/result-data/", *secret)  # fmt: skip
        return System(portal, vendor, servers[0].url, vendor_url, vendor_secret)

    yield start
    for portal, servers in started:
        for server in servers:
            server.stop()
        portal.extensions["celery"].close()
        portal.extensions["start_tokens"].redis.close()
        portal.extensions["db"].dispose()


# ---- the candidate's browser ------------------------------------------------------------------------


def browser() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxies from the environment between 127.0.0.1 and itself
    session.headers["Accept"] = BROWSER_ACCEPT
    return session


def hidden(html: str, name: str) -> str:
    match = re.search(rf'name="{name}"[^>]*\bvalue="([^"]+)"', html)
    assert match, f"no hidden field {name} in:\n{html}"
    return match.group(1)


def log_in(user: requests.Session, system: System) -> None:
    form = user.get(f"{system.portal_url}/accounts/login/")
    response = user.post(
        form.url, data={"username": "user", "password": "user", "csrf_token": hidden(form.text, "csrf_token")}
    )
    assert response.status_code == 200 and response.url == f"{system.portal_url}/", response.text


def start_my_tool(user: requests.Session, system: System) -> str:
    """Presses the start button of my-tool; the URL the portal sends the browser to."""
    home = user.get(f"{system.portal_url}/")
    response = user.post(
        f"{system.portal_url}/tooluser/tools/my-tool/",
        data={"csrf_token": hidden(home.text, "csrf_token")},
        allow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return response.headers["Location"]


def submit(user: requests.Session, exam: requests.Response, answers: dict[str, str]) -> requests.Response:
    """Sends the exam form of page ``exam`` with ``answers``, not following the redirect."""
    action = re.search(r'<form method="post" action="([^"]+)"', exam.text).group(1)
    data = {"csrf": hidden(exam.text, "csrf"), **answers}
    return user.post(urljoin(exam.url, action), data=data, allow_redirects=False)


def take_exam(system: System, answers: dict[str, str] = ALL_RIGHT) -> str:
    """A candidate logs in, starts my-tool and sends ``answers``; the result token R."""
    user = browser()
    log_in(user, system)
    exam = user.get(start_my_tool(user, system))
    assert exam.status_code == 200, exam.text
    return result_token(system, submit(user, exam, answers))


def result_token(system: System, submitted: requests.Response) -> str:
    """R, from the vendor's redirect to the portal's result page (which must be where it goes)."""
    assert submitted.status_code == 303, submitted.text
    location = urlsplit(submitted.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == f"{system.portal_url}/result/"
    query = parse_qs(location.query)
    assert query["client"] == ["testclient"]
    return query["access_token"][0]


def owed_fetches(system: System, token: str) -> list[ResultFetch]:
    with system.session() as session:
        client = session.scalar(select(Client).where(Client.name == "testclient"))
        return list(
            session.scalars(
                select(ResultFetch).where(ResultFetch.client_id == client.id, ResultFetch.token == token)
            )
        )


def fetch_like_the_worker(system: System, token: str, secret: str | None) -> FetchOutcome:
    """The portal's result fetch for R, as its Celery task makes it (signed when there is a secret)."""
    (fetch,) = owed_fetches(system, token)
    return fetch_result(
        f"{system.vendor_url}/result-data/",
        token,
        client_secret=secret,
        webhook_id=str(fetch.id),
        production=False,
        within_grace=True,
    )


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the whole flow ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "secret", [None, PLAIN_SECRET, WHSEC_SECRET], ids=["no-secret", "plain-secret", "whsec-secret"]
)
def test_a_candidate_takes_the_exam_and_the_portal_can_fetch_a_valid_result(start_system, secret):
    system = start_system(portal_secret=secret, vendor_secret=secret)
    user = browser()
    log_in(user, system)

    start_url = start_my_tool(user, system)
    assert start_url.startswith(f"{system.vendor_url}/start/?access_token=")
    exam = user.get(start_url)  # the vendor fetches the start data (with X-Toolcall-Auth if secret)
    assert exam.status_code == 200 and exam.url == f"{system.vendor_url}/exam/", exam.text
    assert "Hello Uma" in exam.text

    token = result_token(system, submit(user, exam, ALL_RIGHT))
    (fetch,) = owed_fetches(system, token)
    assert fetch.state == "owed"
    page = user.get(f"{system.portal_url}/result/", params={"access_token": token, "client": "testclient"})
    assert page.status_code == 200 and "Fetching your result" in page.text
    assert len(owed_fetches(system, token)) == 1  # the browser's report repeats the vendor's

    outcome = fetch_like_the_worker(system, token, secret)
    assert outcome.kind == "ok", outcome
    with system.session() as session:
        client = session.scalar(select(Client).where(Client.name == "testclient"))
        attributed, document = attribute(session, client, outcome.body, PORTAL_KEY, [])
        fields = validate(document, token, persnr=attributed.persnr, slug=attributed.slug)
        toolcall = session.get(ToolCall, attributed.id)
        assert (toolcall.user.username, toolcall.tool.slug) == ("user", "my-tool")
        assert attributed.status == toolcall.status == "start-data-sent"
    assert document["type"] == "result" and document["token"] == token
    assert (fields.exam, fields.exam_type, fields.passed, fields.score) == ("my-tool", "start", True, 3)
    assert fields.participant_id and fields.timestamp.tzinfo is not None


def test_one_right_answer_of_three_is_reported_as_failed(start_system):
    system = start_system()
    token = take_exam(system, ONE_RIGHT)
    outcome = fetch_like_the_worker(system, token, None)
    with system.session() as session:
        client = session.scalar(select(Client).where(Client.name == "testclient"))
        attributed, document = attribute(session, client, outcome.body, PORTAL_KEY, [])
        fields = validate(document, token, persnr=attributed.persnr, slug=attributed.slug)
    assert (fields.passed, fields.score) == (False, 1)


def test_sending_the_exam_twice_reports_one_result(start_system):
    system = start_system()
    user = browser()
    log_in(user, system)
    exam = user.get(start_my_tool(user, system))
    first = result_token(system, submit(user, exam, ALL_RIGHT))
    again = result_token(system, submit(user, exam, ONE_RIGHT))  # the back button, then send again
    assert again == first
    assert len(owed_fetches(system, first)) == 1


def test_the_vendors_cookie_leaves_the_portal_login_alone(start_system):
    system = start_system()
    user = browser()
    log_in(user, system)
    user.get(start_my_tool(user, system))
    # Both sites are on 127.0.0.1, where cookies are shared across ports.
    assert user.get(f"{system.portal_url}/", allow_redirects=False).status_code == 200


# ---- client authentication and signed calls --------------------------------------------------------


@pytest.mark.parametrize("vendor_secret", [None, "not the secret"], ids=["no-secret", "wrong-secret"])
def test_a_vendor_without_the_right_secret_gets_no_start_data_and_says_why(start_system, vendor_secret):
    system = start_system(portal_secret=PLAIN_SECRET, vendor_secret=vendor_secret)
    user = browser()
    log_in(user, system)
    page = user.get(start_my_tool(user, system))
    assert page.status_code == 401 and "client-auth-failed" in page.text
    with system.session() as session:
        (toolcall,) = session.scalars(select(ToolCall))
        assert toolcall.status == "start-tk-sent"  # the token was not burnt


def signature(secret: str, fetch_id: str, token: str, age: int = 0) -> dict[str, str]:
    """Standard Webhooks headers over the fetch payload of ``token``, made ``age`` seconds ago."""
    stamp = int(time.time()) - age
    payload = json.dumps({"access_token": token}, separators=(",", ":"))
    return {
        "webhook-id": fetch_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign_webhook(secret, fetch_id, stamp, payload),
    }


@pytest.mark.parametrize(
    "headers",
    [
        lambda fetch_id, token: {},
        lambda fetch_id, token: signature("not the secret", fetch_id, token),
        lambda fetch_id, token: {**signature(PLAIN_SECRET, fetch_id, token), "webhook-id": "another id"},
        lambda fetch_id, token: signature(PLAIN_SECRET, fetch_id, token, age=600),
        # A signature the portal made for another result token (captured, or asked for by a
        # vendor's own report) opens no other result.
        lambda fetch_id, token: signature(PLAIN_SECRET, fetch_id, "another result token"),
        lambda fetch_id, token: signature(PLAIN_SECRET, fetch_id, ""),
    ],
    ids=["unsigned", "wrong-secret", "other-id", "ten-minutes-old", "other-token", "no-token"],
)
def test_result_data_without_a_valid_signature_is_401(start_system, headers):
    system = start_system(portal_secret=PLAIN_SECRET, vendor_secret=PLAIN_SECRET)
    token = take_exam(system)
    (fetch,) = owed_fetches(system, token)
    response = requests.get(
        f"{system.vendor_url}/result-data/",
        params={"access_token": token},
        headers={"Accept": "application/json", **headers(str(fetch.id), token)},
        timeout=10,
    )
    assert response.status_code == 401
    assert response.json()["data"]["error"] == "signature-invalid"
    assert token not in response.text
    # The same request signed for its own token is served.
    signed = signature(PLAIN_SECRET, str(fetch.id), token)
    response = requests.get(f"{system.vendor_url}/result-data/", params={"access_token": token},
                            headers={"Accept": "application/json", **signed}, timeout=10)  # fmt: skip
    assert response.status_code == 200 and response.json()["token"] == token


def test_the_portals_fetch_with_the_wrong_secret_fails_for_good(start_system):
    system = start_system(portal_secret=PLAIN_SECRET, vendor_secret=PLAIN_SECRET)
    token = take_exam(system)
    outcome = fetch_like_the_worker(system, token, "not the secret")
    assert (outcome.kind, outcome.status) == ("fail", 401)


# ---- errors the candidate sees ----------------------------------------------------------------------


def test_a_used_start_token_shows_the_portals_error(start_system):
    system = start_system()
    user = browser()
    log_in(user, system)
    start_url = start_my_tool(user, system)
    assert user.get(start_url).status_code == 200
    again = user.get(start_url)
    assert again.status_code == 401
    assert "token-expired" in again.text and "start the exam again" in again.text


def test_an_unreachable_portal_shows_a_page_not_a_crash(tmp_path):
    vendor = create_vendor(
        {
            "INSTANCE_PATH": tmp_path,
            "PORTAL_URL": f"http://127.0.0.1:{unused_port()}",
            "CLIENT_SECRET": None,
            "SECRET_KEY": "k",
        }
    )
    page = vendor.test_client().get("/start/?access_token=T")
    assert page.status_code == 502 and "could not be reached" in page.text.replace("\n", " ")


def test_result_data_for_an_unknown_token_is_a_404_json_error(tmp_path):
    vendor = create_vendor({"INSTANCE_PATH": tmp_path, "CLIENT_SECRET": None, "SECRET_KEY": "k"})
    response = vendor.test_client().get("/result-data/?access_token=nobody")
    assert response.status_code == 404
    assert response.json == {
        "type": "error",
        "token": "nobody",
        "data": {"error": "unknown-token", "msg": "no result is stored under this token"},
    }


def test_a_whsec_secret_that_is_not_base64_is_refused_at_startup(tmp_path):
    with pytest.raises(ValueError, match="whsec_"):
        create_vendor({"INSTANCE_PATH": tmp_path, "CLIENT_SECRET": "whsec_not base64!", "SECRET_KEY": "k"})


@pytest.mark.parametrize(
    "stamp", ["\u00b2", "1" * 5000, "-1", ""], ids=["superscript", "huge", "negative", "empty"]
)
def test_a_malformed_signature_timestamp_is_401_not_a_crash(tmp_path, stamp):
    vendor = create_vendor({"INSTANCE_PATH": tmp_path, "CLIENT_SECRET": PLAIN_SECRET, "SECRET_KEY": "k"})
    headers = {"webhook-id": "1", "webhook-timestamp": stamp, "webhook-signature": "v1,AAAA"}
    response = vendor.test_client().get("/result-data/?access_token=R", headers=headers)
    assert response.status_code == 401
