"""The repository stands alone: no file points at a document outside it.

Every relative link in a Markdown file resolves to a file of the repository, and no file names a
path above the repository's root or a specification the repository does not carry (the vendor API
and the ToolBus are described in docs/api.md and docs/toolbus.md, which the code refers to).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from helpers import REPO

TEXT = (".py", ".md", ".html", ".json", ".toml", ".txt", ".c", ".cfg", ".ini", ".js", ".css", ".mako")
#: Ways the project once pointed outside itself.
OUTSIDE = re.compile(r"\.\./shared|shared/(?:spec|design)|toolcall-api-v2\.md|lti-1p3\.md|\bspec §")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def tracked() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [
        REPO / name
        for name in names.split()
        if name.endswith(TEXT) or Path(name).name in ("Makefile", "Procfile")
    ]


FILES = [path for path in tracked() if path.exists()]


def test_the_repository_is_listed():
    assert any(path.name == "README.md" for path in FILES)


@pytest.mark.parametrize("path", FILES, ids=lambda path: str(path.relative_to(REPO)))
def test_no_file_points_outside_the_repository(path):
    if path.name == "test_standalone.py":
        return  # this test spells the patterns it looks for
    text = path.read_text(encoding="utf-8", errors="replace")
    found = [f"line {text.count(chr(10), 0, m.start()) + 1}: {m.group(0)!r}" for m in OUTSIDE.finditer(text)]
    assert not found, f"{path.relative_to(REPO)} points outside the repository: {found}"


@pytest.mark.parametrize(
    "path", [p for p in FILES if p.suffix == ".md"], ids=lambda path: str(path.relative_to(REPO))
)
def test_every_relative_link_in_the_docs_leads_to_a_file_of_the_repository(path):
    for target in MARKDOWN_LINK.findall(path.read_text(encoding="utf-8")):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL (http:, mailto:) or an anchor of the same page
        resolved = (path.parent / target.split("#")[0]).resolve()
        assert resolved.is_relative_to(REPO), f"{path.name}: {target} leads outside the repository"
        assert resolved.exists(), f"{path.name}: {target} leads nowhere"
