"""A vendor's result URL for tests: a local HTTP server whose answers the test scripts per token.

``VendorStub()`` listens on 127.0.0.1 (a free port) in a thread of its own. Each client gets the
result URL ``stub.result_url(name)`` (``http://127.0.0.1:<port>/<name>/result/``); the portal calls
it with ``?access_token=R``. ``stub.script(name, R, *answers)`` sets what the vendor answers for R:
the answers in turn, the last one again for every later request. An unscripted token gets 404 (the
vendor does not know it), as a real vendor would. Every request is recorded (``stub.requests``),
with its arrival time and headers, so a test can see how often and when the portal came.

An ``Answer`` may be held (``hold=threading.Event()``): the request then waits until the test sets
the event (at most ``HOLD_LIMIT`` seconds) -- a vendor that is slow to answer, for as long as the
test needs.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

#: A held answer is given anyway after this long, so that a failing test cannot hang the server.
HOLD_LIMIT = 30.0


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    hold: threading.Event | None = None

    @classmethod
    def json(cls, document: object, status: int = 200, **kwargs) -> Answer:
        return cls(status, json.dumps(document).encode(), {"Content-Type": "application/json"}, **kwargs)


@dataclass(frozen=True)
class Request:
    at: float  # time.monotonic() on arrival
    client: str
    token: str | None
    path: str
    headers: dict[str, str]


class VendorStub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scripts: dict[tuple[str, str], list[Answer]] = {}
        self._requests: list[Request] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
                stub._answer(self)

            def log_message(self, format: str, *args: object) -> None:
                pass  # the test reads stub.requests, not a log on stderr

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="vendor-stub", daemon=True)
        self._thread.start()

    def result_url(self, client: str) -> str:
        return f"http://127.0.0.1:{self.port}/{client}/result/"

    def script(self, client: str, token: str, *answers: Answer) -> None:
        """What the vendor answers for ``token``: ``answers`` in turn, then the last one for ever."""
        assert answers, "script at least one answer"
        with self._lock:
            self._scripts[(client, token)] = list(answers)

    def requests(self, client: str, token: str | None = None) -> list[Request]:
        """The requests for ``client`` (and ``token``, if given) so far, oldest first."""
        with self._lock:
            return [r for r in self._requests if r.client == client and (token is None or r.token == token)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        client = parts.path.strip("/").split("/")[0]
        token = parse_qs(parts.query).get("access_token", [None])[0]
        with self._lock:
            self._requests.append(
                Request(time.monotonic(), client, token, handler.path, dict(handler.headers))
            )
            answers = self._scripts.get((client, token or ""))
            if answers is None:
                answer = Answer(404, b'{"error": "no such result"}')
            else:
                answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if answer.hold is not None:
            answer.hold.wait(HOLD_LIMIT)
        handler.send_response(answer.status)
        for name, value in answer.headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(answer.body)))
        handler.end_headers()
        handler.wfile.write(answer.body)
