"""A tool that shakes hands properly, then breaks the wire protocol on request.

    eval(ok, <int>)               answers 1, properly
    eval(garbage(<str>), <int>)   answers with garbage of the named kind:
        header      bytes that are no message header
        utf8        a well-framed message that is not UTF-8
        aterm       a well-framed message that is not an ATerm
        kind        a well-formed ATerm that is no message (snd-bogus(1))
        void        snd-void, the answer to a do, instead of a value
    do(poke)                      answered with snd-value(1): a value when no eval is pending

Raw sockets and ``toolbus.wire`` only, so that nothing tidies the garbage up.
"""

import sys

from rawtool import connect, messages

from toolbus import wire
from toolbus.aterm import parse

GARBAGE = {
    "header": b"this is not a header at all",
    "utf8": b"%011d:snd-value(\xff\xfe)" % (wire.HEADER_LENGTH + 13),
    "aterm": b"%011d:snd-value((" % (wire.HEADER_LENGTH + 11),
    "kind": wire.frame(parse("snd-bogus(1)")),
    "void": wire.frame(parse("snd-void")),
}


def main() -> None:
    sock, side = connect()
    for message in messages(sock, side):
        if isinstance(message, wire.Interface):
            sock.sendall(side.send(wire.Void()))
        elif isinstance(message, wire.Eval) and message.call.name == "garbage":
            mode = message.call.args[0].name
            sys.stderr.write(f"garbage: sending {mode} garbage\n")
            sys.stderr.flush()
            sock.sendall(GARBAGE[mode])
        elif isinstance(message, wire.Eval):
            sock.sendall(side.send(wire.Value(parse("1"))))
        elif isinstance(message, wire.Do):
            sock.sendall(side.send(wire.Value(parse("1"))))
        elif isinstance(message, wire.Terminate):
            return


main()
