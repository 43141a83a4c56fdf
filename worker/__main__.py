"""Command line of the worker layer.

python -m worker tools [--host GROUP] [--list]   start (or list) the tool workers of a host group
python -m worker eval TOOL CALL [--timeout S]     evaluate one call and print its value
"""

from __future__ import annotations

import argparse
import logging
import sys

from toolbus.errors import ToolBusError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tools = sub.add_parser("tools", help="start the Celery workers of the tools of a host group")
    tools.add_argument("--host", default="localhost", help="host group (default: localhost)")
    tools.add_argument("--list", action="store_true", help="show the tools, their queues and host groups")
    tools.add_argument("--concurrency", type=int, default=None, help="children of the shared worker")
    tools.add_argument("--loglevel", default="INFO")
    ev = sub.add_parser("eval", help="evaluate a call on a tool and print the value")
    ev.add_argument("tool")
    ev.add_argument("call", help="an ATerm, e.g. 'compute(\"1+2\")'")
    ev.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)

    if args.command == "tools":
        from worker import launcher

        logging.basicConfig(level=args.loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if args.list:
            return launcher.list_tools(sys.stdout, sys.stderr)
        return launcher.run(args.host, args.concurrency, args.loglevel)

    from worker.bus import Bus

    try:
        print(Bus().eval(args.tool, args.call, timeout=args.timeout))
    except (ToolBusError, ValueError) as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
