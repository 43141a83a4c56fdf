"""What the portal accepts of a request before any view sees it: the inbound side of
``webapp.outbound``.

1. **The client's address.** Behind ``TOOLCALL_TRUSTED_PROXIES`` reverse proxies that set
   ``X-Forwarded-For`` and ``-Proto``, that many hops of them are believed (Werkzeug's ``ProxyFix``),
   so rate limits and logs see the client and not the proxy; no hop is believed by default, so a
   client cannot choose the address it is counted under.
2. **Bounded bodies.** A body declared larger than ``MAX_CONTENT_LENGTH``
   (``TOOLCALL_MAX_CONTENT_LENGTH``, 1 MiB) is refused with 413 before a byte of it is read,
   whatever the path or method; a streamed (chunked) one is read up to the limit and refused there;
   a multipart form is bounded per field and in fields (``MAX_FORM_MEMORY_SIZE``, ``MAX_FORM_PARTS``).
   Browsers get the site's page, vendors the API's envelope (``errors.content_too_large``).
3. **Forms are posted as forms.** Flask-WTF would read a JSON body as form data: a body that is no
   object failed with a 500, and JSON is the one way a lone surrogate gets into a form. The site's
   pages refuse JSON bodies (415); the vendor API takes no body at all, and the LTI services take
   JSON by design.
4. **Text the database can store.** A NUL (PostgreSQL refuses it even as a query parameter) or a
   lone surrogate (no UTF-8 exists for it) in the path, the query or a form field of a page is a 400
   before any query runs. The vendor API answers such values by its own table instead (a NUL in a
   client name is ``unknown-client``, in a token ``token-invalid``: ``webapp/api.py``).
"""

from __future__ import annotations

import re

from flask import Flask, Response, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix

from webapp.errors import content_too_large, is_api_path, page

__all__ = ["UNSTORABLE", "install"]

#: Characters no column can hold: NUL, and the surrogates (UTF-8 has no encoding for them alone).
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: The LTI platform's endpoints take JSON (AGS) and forms from tools, and answer bad values with
#: the LTI and OAuth error formats themselves (``webapp.lti``): only the size check applies.
LTI_PATHS = "/lti/1.3/"


def install(app: Flask) -> None:
    """Puts the checks in front of every view: call before anything else registers ``before_request``
    functions (CSRF, rate limits), so that nothing reads a body before its size is checked."""
    proxies = app.config["TOOLCALL_TRUSTED_PROXIES"]
    if proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies)
    app.before_request(check_request)
    app.register_error_handler(RequestEntityTooLarge, content_too_large)


def check_request() -> Response | None:
    """Refuses a body too large (413), a JSON body for a page (415), unstorable text (400)."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if limit is not None and (request.content_length or 0) > limit:
        # Answered from the headers: the body is never read (Werkzeug would only refuse it when a
        # view reads it, and a view that does not would leave it to the server to swallow).
        raise RequestEntityTooLarge()
    if "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        # A streamed body has no declared length, and Werkzeug, reading it for a form, stops at the
        # limit without a word: the form would be parsed cut short. Read it here, one byte past the
        # limit, and refuse it if that byte came; what was read is what the form is parsed from.
        request.max_content_length = limit + 1
        if len(request.get_data(cache=True)) > limit:
            raise RequestEntityTooLarge()
    if is_api_path(request.path) or request.path.startswith(LTI_PATHS):
        return None
    if request.method in STATE_CHANGING and request.is_json:
        return page(
            "unsupported-media-type",
            "The portal's forms are sent as forms (application/x-www-form-urlencoded or "
            "multipart/form-data), not as JSON.",
            415,
        )
    where = unstorable_part()
    if where is not None:
        return page(
            "bad-request",
            f"The {where} holds a character that cannot be stored (a NUL or an unpaired surrogate); "
            "remove it and try again.",
            400,
        )
    return None


def unstorable_part() -> str | None:
    """Which part of the request holds unstorable text (the address, or the form), if any."""
    # Every value of a repeated name counts: a view may read any of them (getlist).
    address = [*(request.view_args or {}).values(), *_texts(request.args.items(multi=True))]
    if any(isinstance(value, str) and UNSTORABLE.search(value) for value in address):
        return "address (URL)"
    if request.method in STATE_CHANGING and any(
        UNSTORABLE.search(value) for value in _texts(request.form.items(multi=True))
    ):
        return "form"
    return None


def _texts(items) -> list[str]:
    return [text for pair in items for text in pair]
