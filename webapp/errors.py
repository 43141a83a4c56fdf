"""Errors: the one envelope of the vendor API, and one styled page for every other error.

The vendor API answers JSON to programs and a page to browsers:

{"type": "error", "token": "<token or null>", "data": {"error": "<code>", "msg": "<human text>"}}

Every other path answers an HTTP error (400 -- a missing or expired CSRF token too --, 403, 404,
405, 413, 429, 500) with ``templates/error.html``: what happened in words, and a way back.
"""

from __future__ import annotations

from flask import Response, current_app, jsonify, render_template, request
from flask_login import current_user
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

#: code -> HTTP status (docs/api.md §2).
STATUS = {
    "missing-token": 400,
    "token-invalid": 401,
    "token-expired": 401,
    "missing-client": 400,
    "unknown-client": 404,
    "client-auth-failed": 401,
    "rate-limited": 429,
    "not-found": 404,
    "method-not-allowed": 405,
    "bad-request": 400,
    "content-too-large": 413,
    "server-error": 500,
}

#: 401 answers say how to authenticate, as the original did.
WWW_AUTHENTICATE = 'Token realm="Person", location="renew-token-url"'


def is_api_path(path: str) -> bool:
    """Whether ``path`` belongs to the vendor API, whose errors are the envelope."""
    return path.startswith("/.api/") or path in ("/fetch-token/", "/result/")


def wants_html() -> bool:
    """Browsers (who prefer text/html to application/json) get pages; programs get JSON."""
    best = request.accept_mimetypes.best_match(["application/json", "text/html"], default="application/json")
    return (
        best == "text/html"
        and request.accept_mimetypes["text/html"] > request.accept_mimetypes["application/json"]
    )


def api_error(code: str, msg: str, token: str | None = None) -> Response:
    status = STATUS[code]
    if wants_html():
        response = Response(
            render_template("error.html", code=code, msg=msg, status=status),
            status=status,
            mimetype="text/html",
        )
    else:
        response = jsonify({"type": "error", "token": token, "data": {"error": code, "msg": msg}})
        response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = WWW_AUTHENTICATE
    return response


def page(code: str, msg: str, status: int) -> Response:
    """The site's error page, for people."""
    return Response(
        render_template("error.html", code=code, msg=msg, status=status), status=status, mimetype="text/html"
    )


def size(n: int) -> str:
    """A number of bytes as people say it: 1 MiB, 64 KiB, 1000 bytes."""
    if n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    if n % (1 << 10) == 0:
        return f"{n >> 10} KiB"
    return f"{n} bytes"


def content_too_large(_error) -> Response:
    """413: a body over ``MAX_CONTENT_LENGTH``, or a multipart form over its field limits."""
    config = current_app.config
    limits = (
        f"at most {size(config['MAX_CONTENT_LENGTH'])} in all, {size(config['MAX_FORM_MEMORY_SIZE'])} "
        f"in one form field and {config['MAX_FORM_PARTS']} fields"
    )
    if is_api_path(request.path):
        return api_error(
            "content-too-large",
            f"the request is larger than the portal takes ({limits}); the vendor API takes no body",
            request.args.get("access_token"),
        )
    return page("Too much data", f"What you sent is larger than the portal takes ({limits}).", 413)


def too_many_requests(error: HTTPException) -> Response:
    """429 from the rate limiter: the envelope for the vendor API, a page for people."""
    if request.blueprint == "api":
        return api_error(
            "rate-limited",
            "too many requests; slow down and try again in a minute",
            request.args.get("access_token"),
        )
    return error_page(error)


#: status -> (title, what happened and what to do), for people.
PAGES = {
    400: ("Bad request", "The page could not understand what your browser sent. Go back and try again."),
    403: ("Not allowed", "You may not open this page. If you think you should, ask an operator."),
    404: (
        "Page not found",
        "There is no page at this address. Check the link, or start again from the home page.",
    ),
    405: ("Not allowed here", "This page cannot be used that way. Start again from the home page."),
    413: ("Too much data", "What you sent is larger than this site accepts. Send less, or ask an operator."),
    429: ("Too many attempts", "Too many attempts in a short time. Wait a minute and try again."),
    500: (
        "Something went wrong",
        "The portal could not answer. Try again in a moment; if it keeps happening, tell an operator.",
    ),
}
#: A form whose CSRF token is missing or expired (a page left open for hours, cookies cleared).
CSRF_MESSAGE = (
    "The form had expired or was sent without its security token. Go back, reload the page and send it again."
)


def error_page(error: HTTPException) -> Response:
    """The styled page of an HTTP error, with a way back (home, or the login when logged out)."""
    status = error.code or 500
    title, msg = PAGES.get(status, (error.name, error.description or ""))
    detail = None
    if isinstance(error, CSRFError):
        title, msg, detail = "The form expired", CSRF_MESSAGE, error.description  # which check failed
    response = Response(
        render_template(
            "error.html", status=status, code=title, msg=msg, detail=detail, logged_in=_logged_in()
        ),
        status=status,
        mimetype="text/html",
    )
    if status == 405 and getattr(error, "valid_methods", None):
        response.headers["Allow"] = ", ".join(sorted(error.valid_methods))
    if status == 429 and error.get_headers():
        for name, value in error.get_headers():  # Retry-After and the limiter's headers
            if name.lower() != "content-type":
                response.headers.setdefault(name, value)
    return response


def _logged_in() -> bool:
    try:
        return bool(current_user.is_authenticated)
    except Exception:  # the failure being reported may be the database that loads the user
        return False


def http_error(error: HTTPException):
    """Every HTTP error no view or blueprint answered itself: a page for people, the envelope on
    the vendor API's paths. Redirects and other non-errors pass through."""
    if error.code is None or error.code < 400:
        return error
    if is_api_path(request.path):  # 404, 405 and 429 have handlers of their own
        if error.code >= 500:
            return api_error("server-error", "the portal could not answer; try again later")
        if error.code == 400:
            return api_error("bad-request", error.description or "the request could not be understood")
        return error
    return error_page(error)
