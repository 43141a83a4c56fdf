"""The LTI services over HTTP (blueprint ``lti_services``): the token endpoint, AGS and NRPS.

    POST /lti/1.3/token                                            access tokens (``access``)
    GET, POST /lti/1.3/contexts/<context>/lineitems                line items (``grades``)
    GET, PUT, DELETE /lti/1.3/contexts/<context>/lineitems/<id>
    POST /lti/1.3/contexts/<context>/lineitems/<id>/scores         scores
    GET  /lti/1.3/contexts/<context>/lineitems/<id>/results        results
    GET  /lti/1.3/contexts/<context>/memberships                   members (``members``)

Errors are JSON, ``{"error": ..., "error_description": ...}`` (RFC 6749's form, for every service).
A body must come in its AGS media type (415 otherwise). Lists come in pages of ``limit`` (default
``PAGE``) with ``Link: <...>; rel="next"``; since a tool library lower-cases that header whole, the
upper-case letters of a page URL are percent-encoded (``%45`` and ``%45`` lower-cased are the same
octet), so the URL still names the same page in lower case.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from flask import Blueprint, Response, current_app, g, jsonify, request
from sqlalchemy import select

from webapp.db import get_session
from webapp.limits import limiter, setting
from webapp.lti import access, grades, members, problems
from webapp.lti.access import ServiceError
from webapp.lti.vocabulary import (
    MEDIA_LINEITEM,
    MEDIA_LINEITEMS,
    MEDIA_MEMBERSHIPS,
    MEDIA_RESULTS,
    MEDIA_SCORE,
    SCOPE_LINEITEM,
    SCOPE_LINEITEM_READONLY,
    SCOPE_MEMBERSHIPS,
    SCOPE_RESULT_READONLY,
    SCOPE_SCORE,
)
from webapp.models import Exam

bp = Blueprint("lti_services", __name__, url_prefix="/lti/1.3")

#: Items in a page when the tool asks for no ``limit``, and the most it may ask for.
PAGE = 100
MAX_PAGE = 1000


def _transient():
    return current_app.extensions["lti_transient"]


@bp.errorhandler(ServiceError)
def service_error(error: ServiceError) -> Response:
    problems.record(
        _transient().redis, g.get("lti_tool", ""), f"{request.method} {request.path}", error.description
    )
    response = jsonify({"error": error.error, "error_description": error.description})
    response.status_code = error.status
    if error.status == 401 and error.error == "invalid_token":
        response.headers["WWW-Authenticate"] = (
            f'Bearer error="invalid_token", error_description="{error.description}"'
        )
    response.headers["Cache-Control"] = "no-store"
    return response


# ---- the token endpoint -------------------------------------------------------------------------------


@bp.post("/token")
@limiter.limit(setting("TOOLCALL_RATELIMIT_API"))
def token():
    answer = access.issue_token(get_session(), request.form, _transient(), current_app.config)
    response = jsonify(answer)
    response.headers["Cache-Control"] = "no-store"
    return response


# ---- the context and its guard ------------------------------------------------------------------------


def _context(context: str, scopes: Sequence[str]) -> Exam:
    """The exam named by ``context`` if the request's token may use it with one of ``scopes``."""
    granted = access.grant(request.headers.get("Authorization"), _transient())
    g.lti_tool = granted.client_name
    if any("\x00" in value for value in request.args.values()):  # no column can hold one
        raise ServiceError(400, "invalid_request", "a query parameter holds a NUL character")
    exam = get_session().scalar(select(Exam).where(Exam.slug == context)) if "\x00" not in context else None
    if exam is None:
        raise ServiceError(404, "not_found", f"no context {context!r}")
    access.require(granted, scopes, exam.client_id)
    return exam


def _body(media_type: str) -> bytes:
    if request.mimetype != media_type:
        raise ServiceError(415, "unsupported_media_type", f"send the body as {media_type}")
    if (request.content_length or 0) > grades.MAX_BODY:
        raise ServiceError(413, "too_large", f"a body is at most {grades.MAX_BODY // 1024} KiB")
    return request.get_data(cache=False)


def _json(document, media_type: str, status: int = 200) -> Response:
    response = jsonify(document)
    response.status_code = status
    response.mimetype = media_type
    return response


def _paged(items: Sequence, render: Callable, media_type: str, wrap: Callable | None = None) -> Response:
    """One page of ``items`` (``limit``, ``page``), rendered, with a case-proof ``Link`` to the next."""
    limit = _positive("limit", PAGE)
    if limit > MAX_PAGE:
        raise ServiceError(400, "invalid_request", f"limit is at most {MAX_PAGE}")
    number = _positive("page", 1)
    start = (number - 1) * limit
    shown = [render(item) for item in items[start : start + limit]]
    response = _json(wrap(shown) if wrap else shown, media_type)
    if start + limit < len(items):
        query = request.args.to_dict()
        query.update(limit=str(limit), page=str(number + 1))
        # From the public URL: behind a proxy, the request's own host is not the one the tool knows.
        page_url = f"{_issuer()}{quote(request.path)}?{urlencode(query)}"
        response.headers["Link"] = f'<{case_proof(page_url)}>; rel="next"'
    return response


def _positive(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and 0 < len(raw) < 10 and int(raw) > 0):
        raise ServiceError(400, "invalid_request", f"{name} must be a whole number greater than 0")
    return int(raw)


def case_proof(url: str) -> str:
    """``url`` with the upper-case letters of its path and query percent-encoded: the same URL,
    also after the whole of it is lower-cased."""
    parts = urlsplit(url)

    def encode(text: str) -> str:
        return re.sub(r"[A-Z]", lambda m: f"%{ord(m.group()):02X}", text)

    return urlunsplit((parts.scheme, parts.netloc.lower(), encode(parts.path), encode(parts.query), ""))


def _issuer() -> str:
    return current_app.config["TOOLCALL_PUBLIC_URL"]


# ---- AGS: line items ----------------------------------------------------------------------------------

_READ_ITEMS = (SCOPE_LINEITEM, SCOPE_LINEITEM_READONLY)


@bp.route("/contexts/<context>/lineitems", methods=["GET", "POST"])
@limiter.limit(setting("TOOLCALL_RATELIMIT_API"))
def line_items(context: str):
    session = get_session()
    if request.method == "POST":
        exam = _context(context, [SCOPE_LINEITEM])
        item = grades.save_line_item(session, exam, _body(MEDIA_LINEITEM))
        session.commit()
        return _json(grades.line_item_json(_issuer(), item), MEDIA_LINEITEM, 201)
    exam = _context(context, _READ_ITEMS)
    filters = {name: request.args.get(name) for name in ("resource_link_id", "resource_id", "tag")}
    items = grades.line_items(session, exam, filters)
    return _paged(items, lambda item: grades.line_item_json(_issuer(), item), MEDIA_LINEITEMS)


@bp.route("/contexts/<context>/lineitems/<item_id>", methods=["GET", "PUT", "DELETE"])
@limiter.limit(setting("TOOLCALL_RATELIMIT_API"))
def line_item(context: str, item_id: str):
    session = get_session()
    exam = _context(context, _READ_ITEMS if request.method == "GET" else [SCOPE_LINEITEM])
    item = grades.find_line_item(session, exam, item_id)
    if request.method == "DELETE":
        grades.delete_line_item(session, item)
        session.commit()
        return "", 204
    if request.method == "PUT":
        item = grades.save_line_item(session, exam, _body(MEDIA_LINEITEM), item)
        session.commit()
    return _json(grades.line_item_json(_issuer(), item), MEDIA_LINEITEM)


# ---- AGS: scores and results --------------------------------------------------------------------------


@bp.post("/contexts/<context>/lineitems/<item_id>/scores")
@limiter.limit(setting("TOOLCALL_RATELIMIT_API"))
def scores(context: str, item_id: str):
    session = get_session()
    exam = _context(context, [SCOPE_SCORE])
    item = grades.find_line_item(session, exam, item_id)
    body = _body(MEDIA_SCORE)
    score, toolcall = grades.publish(session, exam.client.lti, item, body)
    current_app.logger.info(
        "AGS score %s for line item %s%s", score.id, item.id, f" (toolcall {toolcall.id})" if toolcall else ""
    )
    return "", 204


@bp.get("/contexts/<context>/lineitems/<item_id>/results")
@limiter.limit(setting("TOOLCALL_RATELIMIT_API"))
def results(context: str, item_id: str):
    session = get_session()
    exam = _context(context, [SCOPE_RESULT_READONLY])
    item = grades.find_line_item(session, exam, item_id)
    found = grades.results(session, item, request.args.get("user_id"))
    return _paged(found, lambda result: grades.result_json(_issuer(), item, result), MEDIA_RESULTS)


# ---- NRPS ---------------------------------------------------------------------------------------------


@bp.get("/contexts/<context>/memberships")
@limiter.limit(setting("TOOLCALL_RATELIMIT_API"))
def memberships(context: str):
    exam = _context(context, [SCOPE_MEMBERSHIPS])
    rlid = request.args.get("rlid")
    if rlid is not None and rlid != exam.slug:
        raise ServiceError(
            400, "invalid_request", f"rlid must be this context's resource link, {exam.slug!r}"
        )
    registration = exam.client.lti
    found = members.members(get_session(), exam, request.args.get("role"))
    url = grades.context_url(_issuer(), exam) + "/memberships"
    return _paged(
        found,
        lambda user: members.member_json(user, registration),
        MEDIA_MEMBERSHIPS,
        wrap=lambda shown: {"id": url, "context": members.context_json(exam), "members": shown},
    )
