"""A tool that emits an event in the same write as its answer to the signature.

    eval(ok, <int>)              answers 1
    event(note(<int>), <term>)   note(0) is sent at once, glued to the handshake's snd-void

Raw sockets and ``toolbus.wire``, so that both messages surely go out in one segment.
"""

from rawtool import connect, messages

from toolbus import wire
from toolbus.aterm import parse


def main() -> None:
    sock, side = connect()
    for message in messages(sock, side):
        if isinstance(message, wire.Interface):
            sock.sendall(side.send(wire.Void()) + side.send(wire.Emission(parse("note(0)"))))
        elif isinstance(message, wire.Eval):
            sock.sendall(side.send(wire.Value(parse("1"))))
        elif isinstance(message, wire.Terminate):
            return


main()
