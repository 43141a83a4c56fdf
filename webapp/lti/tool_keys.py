"""A tool's public keys, and the checks of a JWT a tool signed (a client assertion, a deep-linking
response).

A registration names its key by a key set URL or by a PEM public key. A key set is fetched through
``webapp.outbound.get`` (https and public addresses only in production, a time budget, a size cap,
no redirects), kept for ``CACHE_SECS`` and fetched again when a JWT names a ``kid`` it lacks -- at
most every ``REFETCH_SECS``, so that made-up ``kid``\\ s cannot make the portal call the tool for
each request. A key set nested as ``{"keys": {"keys": [...]}}`` (some tools publish that) is
accepted, with a warning. A PEM registration has one key: the ``kid`` of the JWT is not needed.

Only RS256 is accepted: the algorithm comes from the portal, never from the token's header.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import jwt
from cryptography.hazmat.primitives import serialization

from webapp import outbound
from webapp.lti.models import LtiRegistration

log = logging.getLogger("webapp.lti.tool_keys")

ALGORITHM = "RS256"
#: Seconds of clock difference tolerated on ``exp``, ``iat`` and ``nbf``.
LEEWAY = 30
#: How long a fetched key set is used before it is fetched again.
CACHE_SECS = 300
#: The shortest time between two fetches of one key set for an unknown ``kid``.
REFETCH_SECS = 5
#: A key set larger than this is refused.
MAX_KEY_SET_BYTES = 64 * 1024


class ToolKeyError(ValueError):
    """A JWT from a tool that cannot be accepted; the text says why (for the tool's administrator)."""


@dataclass
class _Fetched:
    at: float
    keys: dict[str, jwt.PyJWK] = field(default_factory=dict)


_cache: dict[str, _Fetched] = {}
_lock = threading.Lock()


def verify(
    registration: LtiRegistration,
    token: str,
    *,
    audience: str | list[str],
    config: Mapping,
    require: list[str],
) -> dict:
    """The claims of ``token`` once its signature (RS256, the tool's key), ``iss`` (the tool's
    client_id), ``aud``, ``exp`` and ``iat`` (with ``LEEWAY``) are checked, and the claims in
    ``require`` are present; raises ``ToolKeyError`` saying what is wrong."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as e:
        raise ToolKeyError(f"not a JWT: {e}") from None
    if header.get("alg") != ALGORITHM:
        raise ToolKeyError(f"the JWT is signed {header.get('alg')!r}; only {ALGORITHM} is accepted")
    key = _key_for(registration, header.get("kid"), config)
    try:
        return jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=registration.lti_client_id,
            leeway=LEEWAY,
            options={"require": ["exp", "iat", "iss", "aud", *require]},
        )
    except jwt.InvalidTokenError as e:
        raise ToolKeyError(f"the JWT does not verify: {e}") from None


def _key_for(registration: LtiRegistration, kid: object, config: Mapping):
    if registration.public_key:
        try:
            return serialization.load_pem_public_key(registration.public_key.encode())
        except ValueError as e:
            raise ToolKeyError(f"the registered public key cannot be read: {e}") from None
    if not isinstance(kid, str) or not kid:
        raise ToolKeyError("the JWT names no kid; the tool's key set needs one to find the key")
    url = registration.jwks_url or ""
    with _lock:
        fetched = _cache.get(url)
    now = time.monotonic()
    stale = fetched is None or now - fetched.at > CACHE_SECS
    if stale or (kid not in fetched.keys and now - fetched.at > REFETCH_SECS):
        fetched = _fetch(url, config)
    if kid not in fetched.keys:
        raise ToolKeyError(f"no key with kid {kid!r} in the tool's key set at {url}")
    return fetched.keys[kid].key


def _fetch(url: str, config: Mapping) -> _Fetched:
    try:
        response = outbound.get(
            url,
            headers={"Accept": "application/json"},
            production=bool(config.get("TOOLCALL_PRODUCTION")),
            max_bytes=MAX_KEY_SET_BYTES,
            connect_timeout=5.0,
            total_timeout=10.0,
        )
    except outbound.OutboundError as e:
        raise ToolKeyError(f"the tool's key set at {url} could not be fetched: {e}") from None
    if response.status != 200:
        raise ToolKeyError(f"the tool's key set at {url} answered HTTP {response.status}")
    fetched = _Fetched(time.monotonic(), parse_key_set(response.body, url))
    with _lock:
        _cache[url] = fetched
    return fetched


def parse_key_set(body: bytes, where: str) -> dict[str, jwt.PyJWK]:
    """The RS256 keys of a JWKS document by ``kid``; keys of other kinds are left out."""
    try:
        document = json.loads(body)
    except ValueError:
        raise ToolKeyError(f"the tool's key set at {where} is not JSON") from None
    keys = document.get("keys") if isinstance(document, dict) else None
    if isinstance(keys, dict) and isinstance(keys.get("keys"), list):
        log.warning("the key set at %s is nested as {'keys': {'keys': [...]}}; accepted", where)
        keys = keys["keys"]
    if not isinstance(keys, list):
        raise ToolKeyError(f"the tool's key set at {where} has no list of keys")
    found: dict[str, jwt.PyJWK] = {}
    for entry in keys:
        if not isinstance(entry, dict) or entry.get("kty") != "RSA" or not isinstance(entry.get("kid"), str):
            continue
        if entry.get("alg", ALGORITHM) != ALGORITHM or entry.get("use", "sig") != "sig":
            continue
        try:
            found[entry["kid"]] = jwt.PyJWK(entry, algorithm=ALGORITHM)
        except jwt.PyJWKError as e:
            log.warning("key %r of the key set at %s left out: %s", entry.get("kid"), where, e)
    return found


def forget(url: str | None = None) -> None:
    """Drop the cached key set of ``url`` (all when None): after the tool's registration changed."""
    with _lock:
        if url is None:
            _cache.clear()
        else:
            _cache.pop(url, None)
