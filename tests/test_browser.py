"""The whole system through a real browser: a candidate takes the demo exam, an operator reads its log.

The portal (gunicorn), the demo vendor and a ``callbacks`` worker run as processes of their own
(``browser_support.running_system``); headless Chromium, driven by Playwright, plays the candidate
and then the operator, only through what the pages show: forms, buttons and links (docs/api.md §1, §6).

Every step leaves a full-page screenshot in ``test-artifacts/browser/`` at the repository root, for
a person to look at when the test fails, and for the documentation's pictures.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import REDIS_URL, System, chromium, running_system
from helpers import HAPPY_LOG, REPO
from portal_support import empty_redis

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture says so: a skip on a workstation, a failure in CI
    expect = None

pytestmark = pytest.mark.process

#: Where the screenshots go (ignored by git).
ARTIFACTS = REPO / "test-artifacts" / "browser"
#: A laptop-sized window: what the screenshots in docs/images show.
VIEWPORT = {"width": 1100, "height": 750}
#: Milliseconds any page waits for something it expects (the machine may be busy).
WAIT_MS = 60_000
#: The demo exam's right answers: question -> option.
ALL_RIGHT = {"q1": "sum", "q2": "absolute", "q3": "equals"}


class Screenshots:
    """Numbered full-page screenshots of the steps of one test, in ``directory``."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("*.png"):  # a shorter run must not leave a longer one's steps
            old.unlink()
        self.directory = directory
        self.taken = 0

    def take(self, page, step: str) -> None:
        self.taken += 1
        page.screenshot(path=self.directory / f"{self.taken:02d}-{step}.png", full_page=True)


@pytest.fixture(name="system")
def system_fixture(tmp_path: Path) -> Iterator[System]:
    with empty_redis(REDIS_URL), running_system(tmp_path) as system:
        yield system


@pytest.fixture(name="browser")
def browser_fixture() -> Iterator:
    with chromium() as browser:
        # Expectations wait as long as page actions do (Playwright's default is 5 s).
        expect.set_options(timeout=WAIT_MS)
        yield browser


def log_in(page, username: str, password: str) -> None:
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def take_the_exam(context, page, system: System, shots: Screenshots) -> None:
    """The candidate logs in, starts my-tool, answers all three questions right, and waits for the
    portal's result page to show the attempt finished."""
    page.goto("/")  # logged out: the portal asks for a login first
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    shots.take(page, "login")
    log_in(page, "user", "user")
    expect(page).to_have_url(f"{system.portal_url}/")
    start = page.get_by_role("button", name="Start My tool")
    expect(start).to_be_visible()
    shots.take(page, "home")

    # The start button opens the exam in a new window that cannot reach back into the portal's.
    # Chromium treats every target=_blank as noopener, so window.opener alone would not notice a
    # missing rel; the attribute is what protects candidates on browsers that do not.
    form = page.locator("form", has=start)
    expect(form).to_have_attribute("target", "_blank")
    expect(form).to_have_attribute("rel", re.compile(r"\bnoopener\b"))
    with context.expect_page(timeout=WAIT_MS) as opened:
        start.click()
    exam = opened.value
    exam.wait_for_url(f"{system.vendor_url}/exam/")
    assert exam.evaluate("window.opener === null"), "the exam's window has an opener (rel=noopener missing)"
    expect(exam.get_by_role("heading", name="Hello Uma")).to_be_visible()
    shots.take(exam, "exam")

    for question, answer in ALL_RIGHT.items():
        exam.locator(f'input[name="{question}"][value="{answer}"]').check()
    shots.take(exam, "exam-answered")
    exam.get_by_role("button", name="Submit answers").click()

    # Back at the portal, whose result page refreshes itself until the worker has stored the result.
    exam.wait_for_url(re.compile(re.escape(f"{system.portal_url}/result/?")))
    expect(exam.locator("#attempt-phrase")).to_have_text("passed — score 3")
    expect(exam.get_by_role("heading", name="Your result has been stored.")).to_be_visible()
    shots.take(exam, "result-finished")
    exam.close()


def read_the_log(page, shots: Screenshots) -> None:
    """The operator logs in (in the same window, after the candidate logged out), finds the attempt
    among the ToolCalls and reads its log."""
    page.get_by_role("button", name="Log out user").click()
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    log_in(page, "admin", "admin")
    page.get_by_role("link", name="Ops", exact=True).click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    shots.take(page, "ops-dashboard")

    page.get_by_role("link", name="ToolCalls", exact=True).click()
    attempt = page.locator("tr").filter(has=page.get_by_role("cell", name="my-tool", exact=True))
    expect(attempt).to_have_count(1)
    expect(attempt.get_by_role("cell", name="user", exact=True)).to_be_visible()
    expect(attempt.get_by_role("cell", name="finished-ok", exact=True)).to_be_visible()
    shots.take(page, "ops-toolcalls")

    attempt.get_by_role("link").first.click()
    expect(page.get_by_role("heading", name=re.compile(r"^ToolCall \d+$"))).to_be_visible()
    expect(page.locator("tr.log td:nth-child(2)")).to_have_text(HAPPY_LOG)
    shots.take(page, "ops-toolcall-log")


@pytest.mark.timeout(300)
def test_a_candidate_takes_the_demo_exam_and_an_operator_sees_its_whole_log(system, browser):
    shots = Screenshots(ARTIFACTS)
    context = browser.new_context(viewport=VIEWPORT, base_url=system.portal_url)
    context.set_default_timeout(WAIT_MS)
    try:
        with system.logs_on_failure():
            page = context.new_page()
            take_the_exam(context, page, system, shots)
            read_the_log(page, shots)
    except BaseException:
        for open_page in context.pages:  # what the browser showed when it went wrong
            with contextlib.suppress(Exception):  # the test's own error is the one to report
                shots.take(open_page, "failure")
        raise
    finally:
        context.close()
