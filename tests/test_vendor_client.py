"""The vendor client against real HTTP servers on 127.0.0.1 (docs/api.md §3–§5).

Every vendor here is a ``ThreadingHTTPServer`` on an ephemeral port with a per-test handler; nothing
is mocked and no traffic leaves 127.0.0.1. Servers that must stall wait on an event that the fixture
sets on teardown, so no test sleeps to synchronise; time is only measured to bound how long a
refusal took.
"""

from __future__ import annotations

import base64
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from webapp.fetches import retry_delay
from webapp.vendor_client import FetchOutcome, add_query, fetch_result, parse_retry_after
from webapp.webhooks import sign_webhook, verify_webhook

Respond = Callable[[BaseHTTPRequestHandler, threading.Event], None]


@dataclass
class Vendor:
    """A local vendor: its base URL, the requests it received, and the event that ends stalls."""

    base: str
    port: int
    stop: threading.Event
    received: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def url(self, path: str = "/result") -> str:
        return self.base + path

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.received]


@pytest.fixture
def vendor() -> Iterator[Callable[[Respond], Vendor]]:
    servers: list[tuple[ThreadingHTTPServer, Vendor]] = []

    def start(respond: Respond) -> Vendor:
        stop = threading.Event()
        box: list[Vendor] = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                box[0].received.append((self.path, dict(self.headers.items())))
                try:
                    respond(self, stop)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client hung up on purpose (too large, timed out)

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        port = server.server_address[1]
        box.append(Vendor(f"http://127.0.0.1:{port}", port, stop))
        # A short poll keeps teardown (shutdown waits for one poll) quick.
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        servers.append((server, box[0]))
        return box[0]

    yield start
    for server, started in servers:
        started.stop.set()
        server.shutdown()
        server.server_close()


def reply(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Respond:
    def respond(handler: BaseHTTPRequestHandler, stop: threading.Event) -> None:
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return respond


def fetch(url: str, **overrides: object) -> FetchOutcome:
    arguments: dict[str, object] = {
        "client_secret": None,
        "webhook_id": "42",
        "production": False,
        "within_grace": False,
    }
    arguments.update(overrides)
    return fetch_result(url, "T0k3n", **arguments)  # type: ignore[arg-type]


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


RESULT = b'{"token": "T0k3n", "type": "result", "data": {}}'


# --- Success and the request itself -----------------------------------------------------------------


def test_a_200_json_answer_is_ok_with_its_body(vendor):
    v = vendor(reply(200, RESULT, {"Content-Type": "application/json"}))
    outcome = fetch(v.url())
    assert outcome == FetchOutcome("ok", 200, RESULT)
    path, headers = v.received[0]
    assert path == "/result?access_token=T0k3n"
    assert headers["Accept"] == "application/json"


def test_the_token_is_added_to_an_existing_query_string(vendor):
    v = vendor(reply(200, RESULT))
    assert fetch(v.url("/result?lang=de&x=1")).kind == "ok"
    assert v.paths == ["/result?lang=de&x=1&access_token=T0k3n"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://v.example/start", "https://v.example/start?access_token=T"),
        ("https://v.example/start?a=1", "https://v.example/start?a=1&access_token=T"),
        ("https://v.example/start?", "https://v.example/start?access_token=T"),
        ("https://v.example/s?a=1#top", "https://v.example/s?a=1&access_token=T#top"),
    ],
)
def test_add_query_uses_question_mark_or_ampersand_as_needed(url, expected):
    assert add_query(url, access_token="T") == expected


def test_add_query_percent_encodes_values():
    assert add_query("https://v.example/", access_token="a b&c=d") == (
        "https://v.example/?access_token=a%20b%26c%3Dd"
    )


# --- Statuses ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_retried(vendor, status):
    outcome = fetch(vendor(reply(status, b"down")).url())
    assert (outcome.kind, outcome.status, outcome.error, outcome.retry_after) == (
        "retry",
        status,
        f"HTTP {status}",
        None,
    )
    assert outcome.body == b"down"  # kept for the operator


def test_429_with_retry_after_seconds_is_retried_after_them(vendor):
    outcome = fetch(vendor(reply(429, headers={"Retry-After": "7"})).url())
    assert (outcome.kind, outcome.retry_after) == ("retry", 7.0)


def test_429_with_retry_after_as_http_date_is_retried_after_it(vendor):
    when = formatdate(time.time() + 120, usegmt=True)
    outcome = fetch(vendor(reply(429, headers={"Retry-After": when})).url())
    assert outcome.kind == "retry"
    assert 100 <= outcome.retry_after <= 120


@pytest.mark.parametrize("value", ["99999", formatdate(time.time() + 86400, usegmt=True)])
def test_retry_after_is_capped_at_an_hour(vendor, value):
    outcome = fetch(vendor(reply(503, headers={"Retry-After": value})).url())
    assert (outcome.kind, outcome.retry_after) == ("retry", 3600.0)


def test_retry_after_is_ignored_on_500(vendor):
    outcome = fetch(vendor(reply(500, headers={"Retry-After": "7"})).url())
    assert (outcome.kind, outcome.retry_after) == ("retry", None)


def test_retry_after_parsing_edges():
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-5") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: now


@pytest.mark.parametrize("status", [404, 409, 425])
def test_not_yet_statuses_are_retried_within_the_grace_period(vendor, status):
    outcome = fetch(vendor(reply(status)).url(), within_grace=True)
    assert (outcome.kind, outcome.error) == ("retry", f"HTTP {status}")


@pytest.mark.parametrize("status", [404, 409, 425])
def test_not_yet_statuses_fail_after_the_grace_period(vendor, status):
    outcome = fetch(vendor(reply(status)).url(), within_grace=False)
    assert (outcome.kind, outcome.error) == ("fail", f"HTTP {status}")


@pytest.mark.parametrize("status", [400, 401, 403])
def test_other_client_errors_fail_even_within_grace(vendor, status):
    outcome = fetch(vendor(reply(status)).url(), within_grace=True)
    assert (outcome.kind, outcome.status, outcome.error) == ("fail", status, f"HTTP {status}")


@pytest.mark.parametrize("status", [301, 302, 307])
def test_redirects_fail_and_are_not_followed(vendor, status):
    v = vendor(reply(status, headers={"Location": "/elsewhere"}))
    outcome = fetch(v.url(), within_grace=True)
    assert (outcome.kind, outcome.status) == ("fail", status)
    assert outcome.error == f"redirect (HTTP {status}) to {v.url('/elsewhere')} not followed"
    assert v.paths == ["/result?access_token=T0k3n"]  # the Location was never requested


def test_a_redirect_to_a_malformed_location_fails_and_says_so(vendor):
    v = vendor(reply(302, headers={"Location": "http://[::1/x"}))
    outcome = fetch(v.url(), within_grace=True)
    assert (outcome.kind, outcome.status) == ("fail", 302)
    assert outcome.error == "redirect (HTTP 302) to an invalid location 'http://[::1/x' not followed"
    assert v.paths == ["/result?access_token=T0k3n"]


# --- URLs that cannot be fetched --------------------------------------------------------------------

#: A client's result URL that no request can be made to, and the reason recorded for it.
UNFETCHABLE = [
    ("https://vendor..example.org/", "host name 'vendor..example.org' has an empty label"),
    ("https://" + "a" * 64 + ".example.org/", "a label longer than 63 characters"),
    ("https://" + ("a" * 60 + ".") * 5 + "org/", "host name is longer than 253 characters"),
    ("http://[::1", "Invalid IPv6 URL"),
    ("http://[::1/result", "Invalid IPv6 URL"),
    ("http://[fe80::zz]/result", "'fe80::zz' does not appear to be an IPv4 or IPv6 address"),
    ("http://vendor.example:99999/", "Port out of range 0-65535"),
    ("http://vendor.example:port/", "Port could not be cast to integer value as 'port'"),
    ("http:///result", "it names no host"),
]


@pytest.mark.parametrize(("url", "reason"), UNFETCHABLE)
def test_a_url_that_cannot_be_fetched_fails_with_the_reason(url, reason):
    outcome = fetch(url)
    assert (outcome.kind, outcome.status) == ("fail", None)
    assert outcome.error.startswith("invalid vendor URL: ") and reason in outcome.error, outcome.error


# --- Connections and time ---------------------------------------------------------------------------


def test_connection_refused_is_retried():
    outcome = fetch(f"http://127.0.0.1:{free_port()}/result")
    assert outcome == FetchOutcome("retry", None, b"", "connection refused")


def test_a_vendor_that_never_answers_times_out_and_is_retried(vendor):
    v = vendor(lambda handler, stop: stop.wait())
    started = time.monotonic()
    outcome = fetch(v.url(), total_timeout=0.5)
    assert (outcome.kind, outcome.error) == ("retry", "timed out after 0.5 s")
    assert time.monotonic() - started < 5


def drip_body(handler: BaseHTTPRequestHandler, stop: threading.Event) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    handler.wfile.flush()
    for _ in range(1000):
        if stop.wait(0.05):  # a byte every 50 ms: never idle long enough for a per-read timeout
            return
        handler.wfile.write(b"x")
        handler.wfile.flush()


def drip_headers(handler: BaseHTTPRequestHandler, stop: threading.Event) -> None:
    head = b"HTTP/1.0 200 OK\r\n" + b"X-Slow: yes\r\n" * 100 + b"\r\n"
    for byte in head:
        if stop.wait(0.05):
            return
        handler.wfile.write(bytes([byte]))
        handler.wfile.flush()


@pytest.mark.parametrize("respond", [drip_body, drip_headers], ids=["body", "headers"])
def test_a_slow_drip_is_cut_off_at_the_total_budget(vendor, respond):
    v = vendor(respond)
    started = time.monotonic()
    outcome = fetch(v.url(), total_timeout=1.0)
    elapsed = time.monotonic() - started
    assert (outcome.kind, outcome.error) == ("retry", "timed out after 1 s")
    assert elapsed < 5  # the drip would take 50 s; per-read timeouts would never fire


# --- Size -------------------------------------------------------------------------------------------

TEN_MB = 10 * 1024 * 1024


def send_ten_mb(declare_length: bool) -> Respond:
    def respond(handler: BaseHTTPRequestHandler, stop: threading.Event) -> None:
        handler.send_response(200)
        if declare_length:
            handler.send_header("Content-Length", str(TEN_MB))
        handler.end_headers()
        chunk = b"x" * 65536
        for _ in range(TEN_MB // len(chunk)):
            if stop.is_set():
                return
            handler.wfile.write(chunk)

    return respond


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "until-close"])
def test_a_body_over_the_limit_fails_without_reading_it_all(vendor, declare_length):
    started = time.monotonic()
    outcome = fetch(vendor(send_ten_mb(declare_length)).url())
    assert (outcome.kind, outcome.status, outcome.error) == ("fail", 200, "body larger than 1 MiB")
    assert len(outcome.body) <= 1024 * 1024
    assert time.monotonic() - started < 5


def test_a_body_of_exactly_max_bytes_is_ok_and_one_more_is_too_large(vendor):
    assert fetch(vendor(reply(200, b"x" * 100)).url(), max_bytes=100).kind == "ok"
    outcome = fetch(vendor(reply(200, b"x" * 101)).url(), max_bytes=100)
    assert (outcome.kind, outcome.error) == ("fail", "body larger than 100 bytes")


# --- Signed fetches ----------------------------------------------------------------------------------

SECRET = "whsec_" + base64.b64encode(b"a vendor's thirty-two byte key!!").decode()
WEBHOOK_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def lowered(headers: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def test_no_webhook_headers_without_a_secret(vendor):
    v = vendor(reply(200, RESULT))
    fetch(v.url(), client_secret=None)
    fetch(v.url(), client_secret="")
    for _, headers in v.received:
        assert not set(WEBHOOK_HEADERS) & set(lowered(headers))


def test_webhook_headers_with_a_secret_verify(vendor):
    v = vendor(reply(200, RESULT))
    assert fetch(v.url(), client_secret=SECRET, webhook_id="fetch-17").kind == "ok"
    headers = lowered(v.received[0][1])
    assert headers["webhook-id"] == "fetch-17"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    assert headers["webhook-signature"].startswith("v1,")
    # Signed over the token asked for, not over the empty body of the GET.
    assert verify_webhook(SECRET, v.received[0][1], '{"access_token":"T0k3n"}')
    assert not verify_webhook(SECRET, v.received[0][1], b"")
    assert not verify_webhook(SECRET, v.received[0][1], '{"access_token":"another"}')


def test_the_webhook_id_is_stable_across_attempts(vendor):
    v = vendor(reply(503))
    fetch(v.url(), client_secret=SECRET, webhook_id="fetch-17")
    fetch(v.url(), client_secret=SECRET, webhook_id="fetch-17")
    assert [lowered(h)["webhook-id"] for _, h in v.received] == ["fetch-17", "fetch-17"]


def test_a_whsec_secret_that_is_not_base64_fails_the_fetch_without_calling(vendor):
    with pytest.raises(ValueError, match="not base64"):
        sign_webhook("whsec_not*base64", "msg_1", 1)
    v = vendor(reply(200, RESULT))
    outcome = fetch(v.url(), client_secret="whsec_not*base64")
    assert outcome.kind == "fail" and "not base64" in outcome.error
    assert v.received == []


# --- Production -------------------------------------------------------------------------------------


def test_production_refuses_http_urls(vendor):
    v = vendor(reply(200, RESULT))
    outcome = fetch(v.url(), production=True)
    assert outcome == FetchOutcome("fail", None, b"", "http vendor URLs are refused in production")
    assert v.received == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_production_refuses_a_loopback_host_before_connecting(vendor, host):
    v = vendor(reply(200, RESULT))
    outcome = fetch(f"https://{host}:{v.port}/result", production=True)
    assert outcome.kind == "fail"
    assert "is loopback" in outcome.error and "public addresses only" in outcome.error
    assert v.received == []


# --- Backoff ----------------------------------------------------------------------------------------


class FixedRandom:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(0, 5), (1, 10), (2, 20), (5, 160), (9, 2560), (10, 3600), (50, 3600)]
)
def test_the_retry_delay_is_half_fixed_half_random_up_to_an_hour(attempt, ceiling):
    assert retry_delay(attempt, rng=FixedRandom(0.0)) == ceiling / 2
    assert retry_delay(attempt, rng=FixedRandom(0.999999)) == pytest.approx(ceiling, rel=1e-5)
    rng = random.Random(attempt)
    for _ in range(100):
        assert ceiling / 2 <= retry_delay(attempt, rng=rng) <= ceiling


def test_the_retry_delay_refuses_a_negative_attempt():
    with pytest.raises(ValueError, match="attempt must be 0 or more"):
        retry_delay(-1)


@pytest.mark.parametrize("value", ["²", "١٢", "1" * 5000])
def test_odd_retry_after_values_do_not_raise(value):
    assert parse_retry_after(value) in (None, 3600)
