"""The ``system`` reference: which ToolCall a vendor's data belongs to, signed by the portal.

``system`` is ``<ToolCall id>:<signature>``, the signature an HMAC-SHA256 (itsdangerous ``Signer``,
salt ``toolcall.system``) under the portal's secret key. Verification also accepts signatures made
under the keys in ``SECRET_KEY_FALLBACKS``, so keys can be rotated without breaking attempts that
are under way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from itsdangerous import BadSignature, Signer

SALT = "toolcall.system"
#: Longer values are rejected before any HMAC is computed (an id and a signature fit easily).
MAX_LENGTH = 200


def _signer(secret_key: str, fallbacks: Iterable[str] | str = ()) -> Signer:
    # A single fallback key given as a string must not be taken as a list of one-character keys.
    fallbacks = [fallbacks] if isinstance(fallbacks, str) else list(fallbacks)
    # itsdangerous signs with the last key and verifies with any of them.
    return Signer([*fallbacks, secret_key], salt=SALT, sep=":", digest_method=hashlib.sha256)


def sign_system(toolcall_id: int, secret_key: str) -> str:
    """The ``system`` value naming ``toolcall_id``, signed with the current key."""
    return _signer(secret_key).sign(str(toolcall_id)).decode()


def verify_system(system: object, secret_key: str, fallbacks: Iterable[str] | str = ()) -> int | None:
    """The ToolCall id a ``system`` value names, or None when it is missing, malformed or forged."""
    # Vendor JSON can carry any string, lone surrogates included: only ASCII can be ours.
    if not isinstance(system, str) or len(system) > MAX_LENGTH or not system.isascii():
        return None
    try:
        value = _signer(secret_key, fallbacks).unsign(system).decode()
    except BadSignature:
        return None
    return int(value) if value.isascii() and value.isdigit() else None
