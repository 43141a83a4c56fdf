"""The documentation renders as written: its pictures are shown, its tables end where they should.

A Markdown table (GitHub's dialect) runs on until a blank line: a sentence written on the line
after its last row becomes one more row of the table. The pictures in docs/images are retaken by
``make screenshots`` (tests/test_browser.py takes them); each of them is shown somewhere.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import REPO

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PICTURES = sorted((REPO / "docs" / "images").glob("*.png"))
#: A line that starts a block of its own (heading, list, quote, fence, HTML), ending a table.
BLOCK_START = re.compile(r"\s*(#|[-*+] |\d+[.)] |>|```|~~~|<)")


def text_run_into_tables(text: str) -> list[str]:
    """The lines of ``text`` that a table takes as a row though they are not written as one."""
    found = []
    fenced = False
    lines = text.splitlines()
    for number, (line, following) in enumerate(zip(lines, lines[1:], strict=False), start=2):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        if fenced or not line.lstrip().startswith("|"):
            continue
        if following.strip() and not following.lstrip().startswith("|") and not BLOCK_START.match(following):
            found.append(f"line {number}: {following.strip()[:60]!r}")
    return found


def test_a_sentence_right_after_a_table_is_found():
    table = "| a | b |\n|---|---|\n| 1 | 2 |\n"
    assert text_run_into_tables(table + " Ctrl-C stops\nevery process.\n") == ["line 4: 'Ctrl-C stops'"]
    assert text_run_into_tables(table + "\nCtrl-C stops every process.\n") == []
    assert text_run_into_tables(table + "## Next\n") == []
    assert text_run_into_tables("```\n| a diagram\nnot a table\n```\n") == []


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda path: str(path.relative_to(REPO)))
def test_no_sentence_runs_into_a_table(path: Path):
    found = text_run_into_tables(path.read_text(encoding="utf-8"))
    assert not found, (
        f"{path.name}: text right after a table renders as one of its rows (add a blank line): {found}"
    )


@pytest.mark.parametrize("picture", PICTURES, ids=lambda path: path.name)
def test_every_picture_is_shown_in_the_docs(picture: Path):
    shown_in = [
        document.name
        for document in DOCUMENTS
        if f"images/{picture.name})" in document.read_text(encoding="utf-8")
    ]
    assert shown_in, f"docs/images/{picture.name} is not shown in README.md or docs/*.md"


@pytest.mark.parametrize(
    "module",
    sorted(
        p
        for package in ("toolbus", "worker", "webapp")
        for p in (REPO / package).glob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    ),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_the_readme_layout_names_every_module(module):
    # The layout section is the map a newcomer reads first: a module it leaves out is one nobody finds.
    assert re.search(
        rf"(?<![\w/]){re.escape(module.name)}", (REPO / "README.md").read_text(encoding="utf-8")
    ), f"README.md's layout does not name {module.parent.name}/{module.name}"
