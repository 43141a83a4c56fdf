"""The configuration tables of README.md and docs/operating.md name every ``TOOLCALL_*`` setting the
code reads, each with the default the code has: a setting added or changed in the code without its
line in the docs fails here."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from webapp.config import settings

REPO = Path(__file__).resolve().parent.parent
CODE = [
    REPO / "celeryconfig.py",
    *(p for d in ("toolbus", "worker", "webapp") for p in (REPO / d).rglob("*.py")),
]
TABLES = [REPO / "README.md", REPO / "docs" / "operating.md"]
#: Names the code spells that are no setting of the operator's.
NOT_SETTINGS = {
    "TOOLCALL_HOST_GROUP",  # set by ``python -m worker tools`` for the workers it starts, read by none
}
NAME = re.compile(r"""["'](TOOLCALL_[A-Z_]+)["']""")
ROW = re.compile(r"^\| `(TOOLCALL_[A-Z_]+)` \| ([^|]*) \|", re.MULTILINE)


def read_by_the_code() -> set[str]:
    return {name for path in CODE for name in NAME.findall(path.read_text(encoding="utf-8"))} - NOT_SETTINGS


def documented(path: Path) -> dict[str, str]:
    """{variable: its default cell} of the table rows of ``path``."""
    return {name: cell.strip() for name, cell in ROW.findall(path.read_text(encoding="utf-8"))}


def test_the_code_reads_settings():
    assert {"TOOLCALL_SWEEP_BATCH", "TOOLCALL_METRICS_TOKEN", "TOOLCALL_TOOLS"} <= read_by_the_code()


@pytest.mark.parametrize("table", TABLES, ids=lambda path: path.name)
def test_every_setting_the_code_reads_is_in_the_table(table):
    missing = sorted(read_by_the_code() - set(documented(table)))
    assert not missing, f"{table.relative_to(REPO)} does not list {missing}"


@pytest.mark.parametrize("table", TABLES, ids=lambda path: path.name)
def test_no_table_lists_a_setting_the_code_does_not_read(table):
    stale = sorted(set(documented(table)) - read_by_the_code())
    assert not stale, f"{table.relative_to(REPO)} lists {stale}, which nothing reads"


@pytest.mark.parametrize("table", TABLES, ids=lambda path: path.name)
def test_each_default_in_the_table_is_the_codes(table, tmp_path, monkeypatch):
    for name in [n for n in os.environ if n.startswith("TOOLCALL_")]:
        monkeypatch.delenv(name)
    defaults = settings(tmp_path)
    checked = 0
    for name, cell in documented(table).items():
        value = defaults.get(name)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float):
            shown = cell.split(" ")[0]
            assert shown == f"{value:g}", f"{table.name}: {name} defaults to {value:g}, not {cell!r}"
        elif name.startswith("TOOLCALL_RATELIMIT_"):
            assert cell.strip("`") == value, f"{table.name}: {name} defaults to {value!r}, not {cell!r}"
        else:
            continue
        checked += 1
    assert checked >= 10
