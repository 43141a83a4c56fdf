"""The LTI launch: OIDC third-party-initiated login, without Flask.

1. **Login initiation** (``login_initiation``): the start button has created the ToolCall and its
   single-use start token T; the browser goes to the tool's login URL with ``iss``, ``login_hint``
   (the user's ``persnr``: opaque to the tool, the same as the ``sub`` it gets), ``target_link_uri``,
   ``lti_message_hint`` = T, ``client_id`` and ``lti_deployment_id``. A deep-linking launch is the
   same with a hint of its own (``deep_linking_initiation``).
2. **Authorization** (``authorize``): the tool sends the browser back with the OIDC parameters.
   Until the client and its redirect URI are known to be registered, a refusal is a 400 page
   (``Refusal.redirect_uri`` None); after that it is posted back to the tool as an OIDC error. The
   user must be logged in here and be the ``login_hint`` user; nobody is logged in by a launch.
   T is read first, its attempt's client and user checked, and only then used up atomically, so a
   token cannot be burnt by someone it was not for; a second use finds nothing.
3. **The id_token** (``resource_claims``): signed RS256 with the platform's current key, valid
   ``ID_TOKEN_SECS``. The ToolCall moves to ``start-data-sent`` as it is handed out.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy.orm import Session

from webapp import lifecycle
from webapp.lifecycle import Status
from webapp.lti import deep_linking, grades, keys, registrations
from webapp.lti.models import LtiRegistration
from webapp.lti.transient import Transient
from webapp.lti.vocabulary import (
    AGS_ENDPOINT,
    AGS_SCOPES,
    CONTEXT,
    COURSE_OFFERING,
    CUSTOM,
    DEPLOYMENT_ID,
    INSTRUCTOR,
    LAUNCH_PRESENTATION,
    LEARNER,
    LTI_VERSION,
    MESSAGE_TYPE,
    NRPS,
    RESOURCE_LINK,
    RESOURCE_LINK_REQUEST,
    ROLES,
    TARGET_LINK_URI,
    TOOL_PLATFORM,
    VERSION,
)
from webapp.models import Exam, ToolCall, User
from webapp.tokens import StartTokens
from webapp.vendor_client import add_query

#: Lifetime of an id_token (at most 5 minutes).
ID_TOKEN_SECS = 300
#: Lifetime of a deep-linking launch hint.
HINT_SECS = 600
DEEP_LINK_HINT = "deep-link-hint"
#: The OIDC parameters of an authorization request.
PARAMETERS = (
    "scope",
    "response_type",
    "response_mode",
    "prompt",
    "client_id",
    "redirect_uri",
    "login_hint",
    "lti_message_hint",
    "state",
    "nonce",
)


class Refusal(Exception):
    """An authorization request refused with OIDC ``error``. ``redirect_uri`` is where the error
    may be posted back (None: only a page can say it); ``tool`` names the client when known."""

    def __init__(self, error: str, description: str, redirect_uri: str | None = None, tool: str = ""):
        super().__init__(description)
        self.error = error
        self.description = description
        self.redirect_uri = redirect_uri
        self.tool = tool


@dataclass(frozen=True)
class Launch:
    """An authorization granted: the id_token to post to ``redirect_uri`` with ``state``."""

    redirect_uri: str
    id_token: str
    state: str | None
    tool: str
    what: str


def login_hint(user: User) -> str:
    return user.persnr


def target_link_uri(exam: Exam, registration: LtiRegistration) -> str:
    return exam.launch_url or registration.launch_url


def login_initiation(exam: Exam, registration: LtiRegistration, user: User, token: str, issuer: str) -> str:
    """The tool's login URL with the login initiation parameters of a resource launch."""
    return add_query(
        registration.login_url,
        iss=issuer,
        login_hint=login_hint(user),
        target_link_uri=target_link_uri(exam, registration),
        lti_message_hint=token,
        client_id=registration.lti_client_id,
        lti_deployment_id=registration.deployment_id,
    )


def deep_linking_initiation(
    registration: LtiRegistration, user: User, transient: Transient, issuer: str
) -> str:
    """The tool's login URL for a deep-linking launch by (admin) ``user``."""
    hint = transient.issue(DEEP_LINK_HINT, {"client": registration.client_id, "user": user.id}, HINT_SECS)
    return add_query(
        registration.login_url,
        iss=issuer,
        login_hint=login_hint(user),
        target_link_uri=registration.deep_linking_url,
        lti_message_hint=hint,
        client_id=registration.lti_client_id,
        lti_deployment_id=registration.deployment_id,
    )


def authorize(
    session: Session,
    params: Mapping[str, str],
    user: User | None,
    start_tokens: StartTokens,
    transient: Transient,
    config: Mapping,
) -> Launch:
    """Check an authorization request (§ 2 of the module) and grant it; raises ``Refusal``."""
    registration = registrations.by_client_id(session, params.get("client_id"))
    if registration is None:
        raise Refusal("unauthorized_client", "client_id is not the client_id of a registered LTI tool")
    tool = registration.client.name
    redirect_uri = params.get("redirect_uri") or ""
    if redirect_uri not in registrations.allowed_redirect_uris(session, registration):
        raise Refusal(
            "invalid_request", f"redirect_uri {redirect_uri!r} is not registered for this tool", tool=tool
        )

    def refuse(error: str, description: str) -> Refusal:
        return Refusal(error, description, redirect_uri, tool)

    if "openid" not in (params.get("scope") or "").split():
        raise refuse("invalid_scope", "scope must be openid")
    if params.get("response_type") != "id_token":
        raise refuse("unsupported_response_type", "response_type must be id_token")
    if params.get("response_mode") != "form_post":
        raise refuse("invalid_request", "response_mode must be form_post")
    if params.get("prompt") not in (None, "", "none"):
        raise refuse("invalid_request", "prompt must be none: the platform does not ask the user anything")
    for name in ("nonce", "login_hint", "lti_message_hint"):
        if not params.get(name):
            raise refuse("invalid_request", f"{name} is missing")
    if user is None:
        raise refuse("login_required", "nobody is logged in to the portal in this browser")
    if params["login_hint"] != login_hint(user):
        raise refuse("login_required", "the user logged in to the portal is not the login_hint user")
    hint = params["lti_message_hint"]
    issuer = config["TOOLCALL_PUBLIC_URL"]
    keys.current(session, config)  # made (and committed) now if there is none, not mid-launch
    toolcall_id = start_tokens.peek(hint)
    if toolcall_id is not None:
        return _resource_launch(session, registration, user, toolcall_id, hint, params, start_tokens, config)
    deep = transient.read(DEEP_LINK_HINT, hint)
    if deep is None:
        raise refuse("invalid_request_object", "lti_message_hint is unknown, used or expired: start again")
    if deep["client"] != registration.client_id:
        raise refuse("unauthorized_client", "lti_message_hint was issued to another tool")
    if deep["user"] != user.id:
        raise refuse("login_required", "lti_message_hint was issued to another user")
    if transient.take(DEEP_LINK_HINT, hint) is None:
        raise refuse("invalid_request_object", "lti_message_hint was used meanwhile: start again")
    claims = deep_linking.request_claims(registration, user, params["nonce"], transient, config)
    claims.update(_names(user, registration))
    token = keys.sign(session, config, {**_base(registration, user, params["nonce"], issuer), **claims})
    return Launch(redirect_uri, token, params.get("state"), tool, "deep-linking launch")


def _resource_launch(session, registration, user, toolcall_id, hint, params, start_tokens, config) -> Launch:
    redirect_uri, tool = params["redirect_uri"], registration.client.name
    toolcall = session.get(ToolCall, toolcall_id)
    if toolcall is None or toolcall.tool.client_id != registration.client_id:
        raise Refusal(
            "unauthorized_client", "lti_message_hint was issued to another tool", redirect_uri, tool
        )
    if toolcall.user_id != user.id:
        raise Refusal("login_required", "lti_message_hint was issued to another user", redirect_uri, tool)
    exam = toolcall.tool
    item = grades.default_line_item(session, exam)  # may commit: before anything else changes
    if start_tokens.consume(hint) != toolcall.id:
        raise Refusal(
            "invalid_request_object", "lti_message_hint was used meanwhile: start again", redirect_uri, tool
        )
    try:
        lifecycle.advance(
            session,
            toolcall,
            (Status.START_DATA_SENT, f"LTI launch: id_token for {tool} posted to {redirect_uri}"),
        )
    except (lifecycle.IllegalTransition, lifecycle.ConcurrentTransition):
        session.rollback()
        raise Refusal(
            "invalid_request_object",
            "this attempt is no longer waiting to be launched: start again",
            redirect_uri,
            tool,
        ) from None
    issuer = config["TOOLCALL_PUBLIC_URL"]
    claims = {
        **_base(registration, user, params["nonce"], issuer),
        **resource_claims(toolcall, item, registration, issuer),
    }
    token = keys.sign(session, config, claims)
    session.commit()
    return Launch(redirect_uri, token, params.get("state"), tool, f"launch of attempt {toolcall.id}")


def _base(registration: LtiRegistration, user: User, nonce: str, issuer: str) -> dict:
    now = int(time.time())
    return {
        "iss": issuer,
        "aud": registration.lti_client_id,
        "azp": registration.lti_client_id,
        "sub": user.persnr,
        "nonce": nonce,
        "iat": now,
        "exp": now + ID_TOKEN_SECS,
        VERSION: LTI_VERSION,
        DEPLOYMENT_ID: registration.deployment_id,
        ROLES: [INSTRUCTOR if user.is_admin else LEARNER],
        TOOL_PLATFORM: {"guid": issuer, "name": "toolcall", "product_family_code": "toolcall"},
    }


def _names(user: User, registration: LtiRegistration) -> dict:
    if not registration.send_names:
        return {}
    return {
        "given_name": user.first_name,
        "family_name": user.last_name,
        "name": f"{user.first_name} {user.last_name}".strip(),
        "email": user.email,
    }


def resource_claims(toolcall: ToolCall, item, registration: LtiRegistration, issuer: str) -> dict:
    """The claims of a resource launch of ``toolcall`` beyond the common ones."""
    exam, user = toolcall.tool, toolcall.user
    custom = registrations.custom_parameters(exam.custom)
    custom.update(
        toolcall_attempt=str(toolcall.attempt), toolcall_extra_time="true" if user.extra_time else "false"
    )
    return {
        MESSAGE_TYPE: RESOURCE_LINK_REQUEST,
        TARGET_LINK_URI: target_link_uri(exam, registration),
        RESOURCE_LINK: {"id": exam.slug, "title": exam.name},
        CONTEXT: {"id": exam.slug, "label": exam.slug, "title": exam.name, "type": [COURSE_OFFERING]},
        LAUNCH_PRESENTATION: {"document_target": "window", "return_url": f"{issuer}/tooluser/attempts/"},
        CUSTOM: custom,
        AGS_ENDPOINT: {
            "scope": list(AGS_SCOPES),
            "lineitems": grades.line_items_url(issuer, exam),
            "lineitem": grades.line_item_url(issuer, item),
        },
        NRPS: {
            "context_memberships_url": grades.context_url(issuer, exam) + "/memberships",
            "service_versions": ["2.0"],
        },
        **_names(user, registration),
    }
