"""The README's Python examples run as written."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Blocks marked ```python run here; ```python notest ones need running workers (tested elsewhere).
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_the_readme_has_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("number", range(len(BLOCKS)))
def test_readme_example_runs(number, monkeypatch):
    monkeypatch.chdir(ROOT)  # the examples load tools.toml from the repository root
    code = BLOCKS[number]
    namespace = {"__name__": f"readme_example_{number}"}
    exec(compile(code, f"README.md example {number + 1}", "exec"), namespace)
