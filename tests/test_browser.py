"""The whole system through a real browser: what candidates and operators see.

The portal (gunicorn), the demo vendor and a ``callbacks`` worker run as processes of their own
(``browser_support.running_system``), once for the module; every test has a candidate of its own.
Headless Chromium, driven by Playwright, plays the candidates and the operator, only through what
the pages show: forms, buttons and links (docs/api.md §1, §6). Nothing sleeps: every step waits for
what the page is expected to show.

- A candidate who answers well reads "passed — score 3", one who does not "not passed — score 1";
  an operator reads the attempt's whole log.
- A running attempt is on the home page with a way back to it; starting again asks first, and
  only the confirmation ends the running attempt.
- An unknown address is the styled 404 page, with a link home that works.
- The result page of a token the vendor does not know ends: it stops refreshing and says what
  happened once the portal gives up (after ``GIVE_UP_SECS`` here).
- Tables fit a narrow window: a wide one scrolls inside its box, the page does not.
- "Times are UTC." is said on the pages that show times, and only there.

Every step leaves a full-page screenshot in ``test-artifacts/browser/<test>/`` at the repository
root, for a person to look at when a test fails. The pictures of the README are taken by the first
test into ``test-artifacts/browser/docs-images/``; ``make screenshots`` copies them to docs/images.
"""

from __future__ import annotations

import contextlib
import re
import secrets
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
#: Where the first test puts the README's pictures (``make screenshots`` copies them to docs/images).
DOCS_IMAGES = ARTIFACTS / "docs-images"
#: A laptop-sized window: what the screenshots in docs/images show.
VIEWPORT = {"width": 1100, "height": 750}
#: A phone-sized window, where wide tables must scroll inside their box.
NARROW = {"width": 420, "height": 800}
#: Milliseconds any page waits for something it expects (the machine may be busy).
WAIT_MS = 60_000
#: The portal gives up a result fetch this long after the vendor's report. Short, so that the page
#: of an unknown token ends within the test; long enough that one failed try of a real result is
#: tried again (the first retry comes after 5-10 s).
GIVE_UP_SECS = 15
#: The demo exam's right answers: question -> option.
ALL_RIGHT = {"q1": "sum", "q2": "absolute", "q3": "equals"}
#: One right answer of three: not passed (two are needed).
ONE_RIGHT = {"q1": "sum", "q2": "currency", "q3": "hash"}
#: A time of day as the pages write it (13:05, 2026-12-03 13:05:44).
TIME = re.compile(r"\b\d{2}:\d{2}\b")


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


def docs_picture(page, name: str, down_to=None) -> None:
    """One of the README's pictures: the window as the candidate sees it, or the page from its top
    down to the bottom of ``down_to`` (a locator) when that reaches below the window."""
    DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
    path = DOCS_IMAGES / f"{name}.png"
    if down_to is None:
        page.screenshot(path=path)
        return
    box = down_to.bounding_box()
    height = max(VIEWPORT["height"], int(box["y"] + box["height"]) + 24)
    page.screenshot(
        path=path, full_page=True, clip={"x": 0, "y": 0, "width": VIEWPORT["width"], "height": height}
    )


@pytest.fixture(name="system", scope="module")
def system_fixture(tmp_path_factory) -> Iterator[System]:
    settings = {"TOOLCALL_FETCH_GIVE_UP_SECS": str(GIVE_UP_SECS)}
    with empty_redis(REDIS_URL), running_system(tmp_path_factory.mktemp("system"), settings) as system:
        yield system


@pytest.fixture(name="browser", scope="module")
def browser_fixture() -> Iterator:
    with chromium() as browser:
        # Expectations wait as long as page actions do (Playwright's default is 5 s).
        expect.set_options(timeout=WAIT_MS)
        yield browser


@contextlib.contextmanager
def browsing(browser, system: System, name: str) -> Iterator[tuple]:
    """A fresh browser context (no cookies) on the portal and the screenshots of test ``name``;
    when the block fails, a screenshot of every open page and the end of every process's log."""
    shots = Screenshots(ARTIFACTS / name)
    context = browser.new_context(viewport=VIEWPORT, base_url=system.portal_url)
    context.set_default_timeout(WAIT_MS)
    try:
        with system.logs_on_failure():
            yield context, shots
    except BaseException:
        for open_page in context.pages:  # what the browser showed when it went wrong
            with contextlib.suppress(Exception):  # the test's own error is the one to report
                shots.take(open_page, "failure")
        raise
    finally:
        context.close()


def log_in(page, username: str, password: str) -> None:
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def expect_times_note(page, shown: bool) -> None:
    """ "Times are UTC." is at the foot of the page exactly when the page shows a time."""
    expect(page.locator(".times-note")).to_have_count(1 if shown else 0)
    text = page.locator("main").inner_text()
    assert bool(TIME.search(text)) == shown, f"times shown: {not shown}, note: {shown}\n{text}"


def expect_ended(page) -> None:
    """The page does not reload itself."""
    expect(page.locator('meta[http-equiv="refresh"]')).to_have_count(0)


def open_exam(context, start, system: System):
    """Press ``start`` (a button that opens the exam in a new window) and return that window,
    showing the demo vendor's exam."""
    with context.expect_page(timeout=WAIT_MS) as opened:
        start.click()
    exam = opened.value
    exam.wait_for_url(f"{system.vendor_url}/exam/")
    return exam


def answer(exam, answers: dict[str, str], system: System) -> None:
    """Answer the demo exam's questions and submit; the window ends on the portal's result page."""
    for question, option in answers.items():
        exam.locator(f'input[name="{question}"][value="{option}"]').check()
    exam.get_by_role("button", name="Submit answers").click()
    # Back at the portal, whose result page refreshes itself until the worker has stored the result.
    exam.wait_for_url(re.compile(re.escape(f"{system.portal_url}/result/?")))


def take_the_exam(context, page, system: System, shots: Screenshots, docs: bool = False) -> None:
    """The demo's candidate logs in, starts my-tool, answers all three questions right, and waits
    for the portal's result page to show the attempt passed. ``docs``: take the README's pictures."""
    page.goto("/")  # logged out: the portal asks for a login first
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    expect_times_note(page, False)
    shots.take(page, "login")
    log_in(page, "user", "user")
    expect(page).to_have_url(f"{system.portal_url}/")
    start = page.get_by_role("button", name="Start My tool")
    expect(start).to_be_visible()
    form = page.locator("form", has=start)
    expect(form).to_contain_text("The exam opens in a new window.")
    expect_times_note(page, False)  # no attempt running: no times
    shots.take(page, "home")
    if docs:
        docs_picture(page, "portal-home")

    # The start button opens the exam in a new window that cannot reach back into the portal's.
    # Chromium treats every target=_blank as noopener, so window.opener alone would not notice a
    # missing rel; the attribute is what protects candidates on browsers that do not.
    expect(form).to_have_attribute("target", "_blank")
    expect(form).to_have_attribute("rel", re.compile(r"\bnoopener\b"))
    exam = open_exam(context, start, system)
    assert exam.evaluate("window.opener === null"), "the exam's window has an opener (rel=noopener missing)"
    expect(exam.get_by_role("heading", name="Hello Uma")).to_be_visible()
    shots.take(exam, "exam")
    if docs:
        for question, option in ALL_RIGHT.items():  # the picture shows the questions answered
            exam.locator(f'input[name="{question}"][value="{option}"]').check()
        docs_picture(exam, "demo-vendor-exam")

    answer(exam, ALL_RIGHT, system)
    phrase = exam.locator("#attempt-phrase")
    expect(phrase).to_have_text("passed — score 3")
    expect(phrase).to_have_class(re.compile(r"\bpassed\b"))
    expect(exam.get_by_role("heading", name="Your result has been stored.")).to_be_visible()
    expect_ended(exam)
    expect_times_note(exam, False)
    shots.take(exam, "result-finished")
    if docs:
        docs_picture(exam, "portal-result-finished")
    exam.close()


def read_the_log(page, shots: Screenshots, docs: bool = False) -> None:
    """The operator logs in (in the same window, after the candidate logged out), finds the attempt
    among the ToolCalls and reads its log."""
    page.get_by_role("button", name="Log out user").click()
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    log_in(page, "admin", "admin")
    page.get_by_role("link", name="Ops", exact=True).click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    expect(page.locator(".times-note")).to_have_count(1)  # its chart's hours (drawn, not text)
    shots.take(page, "ops-dashboard")

    page.get_by_role("link", name="ToolCalls", exact=True).click()
    attempt = (
        page.locator("tr")
        .filter(has=page.get_by_role("cell", name="my-tool", exact=True))
        .filter(has=page.get_by_role("cell", name="user", exact=True))
    )
    expect(attempt).to_have_count(1)
    expect(attempt.get_by_role("cell", name="finished-ok", exact=True)).to_be_visible()
    expect_times_note(page, True)
    shots.take(page, "ops-toolcalls")

    attempt.get_by_role("link").first.click()
    expect(page.get_by_role("heading", name=re.compile(r"^ToolCall \d+$"))).to_be_visible()
    log = page.locator("tr.log td:nth-child(2)")
    expect(log).to_have_text(HAPPY_LOG)
    expect_times_note(page, True)
    shots.take(page, "ops-toolcall-log")
    if docs:
        docs_picture(page, "ops-toolcall-log", down_to=page.locator("table", has=log.first))


@pytest.mark.timeout(300)
def test_a_candidate_passes_the_demo_exam_and_an_operator_sees_its_whole_log(system, browser):
    with browsing(browser, system, "passed") as (context, shots):
        page = context.new_page()
        take_the_exam(context, page, system, shots, docs=True)
        page.get_by_role("link", name="Your attempts").click()
        expect(page.locator("tr.attempt .phrase")).to_have_text(["passed — score 3"])
        expect_times_note(page, True)
        shots.take(page, "attempts")
        read_the_log(page, shots, docs=True)


@pytest.mark.timeout(300)
def test_a_candidate_with_one_answer_right_reads_not_passed(system, browser):
    system.add_user("fay", "fay-password", "Fay")
    with browsing(browser, system, "not-passed") as (context, shots):
        page = context.new_page()
        page.goto("/")
        log_in(page, "fay", "fay-password")
        exam = open_exam(context, page.get_by_role("button", name="Start My tool"), system)
        expect(exam.get_by_role("heading", name="Hello Fay")).to_be_visible()
        answer(exam, ONE_RIGHT, system)
        phrase = exam.locator("#attempt-phrase")
        expect(phrase).to_have_text("not passed — score 1")
        expect(phrase).to_have_class(re.compile(r"\bnot-passed\b"))
        expect_ended(exam)
        expect_times_note(exam, False)
        shots.take(exam, "result")
        exam.close()

        page.get_by_role("link", name="Your attempts").click()
        expect(page.locator("tr.attempt .phrase")).to_have_text(["not passed — score 1"])
        page.locator("tr.attempt").get_by_role("link", name="1", exact=True).click()
        expect(page.get_by_role("heading", name="My tool, attempt 1")).to_be_visible()
        expect(page.locator("#attempt-phrase")).to_have_text("not passed — score 1")
        expect_times_note(page, True)
        shots.take(page, "attempt")


@pytest.mark.timeout(300)
def test_a_running_attempt_is_on_the_home_page_and_starting_again_asks_first(system, browser):
    system.add_user("sam", "sam-password", "Sam")
    running = "in progress — opened in another window"
    with browsing(browser, system, "running-and-supersede") as (context, shots):
        page = context.new_page()
        page.goto("/")
        log_in(page, "sam", "sam-password")
        start = page.get_by_role("button", name="Start My tool")
        first = open_exam(context, start, system)
        expect(first.get_by_role("heading", name="Hello Sam")).to_be_visible()

        # The portal's window still shows the start button it showed before: pressing it again
        # opens a window that asks first, and ends nothing.
        with context.expect_page(timeout=WAIT_MS) as opened:
            start.click()
        asked = opened.value
        expect(asked.get_by_role("heading", name="You have an attempt running")).to_be_visible()
        expect(asked.locator("#supersede")).to_contain_text("Your attempt 1, started ")
        expect(asked.locator("#supersede .phrase")).to_have_text(running)
        expect(asked.locator("#supersede")).to_contain_text("Starting a new attempt ends that one")
        expect(asked.get_by_role("button", name="End it and start a new attempt")).to_be_visible()
        expect_times_note(asked, True)
        shots.take(asked, "asked-first")
        asked.get_by_role("link", name="Keep the running attempt").click()

        # Kept: the home page shows it running, with a way back to it.
        expect(asked.get_by_role("heading", name="Your exams")).to_be_visible()
        note = asked.locator(".running-attempt")
        expect(note).to_contain_text("Your attempt 1 (started ")
        expect(note.locator(".phrase")).to_have_text(running)
        expect(asked.get_by_role("button", name="Start My tool")).to_have_count(0)
        expect_times_note(asked, True)
        shots.take(asked, "home-running")
        note.get_by_role("link", name="About this attempt").click()
        expect(asked.get_by_role("heading", name="My tool, attempt 1")).to_be_visible()
        expect(asked.locator("#attempt-phrase")).to_have_text(running)
        expect(asked).to_have_title(re.compile("attempt 1"))
        expect_times_note(asked, True)
        shots.take(asked, "attempt-running")
        asked.close()
        # The first window is still in the exam (nothing ended it).
        expect(first.get_by_role("button", name="Submit answers")).to_be_enabled()

        # Starting a new attempt on purpose: the confirmation, then the exam in a new window.
        page.reload()
        page.get_by_role("link", name="Start a new attempt…").click()
        expect(page.get_by_role("heading", name="You have an attempt running")).to_be_visible()
        second = open_exam(context, page.get_by_role("button", name="End it and start a new attempt"), system)
        expect(second.get_by_role("heading", name="Hello Sam")).to_be_visible()
        page.goto("/")
        expect(page.locator(".running-attempt")).to_contain_text("Your attempt 2 (started ")
        page.get_by_role("link", name="Your attempts").click()
        expect(page.locator("tr.attempt .phrase")).to_have_text([running, "ended: you started a new attempt"])
        shots.take(page, "attempts")
        first.close()
        second.close()


@pytest.mark.timeout(300)
def test_an_unknown_address_is_the_styled_404_page_with_a_way_home(system, browser):
    with browsing(browser, system, "not-found") as (context, shots):
        page = context.new_page()
        response = page.goto("/no-such-page/")
        assert response.status == 404
        expect(page).to_have_title(re.compile(r"^404 "))
        heading = page.get_by_role("heading", name="Page not found")
        expect(heading).to_be_visible()
        expect(heading).to_have_css("color", "rgb(170, 0, 0)")  # the site's stylesheet applies
        expect(page.locator("#error")).to_contain_text("There is no page at this address.")
        expect_times_note(page, False)
        shots.take(page, "logged-out")
        page.get_by_role("link", name="Home").click()  # logged out, home is the login
        expect(page).to_have_url(re.compile(r"/accounts/login/"))
        log_in(page, "user", "user")
        expect(page.get_by_role("heading", name="Your exams")).to_be_visible()

        response = page.goto("/tooluser/tools/no-such-exam/")
        assert response.status == 404
        expect(page.get_by_role("heading", name="Page not found")).to_be_visible()
        shots.take(page, "logged-in")
        page.get_by_role("link", name="Back to your exams").click()
        expect(page).to_have_url(f"{system.portal_url}/")
        expect(page.get_by_role("heading", name="Your exams")).to_be_visible()


@pytest.mark.timeout(300)
def test_the_result_page_of_a_token_the_vendor_does_not_know_ends(system, browser):
    made_up = secrets.token_urlsafe(16)
    with browsing(browser, system, "unknown-token") as (context, shots):
        page = context.new_page()
        page.goto(f"/result/?access_token={made_up}&client=testclient")
        heading = page.locator("#result-heading")
        expect(heading).to_have_text("Fetching your result…")
        expect(page.locator('meta[http-equiv="refresh"]')).to_have_count(1)
        shots.take(page, "fetching")

        # The vendor answers 404 for a token it never issued; the portal tries again until it gives
        # up, and the page, reloading itself meanwhile, then ends.
        expect(heading).to_have_text("Your result could not be fetched.", timeout=(GIVE_UP_SECS + 90) * 1000)
        expect_ended(page)
        expect(page.locator("main")).to_contain_text("so we have stopped asking")
        expect(page.locator("#fetch-reference")).to_have_text(re.compile(r"^\d+$"))
        expect_times_note(page, False)
        shots.take(page, "failed")

        page.reload()  # reloading asks nobody again: the page stays as it ended
        expect(heading).to_have_text("Your result could not be fetched.")
        expect_ended(page)


def fits(page) -> bool:
    """Whether the page is no wider than the window (nothing makes it scroll sideways)."""
    return page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")


@pytest.mark.timeout(300)
def test_tables_fit_a_narrow_window_and_a_wide_one_scrolls_inside_its_box(system, browser):
    system.add_user("tia", "tia-password", "Tia")
    with browsing(browser, system, "narrow") as (context, shots):
        page = context.new_page()
        page.set_viewport_size(NARROW)
        page.goto("/")
        log_in(page, "tia", "tia-password")
        exam = open_exam(context, page.get_by_role("button", name="Start My tool"), system)
        answer(exam, ALL_RIGHT, system)
        expect(exam.locator("#attempt-phrase")).to_have_text("passed — score 3")
        exam.close()
        page.get_by_role("link", name="Your attempts").click()
        expect(page.locator("tr.attempt")).to_have_count(1)
        assert fits(page), "the candidate's attempts page is wider than a narrow window"
        page.get_by_role("button", name="Log out tia").click()

        log_in(page, "admin", "admin")
        page.goto("/ops/toolcalls/?user=tia")
        attempt = page.locator("tr.toolcall")
        expect(attempt).to_have_count(1)
        assert fits(page), "the ToolCalls page is wider than a narrow window"
        attempt.get_by_role("link").first.click()
        fetches = page.locator("table", has=page.get_by_role("columnheader", name="Kept body"))
        expect(fetches).to_be_visible()
        shots.take(page, "toolcall")
        assert fits(page), "the ToolCall page is wider than a narrow window"
        # The log's details stay readable: a column squeezed to a few letters a line is not.
        narrowest = page.locator("tr.log td:nth-child(3)").evaluate_all(
            "cells => Math.min(...cells.map(c => c.getBoundingClientRect().width))"
        )
        assert narrowest >= 150, f"the log's details column is {narrowest:.0f} px wide"
        # Its result fetches (ten columns) do not fit: the table scrolls inside its own box.
        assert fetches.evaluate("t => t.scrollWidth > t.clientWidth"), "the fetches table fits after all"
        fetches.evaluate("t => { t.scrollLeft = t.scrollWidth; }")
        assert fetches.evaluate("t => t.scrollLeft > 0"), "the fetches table does not scroll"
        for path in ("/ops/", "/ops/fetches/?state=done", "/ops/clients/", "/ops/tools/", "/ops/toolbus/"):
            page.goto(path)
            expect(page.locator("main table").first).to_be_visible()
            assert fits(page), f"{path} is wider than a narrow window"
