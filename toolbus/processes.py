"""Tool processes: started so that they never outlive their owner, reaped or killed as a group.

Every external tool runs in its own process group, which is killed -- children included -- on every
stop and at interpreter exit; on Linux the kernel also kills the tool when its parent dies (the
parent-death signal). Crash reports take the exit status and the tail of stderr from here.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import subprocess
import sys
import weakref
from concurrent.futures import ThreadPoolExecutor

#: How long a stopping tool gets between rec-terminate and the kill.
GRACE_PERIOD = 1.0
#: Lines of a tool's stderr kept for crash reports.
STDERR_TAIL_LINES = 20

_live_processes: weakref.WeakSet[subprocess.Popen] = weakref.WeakSet()
_launchers: dict[int, ThreadPoolExecutor] = {}

if sys.platform.startswith("linux"):
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
    _PR_SET_PDEATHSIG = 1
else:  # pragma: no cover - the parent-death signal is Linux-only
    _prctl = None


def _child_setup(parent: int) -> None:
    """Runs in the child between fork and exec: die with the parent."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def spawn(argv: list[str], cwd: str) -> subprocess.Popen:
    """Start a tool process in its own process group.

    Linux sends the parent-death signal when the *thread* that forked the child ends, so every
    process is forked by one long-lived launcher thread per process (not by short-lived threads).
    """
    pid = os.getpid()
    launcher = _launchers.get(pid)
    if launcher is None:
        launcher = _launchers[pid] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="toolbus-launcher")
    process = launcher.submit(
        subprocess.Popen, argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, start_new_session=True, preexec_fn=lambda: _child_setup(pid),
    ).result()  # fmt: skip
    _live_processes.add(process)
    return process


def reap(process: subprocess.Popen, broke_protocol: bool) -> int:
    """Wait for a tool that is going (killed after the grace period), then kill its whole group:
    its children go too, before anyone hears of the crash. A tool that broke the protocol cannot
    be trusted to stop, so it is killed at once."""
    if broke_protocol:
        kill_group(process)
    try:
        status = process.wait(timeout=GRACE_PERIOD)
    except subprocess.TimeoutExpired:
        kill_group(process)
        status = process.wait()
    kill_group(process)
    return status


def kill_group(process: subprocess.Popen) -> None:
    """Kill the tool's process group: the tool and every process it started."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@atexit.register
def _kill_all() -> None:
    for process in list(_live_processes):
        kill_group(process)  # also when the leader has exited: its children may not have


def status_text(status: int | None) -> str:
    """An exit status as a crash report says it: ``exit status 3``, ``killed by SIGKILL``."""
    if status is None:
        return "still running"
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


def read_available(stream) -> bytes:
    """What a non-blocking pipe holds now (nothing when it is empty or closed)."""
    try:
        return os.read(stream.fileno(), 1 << 20) or b""
    except (BlockingIOError, OSError, ValueError):
        return b""


def stderr_tail(process: subprocess.Popen | None) -> str:
    """The last ``STDERR_TAIL_LINES`` lines of the tool's stderr that can be read without waiting."""
    if process is None:
        return ""
    os.set_blocking(process.stderr.fileno(), False)
    lines = read_available(process.stderr).decode("utf-8", "replace").splitlines()
    return "\n".join(lines[-STDERR_TAIL_LINES:])


def close_pipes(process: subprocess.Popen) -> None:
    """Close our ends of the tool's stdout and stderr."""
    for stream in (process.stdout, process.stderr):
        try:
            stream.close()
        except OSError:
            pass
