"""What the raw-socket test tools share: connecting as the bus asked, and reading its messages.

They use ``toolbus.wire`` directly instead of ``toolbus.adapter``, so that nothing tidies up what
they send.
"""

import socket
import sys
from collections.abc import Iterator

from toolbus import wire
from toolbus.adapter import parse_arguments


def connect() -> tuple[socket.socket, wire.ToolSide]:
    """Connect with the -TB_* arguments and say snd-connect."""
    args = parse_arguments(sys.argv[1:])
    sock = socket.create_connection((args["host"], int(args["port"])), timeout=30)
    sock.settimeout(None)
    side = wire.ToolSide()
    sock.sendall(side.send(wire.Connect(args["name"], int(args["id"]))))
    return sock, side


def messages(sock: socket.socket, side: wire.ToolSide) -> Iterator[wire.Message]:
    """The bus's messages, until it closes the connection."""
    while True:
        message = side.next_message()
        if message is not None:
            yield message
            continue
        data = sock.recv(65536)
        if not data:
            return
        side.receive_data(data)
