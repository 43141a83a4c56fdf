"""An external tool that stops reading its input: after ``deafen`` it answers, then stays connected
and alive but never reads from the bus again (a tool stuck in a loop of its own, or waiting on
something else). Whatever the bus sends it from then on fills the connection's buffers.

    eval(stamp, <list(<int>)>)   [pid, pid of the process that started it, requests served]
    eval(deafen, <int>)          answer with its pid, then never read again
    eval(echo(<str>), <int>)     the length of the string
"""

from __future__ import annotations

import os
import threading

from toolbus import wire
from toolbus.adapter import run
from toolbus.aterm import term


class Deaf:
    def __init__(self, bus) -> None:
        self.bus = bus
        self.served = 0

    def stamp(self) -> list[int]:
        self.served += 1
        return [os.getpid(), os.getppid(), self.served]

    def deafen(self) -> int:
        self.served += 1
        self.bus.send(wire.Value(term(os.getpid())))
        threading.Event().wait()  # the adapter never gets back to reading
        return 0

    def echo(self, text: str) -> int:
        self.served += 1
        return len(text)


if __name__ == "__main__":
    run(Deaf)
