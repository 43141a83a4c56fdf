"""Standard Webhooks signatures: the portal's signing and the vendor's check (docs/api.md §5).

The signed fetch itself, against a real server, is in test_vendor_client.py.
"""

from __future__ import annotations

import base64
import time

import pytest

from webapp.webhooks import fetch_payload, sign_webhook, verify_webhook, webhook_headers

SECRET = "whsec_" + base64.b64encode(b"a vendor's thirty-two byte key!!").decode()


def signed_headers(secret: str = SECRET, timestamp: int | None = None, body: bytes = b"") -> dict[str, str]:
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "Webhook-Id": "msg_1",
        "Webhook-Timestamp": str(timestamp),
        "Webhook-Signature": sign_webhook(secret, "msg_1", timestamp, body),
    }


def test_verify_rejects_a_tampered_signature():
    headers = signed_headers()
    digest = bytearray(base64.b64decode(headers["Webhook-Signature"][3:]))
    digest[0] ^= 1
    headers["Webhook-Signature"] = "v1," + base64.b64encode(bytes(digest)).decode()
    assert not verify_webhook(SECRET, headers, b"")


def test_verify_rejects_another_body_id_or_secret():
    headers = signed_headers(body=b"{}")
    assert verify_webhook(SECRET, headers, b"{}")
    assert not verify_webhook(SECRET, headers, b"{ }")
    assert not verify_webhook(SECRET, {**headers, "Webhook-Id": "msg_2"}, b"{}")
    assert not verify_webhook("another secret", headers, b"{}")


def test_verify_rejects_an_old_or_future_timestamp():
    assert not verify_webhook(SECRET, signed_headers(timestamp=int(time.time()) - 301), b"")
    assert not verify_webhook(SECRET, signed_headers(timestamp=int(time.time()) + 301), b"")
    assert verify_webhook(SECRET, signed_headers(timestamp=1000), b"", now=1200)


def test_verify_rejects_missing_headers():
    headers = signed_headers()
    for name in headers:
        assert not verify_webhook(SECRET, {k: v for k, v in headers.items() if k != name}, b"")


def test_verify_accepts_any_of_several_signatures():
    headers = signed_headers()
    headers["Webhook-Signature"] = "v1,bm9wZQ== " + headers["Webhook-Signature"]
    assert verify_webhook(SECRET, headers, b"")


def test_signatures_match_the_standard_webhooks_test_vector():
    # Published with the Standard Webhooks reference libraries: a vendor's library must accept ours.
    signature = sign_webhook(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_plain_secret_is_used_as_its_utf8_bytes():
    whsec = "whsec_" + base64.b64encode("plain sécret".encode()).decode()
    assert sign_webhook("plain sécret", "msg_1", 1) == sign_webhook(whsec, "msg_1", 1)


def test_an_odd_webhook_timestamp_does_not_verify():
    headers = {"webhook-id": "x", "webhook-timestamp": "²", "webhook-signature": "v1,abc"}
    assert verify_webhook("secret", headers, b"") is False


def test_webhook_headers_verify_for_their_body():
    headers = webhook_headers(SECRET, "msg_1", b"{}")
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-id"] == "msg_1"
    assert verify_webhook(SECRET, headers, b"{}")
    assert not verify_webhook(SECRET, headers, b"")


def test_a_whsec_secret_that_is_not_base64_is_refused():
    with pytest.raises(ValueError, match="not base64"):
        webhook_headers("whsec_not*base64", "msg_1")


def test_the_fetch_payload_is_the_tokens_json_without_whitespace():
    assert fetch_payload("R-1") == '{"access_token":"R-1"}'
    # Of printable ASCII, only the quote and the backslash are escaped (as JavaScript escapes them).
    assert fetch_payload('a "b" \\ /<&>+%') == '{"access_token":"a \\"b\\" \\\\ /<&>+%"}'
    printable = "".join(map(chr, range(0x20, 0x7F)))
    escaped = printable.replace("\\", "\\\\").replace('"', '\\"')
    assert fetch_payload(printable) == '{"access_token":"' + escaped + '"}'
