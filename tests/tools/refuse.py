"""A tool that connects, reads its signature and refuses it.

refuse.py disconnect    answer the signature with snd-disconnect, then close
refuse.py close         close the connection without a word
"""

import socket
import sys
import threading

from toolbus import wire
from toolbus.adapter import parse_arguments


def main() -> None:
    mode = sys.argv[1]
    args = parse_arguments(sys.argv[1:])
    if mode == "absent":
        threading.Event().wait()
    sock = socket.create_connection((args["host"], int(args["port"])), timeout=30)
    if mode == "silent":
        sock.recv(1)  # until the bus hangs up
        return
    side = wire.ToolSide()
    if mode == "impostor":
        sock.sendall(side.send(wire.Connect("someone-else", int(args["id"]))))
        sock.recv(1)  # until the bus hangs up
        return
    sock.sendall(side.send(wire.Connect(args["name"], int(args["id"]))))
    while (message := side.next_message()) is None:
        data = sock.recv(65536)
        if not data:
            return
        side.receive_data(data)
    sys.stderr.write(f"refuse: I do not accept {wire.to_term(message)}\n")
    sys.stderr.flush()
    if mode == "disconnect":
        sock.sendall(side.send(wire.Disconnect()))
    sock.close()
    sys.exit(2)


main()
