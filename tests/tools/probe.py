"""A well-behaved external tool (through ``toolbus.adapter``) that reports on itself and can be told
to misbehave: crash, hang, spawn a child, flood the bus with events.

    eval(stamp, <list(<int>)>)   [pid, requests this process has served, this one included]
    do(poke)                     a request that only counts
    eval(argv, <list(<str>)>)    the command-line arguments after the script
    eval(cwd, <str>)             the working directory
    eval(crash(<int>), <int>)    write to stderr and exit with that status, mid-eval
    eval(fail(<str>), <int>)     raise RuntimeError(message): the adapter ends the tool
    eval(hang, <int>)            never answer
    eval(spawn, <int>)           start a child process that runs until killed; its pid
    do(emit(<int>))              emit note(1..N) through the adapter (held back until acked)
    do(burst(<int>))             send note(1..N) at once, bypassing the adapter's holding back
    eval(acks, <list>)           the acks received so far, as [ack(Event, Result), ...]
    eval(leave(<bool>), <int>)   say snd-disconnect mid-eval; then exit, or (true) linger until killed
    do(vanish)                   answer, say snd-disconnect while idle, and linger until killed
    event(note(<int>), <term>)

With ``--emit-at-start`` the tool emits note(0) from its constructor, before the handshake.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

from toolbus import wire
from toolbus.adapter import run
from toolbus.aterm import make


class Probe:
    def __init__(self, bus) -> None:
        self.bus = bus
        self.served = 0
        self.received: list = []
        if "--emit-at-start" in sys.argv:
            bus.emit(make("note(<int>)", 0))

    def stamp(self) -> list[int]:
        self.served += 1
        return [os.getpid(), self.served]

    def poke(self) -> None:
        self.served += 1

    def argv(self) -> list[str]:
        return sys.argv[1:]

    def cwd(self) -> str:
        return os.getcwd()

    def crash(self, status: int) -> int:
        sys.stderr.write(f"probe: crashing on purpose with status {status}\n")
        sys.stderr.flush()
        os._exit(status)

    def fail(self, message: str) -> int:
        raise RuntimeError(message)

    def hang(self) -> int:
        threading.Event().wait()
        return 0

    def spawn(self) -> int:
        child = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
        return child.pid

    def emit(self, count: int) -> None:
        for i in range(1, count + 1):
            self.bus.emit(make("note(<int>)", i))

    def burst(self, count: int) -> None:
        for i in range(1, count + 1):
            self.bus.send(wire.Emission(make("note(<int>)", i)))

    def leave(self, linger: bool) -> int:
        self.bus.send(wire.Disconnect())
        if linger:
            threading.Event().wait()
        sys.exit(0)

    def vanish(self) -> None:
        self.bus.send(wire.Void())
        self.bus.send(wire.Disconnect())
        threading.Event().wait()

    def acks(self):
        return [make("ack(<term>,<term>)", event, result) for event, result in self.received]

    def rec_ack_event(self, event, result) -> None:
        self.received.append((event, result))


if __name__ == "__main__":
    run(Probe)
