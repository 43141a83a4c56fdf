"""Outbound HTTP: what a call through ``get`` comes to, against a real server on 127.0.0.1 (docs/api.md §5).

The result fetch's defences end to end (time budget, drips, size, redirects, production refusals)
are in test_vendor_client.py; connect-time address checks against a scripted resolver in
test_security.py.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from vendor_stub import Answer, VendorStub

from webapp.outbound import (
    ERROR_BODY_BYTES,
    BodyTooLarge,
    ConnectionFailed,
    ForbiddenAddress,
    Redirected,
    URLRefused,
    check_address,
    get,
)

LIMITS = {"max_bytes": 1000, "connect_timeout": 5.0, "total_timeout": 15.0}


@pytest.fixture(name="stub")
def stub_fixture() -> Iterator[VendorStub]:
    stub = VendorStub()
    yield stub
    stub.close()


def url(stub: VendorStub, token: str = "R") -> str:
    return f"{stub.result_url('v')}?access_token={token}"


def test_a_2xx_answer_comes_back_with_its_status_headers_and_body(stub):
    stub.script("v", "R", Answer.json({"data": {}}))
    response = get(url(stub), headers={}, production=False, **LIMITS)
    assert (response.status, response.body) == (200, b'{"data": {}}')
    assert response.headers["content-type"] == "application/json"  # names in any case


def test_the_callers_headers_go_on_top_of_the_usual_ones(stub):
    stub.script("v", "R", Answer())
    get(url(stub), headers={"Accept": "application/json", "X-Extra": "1"}, production=False, **LIMITS)
    sent = stub.requests("v")[0].headers
    assert (sent["Accept"], sent["X-Extra"], sent["User-Agent"]) == (
        "application/json",
        "1",
        "toolcall-portal",
    )
    assert "gzip" in sent["Accept-Encoding"]


def test_another_status_comes_back_with_only_the_start_of_its_body(stub):
    stub.script("v", "R", Answer(500, b"x" * (ERROR_BODY_BYTES + 100)))
    response = get(url(stub), headers={}, production=False, **LIMITS)
    assert (response.status, response.body) == (500, b"x" * ERROR_BODY_BYTES)


def test_a_redirect_is_not_followed_and_names_where_it_pointed(stub):
    stub.script("v", "R", Answer(302, headers={"Location": "/elsewhere"}))
    with pytest.raises(Redirected, match="not followed") as raised:
        get(url(stub), headers={}, production=False, **LIMITS)
    assert (raised.value.status, raised.value.location) == (302, f"http://127.0.0.1:{stub.port}/elsewhere")
    assert len(stub.requests("v")) == 1


def test_a_2xx_body_over_max_bytes_is_refused(stub):
    stub.script("v", "R", Answer(200, b"x" * 1001))
    with pytest.raises(BodyTooLarge, match="body larger than 1000 bytes") as raised:
        get(url(stub), headers={}, production=False, **LIMITS)
    assert raised.value.status == 200


def test_production_refuses_an_http_url_before_connecting(stub):
    with pytest.raises(URLRefused, match="refused in production"):
        get(url(stub), headers={}, production=True, **LIMITS)
    assert stub.requests("v") == []


def test_a_refused_connection_is_a_connection_failure():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # released again: nothing listens there
    with pytest.raises(ConnectionFailed, match="connection refused"):
        get(f"http://127.0.0.1:{port}/", headers={}, production=False, **LIMITS)


@pytest.mark.parametrize(
    "ip",
    [
        "10.0.0.1",
        "172.16.0.1",
        "192.168.1.1",
        "127.0.0.1",
        "169.254.1.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "0.0.0.0",
        "::",
        "224.0.0.1",
        "100.64.0.1",
        "2002:7f00:1::",  # 6to4 leading to 127.0.0.1
    ],
)
def test_check_address_refuses_non_public_addresses(ip):
    with pytest.raises(ForbiddenAddress, match=f"vendor address {ip} is "):
        check_address(ip)


@pytest.mark.parametrize("ip", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"])
def test_check_address_allows_public_addresses(ip):
    check_address(ip)
