"""What a candidate reads about an attempt (webapp.phrases): every status in plain words."""

from __future__ import annotations

import pytest

from webapp import phrases
from webapp.lifecycle import FAILING, OPEN, Status


@pytest.mark.parametrize("status", list(Status))
def test_every_status_has_a_phrase_without_lifecycle_jargon(status):
    phrase = phrases.describe(status)
    assert phrase.text and phrase.tone
    assert not any(name in phrase.text for name in Status)  # no "start-data-sent" for a candidate


def test_only_open_attempts_are_running():
    assert {status for status in Status if phrases.describe(status).running} == set(OPEN)


@pytest.mark.parametrize(
    ("passed", "score", "text", "tone"),
    [
        (True, 42, "passed — score 42", "passed"),
        (False, 0, "not passed — score 0", "not-passed"),
        (True, None, "passed", "passed"),
        (False, None, "not passed", "not-passed"),
    ],
)
def test_a_finished_attempt_reads_as_the_vendors_verdict(passed, score, text, tone):
    phrase = phrases.describe(Status.FINISHED_OK, passed=passed, score=score)
    assert (phrase.text, phrase.tone) == (text, tone)


@pytest.mark.parametrize("open_status", sorted(OPEN))
def test_an_open_attempt_that_ended_in_error_was_superseded(open_status):
    log = (
        [Status.INITIAL, open_status, Status.FINISHED_ERR]
        if open_status != Status.INITIAL
        else ["initial", "finished-err"]
    )
    assert (
        phrases.describe(Status.FINISHED_ERR, phrases.ended_from(log)).text
        == "ended: you started a new attempt"
    )


@pytest.mark.parametrize("error", sorted(FAILING))
def test_an_attempt_that_failed_says_why(error):
    log = [Status.INITIAL, Status.START_TK_SENT, error, Status.FINISHED_ERR]
    phrase = phrases.describe(Status.FINISHED_ERR, phrases.ended_from(log))
    assert phrase == phrases.PHRASES[error] and phrase.tone == "ended"


def test_expiry_reads_expired():
    for error in (Status.START_TK_ERR, Status.TOOL_TIMEOUT_ERR):
        assert phrases.describe(error).text.startswith("expired")


def test_the_last_ending_counts_after_a_late_result_was_refused():
    log = [
        "initial",
        "start-tk-sent",
        "finished-err",
        "result-tk-received",
        "result-received-err",
        "finished-err",
    ]
    assert phrases.ended_from(log) == "result-received-err"
