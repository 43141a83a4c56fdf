"""Helpers shared by the tool-instance tests: tools.toml files, and bounded waits on processes.

Waiting for a process to disappear has no event to wait on, so it is the one place where a test
polls; every poll here is bounded and fails the test with a message when the time runs out.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import shlex
import socket
import time
from collections.abc import Callable
from pathlib import Path

from celeryconfig import CALLBACKS_QUEUE, REDIS_KEY_PREFIX

REPO = Path(__file__).resolve().parent.parent
#: The Redis server of the tests (each suite has a database of its own on it). Another server, e.g.
#: one started for a second run of the suite on the same machine: TOOLCALL_TEST_REDIS=redis://host:port
TEST_REDIS = (os.environ.get("TOOLCALL_TEST_REDIS") or "redis://127.0.0.1:6379").rstrip("/")


#: The Redis keys of the callbacks queue and of Celery's unacknowledged messages (every Celery key
#: carries the project's prefix, celeryconfig.REDIS_KEY_PREFIX).
CALLBACKS_KEY = f"{REDIS_KEY_PREFIX}{CALLBACKS_QUEUE}"
UNACKED_KEY = f"{REDIS_KEY_PREFIX}unacked"


def suite_redis_url(db: int) -> str:
    """The URL of database ``db`` of the tests' Redis server."""
    return f"{TEST_REDIS}/{db}"


TOOL_SCRIPTS = Path(__file__).resolve().parent / "tools"


def write_tools(directory: Path, tools: dict[str, dict]) -> Path:
    """Write ``directory/tools.toml`` declaring ``tools`` ({name: {field: value}}); returns its path.

    Strings and lists are written as JSON, which is valid TOML for them (the same escapes).
    """
    lines = []
    for name, fields in tools.items():
        lines.append(f"[tool.{name}]")
        for key, value in fields.items():
            lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    path = Path(directory) / "tools.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def script_command(script: str, *args: str) -> str:
    """The tools.toml command line running ``tests/tools/<script>`` with this interpreter."""
    return " ".join(["{python}", shlex.quote(str(TOOL_SCRIPTS / script)), *map(shlex.quote, args)])


def wait_until(
    condition: Callable[[], object],
    timeout: float = 10.0,
    what: str = "the condition",
    interval: float = 0.01,
) -> None:
    """Poll ``condition`` every ``interval`` seconds until it is true; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def _state(pid: int) -> tuple[str, int] | None:
    """(state letter, process group) of ``pid`` from /proc, or None when it does not exist."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return fields[0], int(fields[2])


def pid_gone(pid: int) -> bool:
    """True when process ``pid`` no longer runs.

    A killed orphan stays a zombie until init reaps it, which some container inits do only now and
    then; a zombie runs nothing, so it counts as gone.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    state = _state(pid)
    return state is None or state[0] == "Z"


def group_gone(pgid: int) -> bool:
    """True when no process of process group ``pgid`` runs (zombies count as gone, as above)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            state = _state(int(entry.name))
            if state is not None and state[1] == pgid and state[0] != "Z":
                return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> dict[int, str]:
    """Every running descendant of ``pid``: {pid: start time}, the start time telling a process
    apart from a later one given the same pid."""
    children: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        started[int(entry.name)] = fields[19]
    found: dict[int, str] = {}
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found[child] = started[child]
        todo.extend(children.get(child, []))
    return found


def still_running(processes: dict[int, str]) -> list[int]:
    """The processes of ``descendants()`` that still run (zombies do not count, see ``pid_gone``)."""
    running = []
    for pid, start in processes.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[19] == start and fields[0] != "Z":
            running.append(pid)
    return running


#: The happy path's log of a ToolCall, as docs/api.md §6 gives it (written out here, not taken from the code
#: under test).
HAPPY_LOG = [
    "initial",
    "start-tk-sent",
    "start-data-sent",
    "result-tk-received",
    "result-received-ok",
    "result-saved",
    "finished-ok",
]


def forge_signature(signed: str, sep: str = ":") -> str:
    """``signed`` (``<value><sep><base64url signature>``) with one bit of its signature flipped.

    Editing the last character of the text is no forgery: it carries bits that base64 decoding
    ignores, so for one signature in sixteen the edited text decodes to the same bytes and verifies.
    """
    value, _, signature = signed.rpartition(sep)
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[0] ^= 0x01
    forged = base64.urlsafe_b64encode(bytes(raw)).decode()
    return f"{value}{sep}{forged.rstrip('=') if not signature.endswith('=') else forged}"


def procfile_line(name: str) -> str:
    """The command of the Procfile's line ``name``."""
    for line in (REPO / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"the Procfile has no {name} line")


def listening_addresses(port: int) -> set[str]:
    """The local addresses a TCP socket listens on at ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:
                    # The kernel writes each 32-bit word of the address in host (little-endian) order.
                    words = [bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, len(address), 8)]
                    found.add(str(ipaddress.ip_address(b"".join(words))))
    return found
