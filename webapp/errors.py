"""The one error envelope of the vendor API, answered as JSON to programs and as a page to browsers.

{"type": "error", "token": "<token or null>", "data": {"error": "<code>", "msg": "<human text>"}}
"""

from __future__ import annotations

from flask import Response, current_app, jsonify, render_template, request

#: code -> HTTP status (spec §2).
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
    return page("content-too-large", f"The request is larger than the portal takes ({limits}).", 413)


def too_many_requests(_error) -> Response:
    """429 from the rate limiter: the envelope for the vendor API, a page for people."""
    if request.blueprint == "api":
        return api_error(
            "rate-limited",
            "too many requests; slow down and try again in a minute",
            request.args.get("access_token"),
        )
    return page("rate-limited", "Too many attempts. Wait a minute and try again.", 429)
