"""ATerm and tool-call benchmark: every figure is a ratio against a baseline run in the same process.

    .venv/bin/python bench/aterm_bench.py

Payload (docs/toolbus.md §7): 10,000 terms item(I,"name-I",[a,b,c],I.5) against json of the equivalent
[["item",I,"name-I",["a","b","c"],I.5], ...]. Ours and the baseline run alternately, 15 times; the
ratio is the median of the per-run ratios (the time of equal content, not MB/s: the JSON text is
longer). Tool calls: medians over thousands of calls after a warm-up.
"""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.support import header as table_header  # noqa: E402
from bench.support import row  # noqa: E402
from toolbus.aterm import _appl, parse, read_taf, write_taf  # noqa: E402
from toolbus.descriptors import load_tools  # noqa: E402
from toolbus.instances import start_tool  # noqa: E402
from toolbus.wire import frame  # noqa: E402

N = 10_000
RUNS = 9


def median_time(fn, runs: int = RUNS) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(ours, baseline, runs: int = 15) -> tuple[float, float, float]:
    """Medians of both and of their per-run ratio, runs alternating so that drift in the machine's
    speed hits both alike."""
    a, b, ratios = [], [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        ours()
        t1 = time.perf_counter()
        baseline()
        t2 = time.perf_counter()
        a.append(t1 - t0)
        b.append(t2 - t1)
        ratios.append((t1 - t0) / (t2 - t1))
    return statistics.median(a), statistics.median(b), statistics.median(ratios)


def median_call(fn, calls: int) -> float:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    text = "[" + ",".join(f'item({i},"name-{i}",[a,b,c],{i}.5)' for i in range(N)) + "]"
    js = json.dumps([["item", i, f"name-{i}", ["a", "b", "c"], i + 0.5] for i in range(N)])
    t = parse(text)
    obj = json.loads(js)
    assert parse(str(t)) == t

    print(
        f"python {sys.version.split()[0]}, payload {len(text) / 1e6:.2f} MB ATerm / {len(js) / 1e6:.2f} MB JSON\n"
    )
    table_header()

    parse_s, loads_s, ratio = interleaved(lambda: parse(text), lambda: json.loads(js))
    mb = len(text) / 1e6
    row("parse vs json.loads", f"{mb / parse_s:.1f} MB/s", f"{len(js) / 1e6 / loads_s:.1f} MB/s",
        ratio, "<= 20x slower", ratio <= 20)  # fmt: skip

    # print a fresh copy each run: nothing may be cached from the previous one
    copies = iter([parse(text) for _ in range(15)])
    print_s, dumps_s, ratio = interleaved(lambda: str(next(copies)), lambda: json.dumps(obj))
    row("print vs json.dumps", f"{mb / print_s:.1f} MB/s", f"{len(js) / 1e6 / dumps_s:.1f} MB/s",
        ratio, "<= 10x slower", ratio <= 10)  # fmt: skip

    items = t.elements
    pattern = parse("item(<int>,<str>,<list>,<real>)")
    match_s = median_time(lambda: [i.match(pattern) for i in items])
    plain_s = median_time(lambda: [(x[1], x[2], x[3], x[4]) for x in obj if x[0] == "item" and len(x) == 5])
    row("match vs json unpacking", f"{N / match_s / 1e3:.0f} k/s", f"{N / plain_s / 1e3:.0f} k/s",
        match_s / plain_s, "(reported)", True)  # fmt: skip

    taf = write_taf(t)
    taf_w = median_time(lambda: write_taf(t), 3)
    taf_r = median_time(lambda: read_taf(taf), 3)
    row("TAF write vs text print", f"{mb / taf_w:.1f} MB/s", f"{mb / print_s:.1f} MB/s", taf_w / print_s,
        "(reported)", True)  # fmt: skip
    row("TAF read vs text parse", f"{len(taf) / 1e6 / taf_r:.1f} MB/s", f"{mb / parse_s:.1f} MB/s",
        taf_r / parse_s, "(reported)", True)  # fmt: skip
    print(f"{'TAF size vs text size':<30} {len(taf):>16,} {len(text):>16,} {len(taf) / len(text):>8.2f}x")

    # Maximal sharing (hash-consing), as the ATerm C library does: the price of one intern-table
    # lookup per node, measured as a pass over a parsed term, against parsing itself.
    def intern_all() -> None:
        table: dict = {}
        for item in items:
            for sub in (*item.args, *item.args[2].elements, item):
                table.setdefault(sub, sub)

    intern_s = median_time(intern_all, 3)
    row("hash-consing lookups vs parse", f"{intern_s * 1e3:.1f} ms", f"{parse_s * 1e3:.1f} ms", intern_s / parse_s,
        "(decision)", True)  # fmt: skip

    tools_file = ROOT / "bench" / "bench_tools.toml"
    tools = load_tools(tools_file)

    echo = start_tool(tools["echo"])
    call = parse("echo(5)")
    direct = echo._object.echo
    for _ in range(1000):
        echo.eval(call)
    ours = median_call(lambda: echo.eval(call), 20000)
    base = median_call(lambda: direct(5), 20000)
    row("InternalTool.eval overhead", f"{(ours - base) * 1e6:.1f} us", f"{base * 1e6:.2f} us call",
        ours / base, "<= 50 us", (ours - base) * 1e6 <= 50)  # fmt: skip
    echo.terminate()

    xecho = start_tool(tools["xecho"])
    for _ in range(500):
        xecho.eval(call)
    ours = median_call(lambda: xecho.eval(call), 5000)
    base = _raw_round_trip(5000)
    row("ExternalTool.eval round trip", f"{ours * 1e6:.0f} us", f"{base * 1e6:.0f} us raw", ours / base,
        "<= 250 us", ours * 1e6 <= 250)  # fmt: skip
    xecho.terminate()


PEER = textwrap.dedent("""
    import socket, sys
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = s.makefile("rb")
    while True:
        header = f.read(12)
        if not header:
            break
        body = f.read(int(header[:11]) - 12)
        s.sendall(header + body)
""")


def _raw_round_trip(calls: int) -> float:
    """Baseline: the same framed message echoed by a minimal Python process over loopback TCP."""
    listener = socket.create_server(("127.0.0.1", 0))
    peer = subprocess.Popen([sys.executable, "-c", PEER, str(listener.getsockname()[1])])
    sock, _ = listener.accept()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    message = frame(_appl("rec-eval", (parse("echo(5)"),), False))

    def once() -> None:
        sock.sendall(message)
        got = b""
        while len(got) < len(message):
            got += sock.recv(65536)

    for _ in range(500):
        once()
    result = median_call(once, calls)
    sock.close()
    peer.wait(timeout=10)
    listener.close()
    return result


if __name__ == "__main__":
    main()
