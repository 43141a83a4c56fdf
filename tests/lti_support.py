"""The portal and an LTI 1.3 tool as real processes, and a candidate's browser without a browser.

``running_lti_system(directory)`` does what an operator and a tool's administrator do:

- the portal (gunicorn) on 127.0.0.1 with ``TOOLCALL_PUBLIC_URL`` its own URL, on a SQLite file
  and Redis database 2 (the caller empties it), schema made with ``init-db``;
- the tool registered with ``lti-tools add ... --json`` (its key set URL, or its PEM with
  ``key="pem"``), the printed JSON written to the file the tool reads its configuration from;
- the tool (``tests/lti_tool``, PyLTI1p3) served by gunicorn on 127.0.0.2: another host, so the
  two keep their cookies apart as two sites on the internet do.

``Browser`` is a ``requests.Session`` that also submits the pages' forms as a browser would
(hidden fields included): the portal's self-posting launch form, the tool's deep-linking answer.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

import requests
from browser_support import Served, clean_environment, listening, log_tail, url_of
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from helpers import REPO, suite_redis_url
from sqlalchemy import select

from webapp.db import Database
from webapp.lti import grades
from webapp.models import Client, Exam, User

#: The Redis database of the LTI tests (portal tests use 4, the browser test 3, fetches 5-6).
REDIS_URL = suite_redis_url(2)
TOOL_NAME = "quizzer"
PORTAL_SECRET = "the LTI tests' portal key"


# ---- forms ------------------------------------------------------------------------------------------


@dataclass
class Form:
    action: str
    method: str
    id: str | None
    fields: dict[str, str] = field(default_factory=dict)


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self._open: Form | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "form":
            self._open = Form(attributes.get("action") or "", (attributes.get("method") or "get").lower(),
                              attributes.get("id"))  # fmt: skip
            self.forms.append(self._open)
        elif tag == "input" and self._open is not None and attributes.get("name"):
            self._open.fields[attributes["name"]] = attributes.get("value") or ""

    def handle_endtag(self, tag):
        if tag == "form":
            self._open = None


def forms(html: str) -> list[Form]:
    parser = _Forms()
    parser.feed(html)
    return parser.forms


# ---- the browser ------------------------------------------------------------------------------------


class Browser(requests.Session):
    """A candidate's (or admin's) browser: cookies per host, redirects followed, forms submitted."""

    def submit(
        self, response: requests.Response, action: str | None = None, **values: str
    ) -> requests.Response:
        """Submit the first form of the page ``response`` shows (the first whose action ends with
        ``action``, when given), with ``values`` on top of its fields."""
        found = forms(response.text)
        form = next(f for f in found if action is None or f.action.endswith(action))
        target = urljoin(response.url, form.action) if form.action else response.url
        data = {**form.fields, **values}
        if form.method == "post":
            return self.post(target, data=data, timeout=30)
        return self.get(target, params=data, timeout=30)

    def log_in(self, portal_url: str, username: str, password: str) -> None:
        page = self.get(f"{portal_url}/accounts/login/", timeout=30)
        answer = self.submit(page, action="", username=username, password=password)
        assert answer.status_code == 200 and answer.url.rstrip("/") == portal_url, (
            answer.status_code,
            answer.url,
        )

    def start(self, portal_url: str, slug: str) -> requests.Response:
        """Press Start: the answer is the portal's page that posts the id_token to the tool."""
        page = self.get(f"{portal_url}/tooluser/tools/{slug}/", timeout=30)
        return self.submit(page, action=f"/tooluser/tools/{slug}/")

    def launch(self, portal_url: str, slug: str) -> requests.Response:
        """Press Start and let the launch page post itself: the tool's page."""
        return self.submit(self.start(portal_url, slug))


def launch_form(response: requests.Response) -> Form:
    """The portal's self-posting form (id_token or OIDC error) on ``response``."""
    [form] = [form for form in forms(response.text) if form.id == "lti-form-post"]
    return form


# ---- the system -------------------------------------------------------------------------------------


@dataclass
class ToolKey:
    private_pem: str
    public_pem: str
    path: Path

    @classmethod
    def make(cls, path: Path) -> ToolKey:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private_pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        public_pem = (
            private.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )
        path.write_text(private_pem)
        Path(f"{path}.pub").write_text(public_pem)
        return cls(private_pem, public_pem, path)


@dataclass
class LtiSystem:
    portal_url: str
    tool_url: str
    directory: Path
    portal_env: dict[str, str]
    registration: dict
    tool_key: ToolKey
    database_url: str
    logs: list[Path]

    def cli(self, *args: str) -> str:
        return flask_cli(self.portal_env, *args)

    def records(self, event: str | None = None) -> list[dict]:
        path = self.directory / "tool-records.jsonl"
        if not path.exists():
            return []
        found = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [r for r in found if event is None or r["event"] == event]

    @contextlib.contextmanager
    def database(self) -> Iterator[Database]:
        database = Database(self.database_url)
        try:
            yield database
        finally:
            database.dispose()

    def add_user(self, username: str, password: str, admin: bool = False, **names: str) -> str:
        """A user who can log in; returns their persnr (the ``sub`` of their launches)."""
        with self.database() as database, database.session() as session:
            user = User(username=username, is_admin=admin, **names)
            user.set_password(password)
            session.add(user)
            session.flush()
            return user.persnr

    def add_exam(self, slug: str, **fields) -> None:
        """An exam of the tool, saved directly (``tools add`` through the CLI takes seconds)."""
        with self.database() as database, database.session() as session:
            client = session.scalar(select(Client).where(Client.name == TOOL_NAME))
            exam = Exam(slug=slug, client=client, name=f"Exam {slug}", **fields)
            session.add(exam)
            session.flush()
            grades.set_default(session, exam)

    def browser(self, username: str, password: str) -> Browser:
        browser = Browser()
        browser.log_in(self.portal_url, username, password)
        return browser

    @contextlib.contextmanager
    def logs_on_failure(self) -> Iterator[None]:
        try:
            yield
        except BaseException as e:
            for path in self.logs:
                e.add_note(f"---- {path.name} (last lines)\n{log_tail(path)}")
            raise


def flask_cli(env: dict[str, str], *args: str) -> str:
    """One ``flask --app webapp`` command, as an operator runs it; its standard output."""
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "webapp", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, (
        f"flask {' '.join(args)}: status {done.returncode}\n{done.stdout}{done.stderr}"
    )
    return done.stdout


@contextlib.contextmanager
def running_lti_system(directory: Path, key: str = "jwks", redis_url: str = REDIS_URL) -> Iterator[LtiSystem]:
    """The portal and the tool (see the module); the Redis database (by default 2) must be empty
    and the caller's."""
    tool_key = ToolKey.make(directory / "tool-key.pem")
    portal_listener, tool_listener = listening("127.0.0.1"), listening("127.0.0.2")
    portal_url, tool_url = url_of(portal_listener), url_of(tool_listener)
    database_url = f"sqlite:///{directory / 'portal.sqlite3'}"
    portal_env = clean_environment(
        {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "SECRET_KEY": PORTAL_SECRET,
         "TOOLCALL_INSTANCE": str(directory / "portal"), "TOOLCALL_PUBLIC_URL": portal_url,
         "TOOLCALL_RATELIMIT": "off"}
    )  # fmt: skip
    flask_cli(portal_env, "init-db")
    tool_key_option = (
        ["--jwks-url", f"{tool_url}/jwks"]
        if key == "jwks"
        else ["--public-key-file", str(tool_key.path) + ".pub"]
    )
    printed = flask_cli(portal_env, "lti-tools", "add", TOOL_NAME, "--login-url", f"{tool_url}/login",
                        "--launch-url", f"{tool_url}/launch", *tool_key_option, "--json")  # fmt: skip
    registration = json.loads(printed)
    (directory / "tool-config.json").write_text(printed)
    tool_env = clean_environment(
        {"LTI_TOOL_CONFIG": str(directory / "tool-config.json"), "LTI_TOOL_PRIVATE_KEY": str(tool_key.path),
         "LTI_TOOL_RECORDS": str(directory / "tool-records.jsonl"), "LTI_TOOL_SECRET": "the tool's own key"}
    )  # fmt: skip
    servers: list[Served] = []
    try:
        servers.append(Served("LTI tool", "tests.lti_tool.app:create_app()", tool_env, directory / "tool.log",
                              workers=1, listener=tool_listener))  # fmt: skip
        servers.append(Served("portal", "webapp:create_app()", portal_env, directory / "portal.log",
                              listener=portal_listener))  # fmt: skip
        servers[0].wait_ready("/jwks")
        servers[1].wait_ready("/accounts/login/")
        assert (servers[0].url, servers[1].url) == (tool_url, portal_url)
        yield LtiSystem(portal_url, tool_url, directory, portal_env, registration, tool_key, database_url,
                        [s.log_path for s in servers])  # fmt: skip
    finally:
        problems = []
        for server in reversed(servers):
            try:
                server.stop()
            except AssertionError as e:
                problems.append(str(e))
        assert not problems, "\n\n".join(problems)


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html).group(1)
