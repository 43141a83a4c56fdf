"""Clock: an external tool that emits events.

    eval(now, <str>)                   the time, "HH:MM:SS"
    do(tick(<int>))                    emit that many show-time events at once
    event(show-time(<str>), <term>)    an event; the bus acknowledges it

Only one show-time event is unacknowledged at a time: the adapter holds the others back until the
bus acks, which is the ToolBus rule for events. Run by the bus as ``{python} -m examples.tools.clock``.
"""

from __future__ import annotations

import time

from toolbus.aterm import make


class Clock:
    def __init__(self, bus) -> None:
        self.bus = bus
        self.acks: list[str] = []

    def now(self) -> str:
        return time.strftime("%H:%M:%S")

    def tick(self, count: int) -> None:
        for _ in range(count):
            self.bus.emit(make("show-time(<str>)", self.now()))

    def rec_ack_event(self, event, result) -> None:
        self.acks.append(str(result))


if __name__ == "__main__":
    from toolbus.adapter import run

    run(Clock)
