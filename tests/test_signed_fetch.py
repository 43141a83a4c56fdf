"""The portal's signed result fetch, verified as a vendor verifies it: with the official Standard
Webhooks libraries for Python (``standardwebhooks``, and ``svix``, which wraps it).

The requests are the portal's real ones: a real ``callbacks`` worker (fetch_support) fetches the
result from a ``VendorStub`` -- a local HTTP server standing in for the vendor -- which records
them. The signature covers the payload ``{"access_token":"<R>"}``: the JSON text of the token the
request carries in its query, without whitespace (``webhooks.fetch_payload``), which the vendor
rebuilds from the query and hands to ``verify`` as the body. So a captured signature does not
verify for another token.

Redis: database 7 of the tests' server (``TOOLCALL_TEST_REDIS``), flushed before and after.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest
import standardwebhooks
import svix.webhooks
from fetch_support import Portal, new_token, result_body, running_portal
from helpers import suite_redis_url
from vendor_stub import Answer, VendorStub

from examples.vendor.signatures import signed_by_portal
from webapp.webhooks import verify_webhook

pytestmark = pytest.mark.process

REDIS_URL = suite_redis_url(7)
WHSEC = "whsec_" + base64.b64encode(b"a vendor's thirty-two byte key!!").decode()
PLAIN = "a plain shared secret"
#: The key each library is given: a whsec_ secret as issued; a plain secret as its UTF-8 bytes
#: (given as text, the libraries would take it for base64).
KEYS = {WHSEC: WHSEC, PLAIN: PLAIN.encode()}


@pytest.fixture(scope="module", name="portal")
def portal_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    stub = VendorStub()
    directory = tmp_path_factory.mktemp("signed-fetch")
    try:
        yield from running_portal(
            directory, f"sqlite:///{directory / 'portal.sqlite3'}", REDIS_URL, stub, "callbacks-signed"
        )
    finally:
        stub.close()


def payload(token: str) -> str:
    """What a vendor rebuilds from the request: written out here, as a vendor's code would."""
    return json.dumps({"access_token": token}, separators=(",", ":"))


def captured(portal: Portal, secret: str, token: str) -> dict[str, str]:
    """The headers of the portal's fetch of ``token`` for a new client with ``secret``."""
    vendor = portal.new_vendor(secret=secret)
    attempt = portal.begin(vendor, secret=secret)
    portal.stub.script(vendor.name, token, Answer.json(result_body(attempt, token)))
    portal.report(vendor, token)
    assert portal.wait_fetch(vendor, token).state == "done"
    [request] = portal.requests(vendor, token)
    assert request.token == token
    return request.headers


TOKENS = {
    "plain": lambda: new_token(),
    # Printable ASCII that JSON escapes (" and \) or that some encoders escape and ours does not.
    "escapes": lambda: new_token() + ' "quoted" back\\slash /<&>+%',
}


@pytest.mark.parametrize("token_kind", TOKENS)
@pytest.mark.parametrize("secret", [WHSEC, PLAIN], ids=["whsec-secret", "plain-secret"])
def test_the_portals_fetch_verifies_with_the_official_libraries(portal, secret, token_kind):
    token = TOKENS[token_kind]()
    headers = captured(portal, secret, token)
    assert standardwebhooks.Webhook(KEYS[secret]).verify(payload(token), headers) == {"access_token": token}
    svix.webhooks.Webhook(KEYS[secret]).verify(payload(token), headers)  # raises unless it verifies
    assert verify_webhook(secret, headers, payload(token))
    assert signed_by_portal(secret, headers, token)  # the demo vendor's standard-library check


@pytest.mark.parametrize("secret", [WHSEC, PLAIN], ids=["whsec-secret", "plain-secret"])
def test_a_captured_signature_does_not_verify_for_another_token(portal, secret):
    token = new_token()
    headers = captured(portal, secret, token)
    for other in (new_token(), token + "x", ""):
        with pytest.raises(standardwebhooks.WebhookVerificationError):
            standardwebhooks.Webhook(KEYS[secret]).verify(payload(other), headers)
        with pytest.raises(svix.webhooks.WebhookVerificationError):
            svix.webhooks.Webhook(KEYS[secret]).verify(payload(other), headers)
        assert not verify_webhook(secret, headers, payload(other))
        assert not signed_by_portal(secret, headers, other)
