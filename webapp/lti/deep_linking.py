"""Deep Linking 2.0: an admin adds exams from a tool.

The ops page starts a launch (``launch.deep_linking``) whose id_token carries
``deep_linking_settings`` (``request_claims``): the return URL, ``ltiResourceLink`` items to be
opened in a window, several at once, and ``data`` -- a random token standing for (tool, admin) in
Redis, signed with the portal's secret key, good once.

The tool answers by posting a JWT (form field ``JWT``) to the return URL, where ``receive`` checks
it completely -- the tool's key, ``iss`` = its client_id, ``aud`` = the issuer, ``exp``, a ``nonce``
never seen before, ``deployment_id``, ``message_type``, ``version`` and the ``data`` it was given --
and every item, before it creates anything: a response that fails one check creates nothing. Each
``ltiResourceLink`` becomes one exam of the tool (title → name, ``url`` → launch URL, ``custom`` →
custom parameters, ``lineItem`` → its own line item's score maximum and label); other kinds of
item are left out.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

import jwt
from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import select
from sqlalchemy.orm import Session

from webapp.lti import grades, registrations, tool_keys
from webapp.lti.models import LtiRegistration
from webapp.lti.transient import Transient
from webapp.lti.vocabulary import (
    CONTENT_ITEMS,
    DEEP_LINKING_DATA,
    DEEP_LINKING_REQUEST,
    DEEP_LINKING_RESPONSE,
    DEEP_LINKING_SETTINGS,
    DEPLOYMENT_ID,
    LAUNCH_PRESENTATION,
    LTI_VERSION,
    MESSAGE_TYPE,
    TARGET_LINK_URI,
    VERSION,
)
from webapp.models import Exam, User

#: How long the admin has to choose in the tool.
DATA_SECS = 3600
DATA = "deep-link-data"
NONCE = "deep-link-nonce"
_SALT = "toolcall lti deep-linking data"
#: Items one response may carry.
MAX_ITEMS = 50


class DeepLinkingError(ValueError):
    """A deep-linking response that creates nothing; the text says why. ``tool`` when known."""

    def __init__(self, message: str, tool: str = ""):
        super().__init__(message)
        self.tool = tool


def _serializer(config: Mapping) -> URLSafeSerializer:
    return URLSafeSerializer(
        [*reversed(config.get("SECRET_KEY_FALLBACKS", [])), config["SECRET_KEY"]], salt=_SALT
    )


def request_claims(
    registration: LtiRegistration, user: User, nonce: str, transient: Transient, config: Mapping
) -> dict:
    """The claims of a deep-linking launch beyond the common ones."""
    issuer = config["TOOLCALL_PUBLIC_URL"]
    token = transient.issue(DATA, {"client": registration.client_id, "user": user.id}, DATA_SECS)
    return {
        MESSAGE_TYPE: DEEP_LINKING_REQUEST,
        TARGET_LINK_URI: registration.deep_linking_url,
        LAUNCH_PRESENTATION: {"document_target": "window"},
        DEEP_LINKING_SETTINGS: {
            "deep_link_return_url": issuer + registrations.DEEP_LINKING_RETURN_PATH,
            "accept_types": ["ltiResourceLink"],
            "accept_presentation_document_targets": ["window"],
            "accept_multiple": True,
            "auto_create": True,
            "title": "Exams for toolcall",
            "data": _serializer(config).dumps(token),
        },
    }


@dataclass(frozen=True)
class NewExam:
    name: str
    launch_url: str | None
    custom: dict[str, str]
    score_maximum: float | None
    label: str | None
    description: str


def receive(
    session: Session, response: str, transient: Transient, config: Mapping
) -> tuple[LtiRegistration, list[Exam]]:
    """Check a deep-linking response and create its exams (flushed, not committed)."""
    try:
        unverified = jwt.decode(response or "", options={"verify_signature": False})
    except jwt.InvalidTokenError as e:
        raise DeepLinkingError(f"the JWT field is not a JWT: {e}") from None
    registration = registrations.by_client_id(session, unverified.get("iss"))
    if registration is None:
        raise DeepLinkingError("the response's iss is no registered client_id")
    tool = registration.client.name
    try:
        claims = tool_keys.verify(
            registration,
            response,
            audience=config["TOOLCALL_PUBLIC_URL"],
            config=config,
            require=["nonce", DEPLOYMENT_ID, MESSAGE_TYPE, VERSION],
        )
    except tool_keys.ToolKeyError as e:
        raise DeepLinkingError(str(e), tool) from None
    if claims[DEPLOYMENT_ID] != registration.deployment_id:
        raise DeepLinkingError("deployment_id is not this tool's", tool)
    if claims[MESSAGE_TYPE] != DEEP_LINKING_RESPONSE or claims[VERSION] != LTI_VERSION:
        raise DeepLinkingError(f"the message must be an {DEEP_LINKING_RESPONSE}, version {LTI_VERSION}", tool)
    if grades.has_nul(claims):
        raise DeepLinkingError("the response holds a NUL character, which no text may", tool)
    items = [_new_exam(item, tool) for item in _items(claims, tool)]
    data = _data_token(claims.get(DEEP_LINKING_DATA), config, tool)
    ttl = claims["exp"] - time.time() + tool_keys.LEEWAY
    if not isinstance(claims["nonce"], str) or not transient.first_use(
        NONCE, f"{registration.id}:{claims['nonce']}", ttl
    ):
        raise DeepLinkingError("this response (its nonce) was received before", tool)
    given = transient.take(DATA, data)
    if given is None or given.get("client") != registration.client_id:
        raise DeepLinkingError(
            "the data is unknown, used or for another tool: start deep linking again", tool
        )
    return registration, [_create(session, registration, item) for item in items]


def _data_token(data: object, config: Mapping, tool: str) -> str:
    try:
        token = _serializer(config).loads(data) if isinstance(data, str) else None
    except BadSignature:
        token = None
    if not isinstance(token, str):
        raise DeepLinkingError("the data is not the value the platform gave in the request", tool)
    return token


def _items(claims: dict, tool: str) -> list[dict]:
    items = claims.get(CONTENT_ITEMS, [])
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise DeepLinkingError("content_items must be a list of objects", tool)
    links = [item for item in items if item.get("type") == "ltiResourceLink"]
    if len(links) > MAX_ITEMS:
        raise DeepLinkingError(f"at most {MAX_ITEMS} items at once", tool)
    return links


def _new_exam(item: dict, tool: str) -> NewExam:
    title = item.get("title") or item.get("url") or "Untitled exam"
    if not isinstance(title, str) or len(title) > 200:
        raise DeepLinkingError("an item's title must be a text of at most 200 characters", tool)
    url = item.get("url")
    if url is not None and not isinstance(url, str):
        raise DeepLinkingError("an item's url must be a text", tool)
    if url is not None:
        try:
            url = registrations.check_url(url, "item's url", production=False)
        except registrations.RegistrationError as e:
            raise DeepLinkingError(str(e), tool) from None
        if len(url) > 500:
            raise DeepLinkingError("an item's url is at most 500 characters", tool)
    custom = item.get("custom") or {}
    if not isinstance(custom, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in custom.items()
    ):
        raise DeepLinkingError("an item's custom parameters must be an object of texts", tool)
    line_item = item.get("lineItem")
    maximum = label = None
    if line_item is not None:
        maximum = line_item.get("scoreMaximum") if isinstance(line_item, dict) else None
        if (
            not isinstance(maximum, int | float)
            or isinstance(maximum, bool)
            or not 0 < maximum <= grades.MAX_NUMBER
        ):
            raise DeepLinkingError("an item's lineItem needs a scoreMaximum greater than 0", tool)
        label = line_item.get("label")
        if label is not None and (not isinstance(label, str) or len(label) > 200):
            raise DeepLinkingError("an item's lineItem label must be a text of at most 200 characters", tool)
    text = item.get("text") if isinstance(item.get("text"), str) else ""
    return NewExam(title.strip() or "Untitled exam", url, custom, maximum, label, text)


def _create(session: Session, registration: LtiRegistration, new: NewExam) -> Exam:
    exam = Exam(
        slug=_free_slug(session, new.name), client=registration.client, name=new.name, description=new.description,
        launch_url=new.launch_url, custom=json.dumps(new.custom, sort_keys=True),
    )  # fmt: skip
    session.add(exam)
    session.flush()
    grades.set_default(session, exam, score_maximum=new.score_maximum, label=new.label)
    return exam


def _free_slug(session: Session, name: str) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:80] or "exam"
    slug, n = base, 1
    while session.scalar(select(Exam.id).where(Exam.slug == slug)) is not None:
        n += 1
        slug = f"{base}-{n}"
    return slug
