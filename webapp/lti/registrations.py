"""Registering an LTI 1.3 tool, and the platform configuration its administrator needs.

A registration makes a client an LTI tool: the tool shares the clients' one name space (an exam
names its client either way) and gets a generated ``client_id`` and ``deployment_id``, which stay
when the registration is changed later. Its key is a key set URL or a PEM public key, never both.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select
from sqlalchemy.orm import Session

from webapp.lti import tool_keys
from webapp.lti.models import LtiRegistration
from webapp.models import Client, Exam

#: The platform's endpoints, under the issuer (fixed paths).
AUTHORIZE_PATH = "/lti/1.3/authorize"
TOKEN_PATH = "/lti/1.3/token"
KEY_SET_PATH = "/lti/1.3/jwks.json"
DEEP_LINKING_RETURN_PATH = "/lti/1.3/deep-linking/return"


class RegistrationError(ValueError):
    """A registration that cannot be saved; the text says what to change."""


@dataclass(frozen=True)
class ToolSettings:
    """What an administrator gives about a tool."""

    login_url: str
    launch_url: str
    redirect_uris: Sequence[str] = ()
    jwks_url: str | None = None
    public_key: str | None = None
    deep_linking_url: str | None = None
    send_names: bool = True


def check_url(url: str, what: str, production: bool) -> str:
    """``url`` if it is an absolute http(s) URL (https in production); else RegistrationError."""
    url = (url or "").strip()
    if "\x00" in url:
        raise RegistrationError(f"the {what} must not contain a NUL character")
    parts = urlsplit(url)
    schemes = ("https",) if production else ("http", "https")
    if parts.scheme.lower() not in schemes or not parts.hostname or parts.fragment:
        wanted = "an https URL" if production else "an http or https URL"
        raise RegistrationError(f"the {what} must be {wanted} without a fragment, not {url!r}")
    return url


def check_public_key(pem: str) -> str:
    """``pem`` if it is an RSA public key in PEM (what RS256 needs); else RegistrationError."""
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except ValueError as e:
        raise RegistrationError(f"the public key is not a PEM public key: {e}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise RegistrationError("the public key must be an RSA key (tools sign with RS256)")
    return pem.strip() + "\n"


def save(session: Session, name: str, settings: ToolSettings, production: bool) -> LtiRegistration:
    """Register tool ``name`` (or change its registration); flushed, not committed."""
    if bool(settings.jwks_url) == bool(settings.public_key):
        raise RegistrationError(
            "give the tool's key either as a key set URL or as a PEM public key (one of them)"
        )
    login_url = check_url(settings.login_url, "login URL", production)
    launch_url = check_url(settings.launch_url, "launch URL", production)
    redirect_uris = [check_url(uri, "redirect URI", production) for uri in settings.redirect_uris] or [
        launch_url
    ]
    client = session.scalar(select(Client).where(Client.name == name))
    if client is not None and client.lti is None:
        raise RegistrationError(
            f"the name {name!r} is taken by an API v2 client; choose another name for the LTI tool"
        )
    if client is None:
        client = Client(name=name, receive_result_token_url="")
        session.add(client)
    registration = client.lti or LtiRegistration(
        client=client, lti_client_id=secrets.token_urlsafe(18), deployment_id=secrets.token_urlsafe(12)
    )
    # The start token goes to the login URL (as lti_message_hint); results come through AGS.
    client.receive_start_token_url = login_url
    registration.login_url = login_url
    registration.launch_url = launch_url
    registration.redirect_uris = json.dumps(list(dict.fromkeys(redirect_uris)))
    registration.deep_linking_url = (
        check_url(settings.deep_linking_url, "deep-linking URL", production)
        if settings.deep_linking_url
        else launch_url
    )
    previous_url = registration.jwks_url
    registration.jwks_url = (
        check_url(settings.jwks_url, "key set URL", production) if settings.jwks_url else None
    )
    registration.public_key = check_public_key(settings.public_key) if settings.public_key else None
    registration.send_names = settings.send_names
    session.add(registration)
    session.flush()
    if previous_url:
        tool_keys.forget(previous_url)
    return registration


def by_client_id(session: Session, lti_client_id: object) -> LtiRegistration | None:
    """The registration of OAuth client_id ``lti_client_id``, if any."""
    if not isinstance(lti_client_id, str) or not lti_client_id or "\x00" in lti_client_id:
        return None
    return session.scalar(select(LtiRegistration).where(LtiRegistration.lti_client_id == lti_client_id))


def by_name(session: Session, name: str) -> LtiRegistration | None:
    """The registration of the client named ``name``, if it is an LTI tool."""
    if "\x00" in name:
        return None
    client = session.scalar(select(Client).where(Client.name == name))
    return client.lti if client is not None else None


def allowed_redirect_uris(session: Session, registration: LtiRegistration) -> set[str]:
    """Where the tool may have the id_token posted: its registered redirect URIs, and the launch
    URLs of its exams (a tool library redirects to the launch's target, which an exam may name)."""
    exams = session.scalars(
        select(Exam.launch_url).where(Exam.client_id == registration.client_id, Exam.launch_url.is_not(None))
    )
    return set(registration.redirect_uri_list) | set(exams)


def configuration(registration: LtiRegistration, issuer: str) -> dict:
    """What the tool's administrator configures, in the field names of PyLTI1p3's tool
    configuration (``auth_audience`` null: the token URL is the audience)."""
    return {
        "issuer": issuer,
        "client_id": registration.lti_client_id,
        "deployment_id": registration.deployment_id,
        "auth_login_url": issuer + AUTHORIZE_PATH,
        "auth_token_url": issuer + TOKEN_PATH,
        "key_set_url": issuer + KEY_SET_PATH,
        "auth_audience": None,
    }


def describe(registration: LtiRegistration, issuer: str) -> list[tuple[str, str]]:
    """The registration as (label, value) pairs, for people: the CLI and the ops pages."""
    config = configuration(registration, issuer)
    rows: list[tuple[str, str]] = [
        ("Issuer", config["issuer"]),
        ("Client ID", config["client_id"]),
        ("Deployment ID", config["deployment_id"]),
        ("Authorization (OIDC) URL", config["auth_login_url"]),
        ("Access token URL", config["auth_token_url"]),
        ("Key set URL", config["key_set_url"]),
        ("Deep-linking return URL", issuer + DEEP_LINKING_RETURN_PATH),
        ("Tool login URL", registration.login_url),
        ("Tool launch URL", registration.launch_url),
        ("Redirect URIs", " ".join(registration.redirect_uri_list)),
        ("Deep-linking URL", registration.deep_linking_url),
        ("Tool key", registration.jwks_url or "a public key (PEM)"),
        ("Names and e-mail sent", "yes" if registration.send_names else "no"),
    ]
    return rows


def custom_parameters(text: str | None) -> dict[str, str]:
    """An exam's custom parameters (stored as a JSON object of strings)."""
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def parse_custom(pairs: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` texts as custom parameters; RegistrationError names a malformed one."""
    custom: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key or any(c.isspace() for c in key) or "\x00" in pair:
            raise RegistrationError(
                f"a custom parameter is KEY=VALUE with a key without spaces, not {pair!r}"
            )
        custom[key] = value.strip()
    return custom


def dump_custom(custom: Mapping[str, str]) -> str:
    return json.dumps(dict(custom), sort_keys=True)
