"""Who may use the services: the token endpoint (OAuth 2 client credentials with a JWT client
assertion, RFC 7523) and the bearer access tokens it hands out.

- The assertion is signed by the tool's key (``tool_keys.verify``): ``iss`` = ``sub`` = the tool's
  client_id, ``aud`` the token URL or the issuer, ``exp`` at most ``MAX_ASSERTION_SECS`` ahead, and
  a ``jti`` never seen before (remembered until the assertion expires).
- The granted scopes are the requested ones the platform knows (all of them when none are asked
  for); none known is ``invalid_scope``.
- An access token is 256 random bits kept in Redis for ``TOKEN_SECS`` with the client and its
  scopes. A service refuses a request without a live token (401), and one whose token lacks the
  scope or belongs to another client than the context's (403).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import jwt
from sqlalchemy.orm import Session

from webapp.lti import registrations, tool_keys
from webapp.lti.models import LtiRegistration
from webapp.lti.transient import Transient
from webapp.lti.vocabulary import CLIENT_ASSERTION_TYPE, SCOPES

TOKEN_SECS = 3600
#: How far ahead an assertion's ``exp`` may be (seconds), beyond the clock leeway.
MAX_ASSERTION_SECS = 300
ACCESS_TOKEN = "access-token"
ASSERTION_JTI = "assertion-jti"


class ServiceError(Exception):
    """A refused request to the token endpoint or a service: its HTTP status, the error code and a
    description the tool's developer can act on."""

    def __init__(self, status: int, error: str, description: str):
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


@dataclass(frozen=True)
class Grant:
    """What a live access token allows: the client (database id, name) and its scopes."""

    client_id: int
    client_name: str
    scopes: frozenset[str]


def _oauth(status: int, error: str, description: str) -> ServiceError:
    return ServiceError(status, error, description)


def issue_token(session: Session, form: Mapping[str, str], transient: Transient, config: Mapping) -> dict:
    """The token endpoint's answer to ``form``; raises ``ServiceError`` with an RFC 6749 error."""
    if form.get("grant_type") != "client_credentials":
        raise _oauth(400, "unsupported_grant_type", "grant_type must be client_credentials")
    if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
        raise _oauth(401, "invalid_client", f"client_assertion_type must be {CLIENT_ASSERTION_TYPE}")
    assertion = form.get("client_assertion") or ""
    registration = _asserting_client(session, assertion)
    issuer = config["TOOLCALL_PUBLIC_URL"]
    try:
        claims = tool_keys.verify(
            registration,
            assertion,
            audience=[issuer + registrations.TOKEN_PATH, issuer],
            config=config,
            require=["sub", "jti"],
        )
    except tool_keys.ToolKeyError as e:
        raise _oauth(401, "invalid_client", f"the client assertion was refused: {e}") from None
    if claims["sub"] != registration.lti_client_id:
        raise _oauth(401, "invalid_client", "the client assertion's sub must be the client_id")
    now = time.time()
    if claims["exp"] > now + MAX_ASSERTION_SECS + tool_keys.LEEWAY:
        raise _oauth(
            400, "invalid_grant", f"the client assertion's exp is more than {MAX_ASSERTION_SECS} s ahead"
        )
    remaining = claims["exp"] - now + tool_keys.LEEWAY
    if not isinstance(claims["jti"], str) or not claims["jti"]:
        raise _oauth(401, "invalid_client", "the client assertion's jti must be a non-empty string")
    if not transient.first_use(ASSERTION_JTI, f"{registration.id}:{claims['jti']}", remaining):
        raise _oauth(400, "invalid_grant", "this client assertion (its jti) was used before; make a new one")
    scopes = _granted(form.get("scope"))
    token = transient.issue(
        ACCESS_TOKEN,
        {"client": registration.client_id, "name": registration.client.name, "scopes": sorted(scopes)},
        TOKEN_SECS,
    )
    return {
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": TOKEN_SECS,
        "scope": " ".join(sorted(scopes)),
    }


def _asserting_client(session: Session, assertion: str) -> LtiRegistration:
    """The registration the (not yet verified) assertion claims to come from."""
    # Read without verifying only to know whose key verifies it.
    try:
        unverified = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.InvalidTokenError as e:
        raise _oauth(401, "invalid_client", f"client_assertion is not a JWT: {e}") from None
    registration = registrations.by_client_id(session, unverified.get("iss"))
    if registration is None:
        raise _oauth(401, "invalid_client", "the client assertion's iss is no registered client_id")
    return registration


def _granted(requested: str | None) -> set[str]:
    if requested is None or not requested.strip():
        return set(SCOPES)
    asked = set(requested.split())
    granted = asked & set(SCOPES)
    if not granted:
        raise _oauth(
            400, "invalid_scope", f"none of the scopes asked for is offered; they are: {' '.join(SCOPES)}"
        )
    return granted


def grant(authorization: str | None, transient: Transient) -> Grant:
    """The grant of an ``Authorization: Bearer`` header; ServiceError 401 without a live token."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ServiceError(
            401, "invalid_token", "send Authorization: Bearer <access token> (from the token endpoint)"
        )
    found = transient.read(ACCESS_TOKEN, token)
    if found is None:
        raise ServiceError(401, "invalid_token", "the access token is unknown or expired; get a new one")
    return Grant(found["client"], found["name"], frozenset(found["scopes"]))


def require(granted: Grant, scopes: Iterable[str], client_id: int) -> None:
    """ServiceError 403 unless the token has one of ``scopes`` and belongs to client ``client_id``."""
    wanted = list(scopes)
    if not granted.scopes & set(wanted):
        raise ServiceError(403, "insufficient_scope", f"this needs the scope {' or '.join(wanted)}")
    if granted.client_id != client_id:
        raise ServiceError(403, "forbidden", "this context belongs to another tool")
