"""The ``system`` reference (docs/api.md §3): ``<ToolCall id>:<signature>``, HMAC-SHA256 with itsdangerous,
verified under the current key or a fallback key; anything else verifies as None."""

from __future__ import annotations

import hashlib
import json

import pytest
from helpers import forge_signature
from itsdangerous import Signer

from webapp.signing import sign_system, verify_system

KEY = "the current key"
OLD_KEY = "the key before the rotation"


def spec_signer(key: str) -> Signer:
    """The signer docs/api.md §3 describes, built independently of the portal's code."""
    return Signer(key, salt="toolcall.system", sep=":", digest_method=hashlib.sha256)


def test_a_signed_system_verifies_to_its_toolcall_id():
    assert verify_system(sign_system(42, KEY), KEY) == 42


def test_system_is_the_id_and_the_hmac_sha256_signature_the_spec_describes():
    system = sign_system(42, KEY)
    assert system.startswith("42:")
    assert system == spec_signer(KEY).sign("42").decode()


@pytest.mark.parametrize(
    "tamper",
    [
        lambda system: "43" + system[2:],  # another ToolCall
        forge_signature,  # one bit of the signature
        lambda system: system + "A",
        lambda system: " " + system,
    ],
    ids=["id", "signature", "appended", "padded"],
)
def test_a_tampered_system_does_not_verify(tamper):
    assert verify_system(tamper(sign_system(42, KEY)), KEY) is None


@pytest.mark.parametrize("key", [f"key {n}" for n in range(64)])
def test_a_forged_signature_never_verifies_whatever_the_key(key):
    # Every key gives another signature, so every final character of one occurs: editing that
    # character used to leave the decoded bytes unchanged for about one key in sixteen.
    assert verify_system(forge_signature(sign_system(42, key)), key) is None


def test_a_system_signed_with_another_key_does_not_verify():
    assert verify_system(sign_system(42, "someone else's key"), KEY) is None


@pytest.mark.parametrize("system", ["", "42", "42:", ":", ":abc", "abc:def", "42:not base64!", "4:2:x"])
def test_a_malformed_system_does_not_verify(system):
    assert verify_system(system, KEY) is None


@pytest.mark.parametrize("system", [None, 42, 4.2, True, b"42:abc", ["42:abc"], {"system": "42:abc"}])
def test_a_system_that_is_not_a_string_does_not_verify(system):
    assert verify_system(system, KEY) is None


def test_a_system_with_a_lone_surrogate_from_json_does_not_verify():
    system = json.loads('"42:\\ud800"')
    assert verify_system(system, KEY) is None


def test_a_too_long_system_does_not_verify_even_when_signed():
    system = sign_system(10**250, KEY)
    assert len(system) > 200
    assert verify_system(system, KEY) is None


@pytest.mark.parametrize("value", ["abc", "-1", "4.2", "\u00b2", "\u0661\u0662"])
def test_a_signed_value_that_is_not_an_id_does_not_verify(value):
    assert verify_system(spec_signer(KEY).sign(value).decode(), KEY) is None


def test_a_system_signed_under_a_fallback_key_verifies():
    system = sign_system(42, OLD_KEY)
    assert verify_system(system, KEY, [OLD_KEY]) == 42
    assert verify_system(system, KEY) is None


def test_a_single_fallback_key_may_be_given_as_a_string():
    assert verify_system(sign_system(42, OLD_KEY), KEY, OLD_KEY) == 42


def test_signing_uses_the_current_key_not_a_fallback():
    system = sign_system(42, KEY)
    assert system == spec_signer(KEY).sign("42").decode()
    assert verify_system(system, OLD_KEY) is None
    assert verify_system(system, KEY, [OLD_KEY]) == 42
