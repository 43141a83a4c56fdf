"""Our calls to the toolcall portal, server to server (docs/api.md §2 and §3).

    GET <portal>/fetch-token/?access_token=T             the start data (T is used up)
    GET <portal>/result/?access_token=R&client=NAME      "the result R is ready: fetch it"

Every call has timeouts and asks for JSON; every failure is a ``PortalError`` whose message can be
shown to the user.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, urlencode

import requests

from examples.vendor.signatures import client_auth

#: Seconds to connect, and to wait for the answer.
TIMEOUT = (5, 15)
#: What the exam needs from the start data (the rest is shown or ignored).
REQUIRED_START_FIELDS = ("exam", "persnr", "system")


class PortalError(Exception):
    """The portal refused a call or could not be reached; ``code`` is its error code, if it gave one."""

    def __init__(self, message: str, code: str | None = None, status: int = 502):
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(frozen=True)
class Portal:
    """The portal at ``url``, as seen by client ``client`` (with its ``secret``, if it has one)."""

    url: str
    client: str
    secret: str | None = None

    def endpoint(self, path: str, **params: str) -> str:
        """The URL of ``path`` on the portal, with ``params`` as its query string."""
        return f"{self.url.rstrip('/')}/{path}?{urlencode(params, quote_via=quote)}"

    def fetch_start_data(self, token: str) -> dict:
        """The start data for start token ``token`` (docs/api.md §2: its ``data`` object)."""
        response = self._get(self.endpoint("fetch-token/", access_token=token), authenticate=True)
        body = _json(response)
        if response.status_code != 200:
            raise _refusal(response, body)
        data = body.get("data") if isinstance(body, dict) else None
        missing = [f for f in REQUIRED_START_FIELDS if not isinstance(data, dict) or f not in data]
        if body.get("type") != "person" or missing:
            raise PortalError(f"the portal's start data is incomplete (missing: {', '.join(missing)})")
        return data

    def result_page(self, token: str) -> str:
        """Where to send the user's browser once result ``token`` is stored: the portal's result page."""
        return self.endpoint("result/", access_token=token, client=self.client)

    def report_result(self, token: str) -> None:
        """Tell the portal that result ``token`` is ready; it then fetches it from our result URL."""
        response = self._get(self.result_page(token))
        if response.status_code != 200:
            raise _refusal(response, _json(response))

    def _get(self, url: str, authenticate: bool = False) -> requests.Response:
        request = requests.Request("GET", url, headers={"Accept": "application/json"}).prepare()
        if authenticate and self.secret:
            # Signed over the path and query of the prepared request: exactly what goes on the wire.
            request.headers["X-Toolcall-Auth"] = client_auth(
                self.client, self.secret, "GET", request.path_url
            )
        with requests.Session() as session:
            try:
                return session.send(request, timeout=TIMEOUT, allow_redirects=False)
            except requests.RequestException as e:
                raise PortalError(
                    f"the portal at {self.url} could not be reached ({type(e).__name__})"
                ) from e


def _json(response: requests.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _refusal(response: requests.Response, body: dict) -> PortalError:
    """The portal's error envelope (docs/api.md §2) as a PortalError with the portal's status."""
    data = body.get("data") if isinstance(body.get("data"), dict) else {}
    code, msg = data.get("error"), data.get("msg")
    status = response.status_code if 400 <= response.status_code < 500 else 502
    if code:
        return PortalError(msg or code, code, status)
    return PortalError(f"the portal answered HTTP {response.status_code}", None, status)
