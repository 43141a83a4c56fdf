"""Every benchmark, one after the other, then one table of their ratios (``make bench``).

Each benchmark prints its own report (method, machine, per-round figures) as it runs; each measure
with a target is also collected (``bench.support.row`` appends it to the file named by
BENCH_SUMMARY), and the summary at the end puts them side by side: ours against the same-run
baseline, the ratio, the target, and whether it held.

    python bench/run_all.py [NAME ...]     # e.g. aterm_bench result_storm; default: all

``volume`` runs its quick pair here (10k and 200k ToolCalls); the full 10k/1M run is
``bench/volume.py`` alone (its seeding takes about ten minutes).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: In the order of the summary: the library, calls through Celery, the portal's storms, its volume.
BENCHMARKS = ("aterm_bench", "eval_vs_celery", "start_storm", "result_storm", "exam_day", "volume")
#: Arguments a benchmark gets here.
ARGUMENTS = {"volume": ["--quick"]}


def main(names: list[str]) -> int:
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        print(
            f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr
        )
        return 2
    failed = []
    with tempfile.TemporaryDirectory(prefix="bench-summary-") as folder:
        summary = Path(folder) / "summary.jsonl"
        env = {**os.environ, "BENCH_SUMMARY": str(summary)}
        for name in names or BENCHMARKS:
            print(f"\n=== bench/{name}.py ===", flush=True)
            started = time.monotonic()
            argv = [sys.executable, str(ROOT / "bench" / f"{name}.py"), *ARGUMENTS.get(name, [])]
            done = subprocess.run(argv, env=env, cwd=ROOT)
            print(
                f"=== bench/{name}.py: exit {done.returncode} after {time.monotonic() - started:.0f} s",
                flush=True,
            )
            if done.returncode:
                failed.append(name)
        records = [json.loads(line) for line in summary.read_text().splitlines()] if summary.exists() else []
    print(f"\nSummary ({platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs; "
          "ratios are ours / the same-run baseline)")  # fmt: skip
    print(f"{'benchmark':<16} {'measure':<36} {'ours':>16} {'baseline':>16} {'ratio':>9}  {'target':<12}")
    for r in records:
        verdict = "ok" if r["ok"] else "MISSED"
        print(f"{r['bench']:<16} {r['measure']:<36} {r['ours']:>16} {r['baseline']:>16} {r['ratio']:>8.2f}x  "
              f"{r['target']:<12} {verdict}")  # fmt: skip
    missed = sum(not r["ok"] for r in records)
    print(
        f"{len(records)} measures, {missed} missed"
        + (f"; failed to run: {', '.join(failed)}" if failed else "")
    )
    # A missed target is a finding to report, not a broken build; a benchmark that crashed is.
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
