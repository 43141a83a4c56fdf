"""A tool that emits an event in the same write as its answer to the signature.

    eval(ok, <int>)              answers 1
    event(note(<int>), <term>)   note(0) is sent at once, glued to the handshake's snd-void

Raw sockets and ``toolbus.wire``, so that both messages surely go out in one segment.
"""

import socket
import sys

from toolbus import wire
from toolbus.adapter import parse_arguments
from toolbus.aterm import parse


def main() -> None:
    args = parse_arguments(sys.argv[1:])
    sock = socket.create_connection((args["host"], int(args["port"])), timeout=30)
    sock.settimeout(None)
    side = wire.ToolSide()
    sock.sendall(side.send(wire.Connect(args["name"], int(args["id"]))))
    while True:
        message = side.next_message()
        if message is None:
            data = sock.recv(65536)
            if not data:
                return
            side.receive_data(data)
        elif isinstance(message, wire.Signature):
            sock.sendall(side.send(wire.Void()) + side.send(wire.Event(parse("note(0)"))))
        elif isinstance(message, wire.Eval):
            sock.sendall(side.send(wire.Value(parse("1"))))
        elif isinstance(message, wire.Terminate):
            return


main()
