"""The demo exam: three multiple-choice questions about spreadsheets, passed with two right."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

PASS_MARK = 2


@dataclass(frozen=True)
class Question:
    key: str
    text: str
    options: dict[str, str]  # value -> label
    answer: str


QUESTIONS = (
    Question(
        key="q1",
        text="Which function adds up a range of cells?",
        options={"sum": "SUM", "count": "COUNT", "average": "AVERAGE"},
        answer="sum",
    ),
    Question(
        key="q2",
        text="What does the $ in $A$1 mean?",
        options={
            "absolute": "The reference does not change when copied",
            "currency": "The cell is formatted as money",
            "hidden": "The cell is hidden",
        },
        answer="absolute",
    ),
    Question(
        key="q3",
        text="Which character starts a formula?",
        options={"equals": "=", "hash": "#", "at": "@"},
        answer="equals",
    ),
)


def score(answers: Mapping[str, str]) -> int:
    """The number of questions answered right (an unanswered question is wrong)."""
    return sum(answers.get(q.key) == q.answer for q in QUESTIONS)


def passed(points: int) -> bool:
    return points >= PASS_MARK
