"""A tool's keys from its key set URL, fetched for real from a local server: the key set's forms,
the cache, and a fetch again for a kid the cached set lacks."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from webapp.lti import tool_keys
from webapp.lti.models import LtiRegistration

CONFIG = {"TOOLCALL_PRODUCTION": False}


class KeySetServer:
    """Serves ``document`` (changeable) at /jwks and counts the requests."""

    def __init__(self) -> None:
        self.document: dict = {"keys": []}
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                owner.requests += 1
                body = json.dumps(owner.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(name="key_set")
def key_set_fixture() -> Iterator[KeySetServer]:
    server = KeySetServer()
    tool_keys.forget()
    yield server
    tool_keys.forget()
    server.close()


def key_pair(kid: str):
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    jwk.update(kid=kid, alg="RS256", use="sig")
    return private, jwk


def registration(url: str) -> LtiRegistration:
    return LtiRegistration(lti_client_id="cid", jwks_url=url)


def signed(private, kid: str) -> str:
    now = int(time.time())
    return jwt.encode({"iss": "cid", "aud": "https://portal.example", "iat": now, "exp": now + 60}, private,
                      algorithm="RS256", headers={"kid": kid})  # fmt: skip


def verify(key_set: KeySetServer, token: str) -> dict:
    return tool_keys.verify(
        registration(key_set.url), token, audience="https://portal.example", config=CONFIG, require=[]
    )


def test_a_key_set_nested_in_keys_is_accepted_with_a_warning(key_set, caplog):
    private, jwk = key_pair("one")
    key_set.document = {"keys": {"keys": [jwk]}}
    assert verify(key_set, signed(private, "one"))["iss"] == "cid"
    assert "nested" in caplog.text


def test_a_key_set_is_cached_and_fetched_again_for_a_kid_it_lacks(key_set, monkeypatch):
    first, first_jwk = key_pair("first")
    key_set.document = {"keys": [first_jwk]}
    verify(key_set, signed(first, "first"))
    verify(key_set, signed(first, "first"))
    assert key_set.requests == 1
    second, second_jwk = key_pair("second")  # the tool rotates its key
    key_set.document = {"keys": [first_jwk, second_jwk]}
    monkeypatch.setattr(tool_keys, "REFETCH_SECS", 0)
    assert verify(key_set, signed(second, "second"))["iss"] == "cid"
    assert key_set.requests == 2
    with pytest.raises(tool_keys.ToolKeyError, match="no key with kid 'third'"):
        verify(key_set, signed(second, "third"))


def test_keys_of_other_kinds_and_algorithms_are_left_out(key_set):
    _, jwk = key_pair("rsa")
    found = tool_keys.parse_key_set(
        json.dumps(
            {
                "keys": [
                    jwk,
                    {"kty": "EC", "kid": "ec"},
                    {**jwk, "kid": "enc", "use": "enc"},
                    {**jwk, "kid": "ps", "alg": "PS256"},
                ]
            }
        ).encode(),
        "here",
    )
    assert list(found) == ["rsa"]


def test_a_key_set_url_that_does_not_answer_is_a_clear_refusal(key_set):
    url = key_set.url
    key_set.close()
    private, _ = key_pair("one")
    with pytest.raises(tool_keys.ToolKeyError, match="could not be fetched"):
        tool_keys.verify(
            registration(url),
            signed(private, "one"),
            audience="https://portal.example",
            config=CONFIG,
            require=[],
        )
