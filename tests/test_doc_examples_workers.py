"""The Bus example of docs/tools.md runs as written, against real workers."""

import re
from pathlib import Path

from worker_support import calc, client_env, environment, running

ROOT = Path(__file__).resolve().parent.parent
BLOCKS = re.findall(r"```python notest\n(.*?)```", (ROOT / "docs" / "tools.md").read_text(), re.S)

CLOCK = {
    "tool_name": "{python} -m examples.tools.clock",
    "host_name": "localhost",
    "restart_frequency": 100,
    "function_signatures": ["eval(now, <str>)", "do(tick(<int>))", "event(show-time(<str>), <term>)"],
}


def test_the_bus_example_runs_against_workers(tmp_path):
    assert len(BLOCKS) == 1
    with running(tmp_path, {"calc": calc(), "clock": CLOCK}, db=14) as launcher:
        with environment(client_env(launcher.tools_path, 14)):
            namespace: dict = {}
            exec(compile(BLOCKS[0], "docs/tools.md Bus example", "exec"), namespace)
            assert str(namespace["event"].term).startswith("show-time(")
