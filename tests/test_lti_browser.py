"""One LTI launch through a real browser: a candidate takes an exam hosted by an LTI 1.3 tool.

The portal and the PyLTI1p3 tool run as servers on two hosts (127.0.0.1 and 127.0.0.2, so the
browser keeps their cookies apart as it does for two sites); headless Chromium plays the candidate,
then the operator, only through what the pages show. Screenshots of every step go to
``test-artifacts/lti-browser/`` at the repository root.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import chromium
from helpers import HAPPY_LOG, REPO, suite_redis_url
from lti_support import TOOL_NAME, LtiSystem, running_lti_system
from portal_support import empty_redis
from test_browser import VIEWPORT, WAIT_MS, Screenshots, log_in

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture says so: a skip on a workstation, a failure in CI
    expect = None

pytestmark = pytest.mark.process

#: The Redis database of this test (the other LTI tests use 2, the demo browser test 3).
REDIS_URL = suite_redis_url(7)
ARTIFACTS = REPO / "test-artifacts" / "lti-browser"


@pytest.fixture(name="lti")
def lti_fixture(tmp_path: Path) -> Iterator[LtiSystem]:
    with empty_redis(REDIS_URL), running_lti_system(tmp_path, redis_url=REDIS_URL) as system:
        system.cli("tools", "add", "algebra", "--client", TOOL_NAME, "--name", "Algebra quiz",
                   "--custom", "chapter=3", "--score-maximum", "10")  # fmt: skip
        system.add_user("uma", "uma", first_name="Uma", last_name="User")
        system.add_user("admin", "admin", admin=True)
        yield system


@pytest.fixture(name="browser")
def browser_fixture() -> Iterator:
    with chromium() as browser:
        expect.set_options(timeout=WAIT_MS)
        yield browser


@pytest.mark.timeout(300)
def test_a_candidate_takes_an_lti_exam_in_chromium_and_the_operator_sees_the_launch_and_the_score(
    lti, browser
):
    shots = Screenshots(ARTIFACTS)
    context = browser.new_context(viewport=VIEWPORT, base_url=lti.portal_url)
    context.set_default_timeout(WAIT_MS)
    try:
        with lti.logs_on_failure():
            page = context.new_page()
            page.goto("/")
            log_in(page, "uma", "uma")
            start = page.get_by_role("button", name="Start Algebra quiz")
            expect(start).to_be_visible()
            shots.take(page, "home")
            with context.expect_page(timeout=WAIT_MS) as opened:
                start.click()
            exam = opened.value
            # portal → the tool's login → the portal's authorization → the self-posting form → the tool
            exam.wait_for_url(f"{lti.tool_url}/launch")
            expect(exam.get_by_role("heading", name="Hello Uma")).to_be_visible()
            shots.take(exam, "tool-launched")
            exam.get_by_role("button", name="Finish").click()
            expect(exam.get_by_role("heading", name="Score sent")).to_be_visible()
            shots.take(exam, "tool-score-sent")
            exam.close()

            page.get_by_role("link", name="Your attempts").click()
            expect(
                page.locator("tr", has_text="Algebra quiz").get_by_role(
                    "cell", name=re.compile(r"^passed — score \d+$")
                )
            ).to_be_visible()
            shots.take(page, "attempts")

            page.get_by_role("button", name="Log out uma").click()
            log_in(page, "admin", "admin")
            page.get_by_role("link", name="Ops", exact=True).click()
            page.get_by_role("link", name="ToolCalls", exact=True).click()
            page.locator("tr", has_text="algebra").get_by_role("link").first.click()
            expect(page.locator("tr.log td:nth-child(2)")).to_have_text(HAPPY_LOG)
            expect(page.locator("tr.log", has_text="start-data-sent")).to_contain_text("LTI launch")
            expect(page.locator("tr.log", has_text="result-tk-received")).to_contain_text(
                re.compile(r"AGS score .*8/10")
            )
            expect(page.locator("tr.lti-score")).to_have_count(1)
            shots.take(page, "ops-toolcall-log")
    except BaseException:
        for open_page in context.pages:
            with contextlib.suppress(Exception):
                shots.take(open_page, "failure")
        raise
    finally:
        context.close()
