"""The documentation's Python examples (README.md and docs/*.md) run as written."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Blocks marked ```python run here; ```python notest ones need running workers (tested elsewhere).
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXAMPLES = [
    (f"{document.relative_to(ROOT)} example {number + 1}", code)
    for document in DOCUMENTS
    for number, code in enumerate(re.findall(r"```python\n(.*?)```", document.read_text(), re.S))
]


def test_the_documentation_has_examples():
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize(("name", "code"), EXAMPLES, ids=[name for name, _ in EXAMPLES])
def test_documentation_example_runs(name, code, monkeypatch):
    monkeypatch.chdir(ROOT)  # the examples load tools.toml from the repository root
    namespace = {"__name__": name.replace(" ", "_")}
    exec(compile(code, name, "exec"), namespace)
