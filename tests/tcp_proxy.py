"""A loopback TCP proxy that a test can cut: the network fault between a process and a server.

    proxy = TcpProxy(("127.0.0.1", 6379))    # listens on 127.0.0.1:<free port>
    url = f"redis://127.0.0.1:{proxy.port}/8"
    proxy.cut()        # every connection is reset, and new ones are refused
    proxy.restore()    # connections are accepted and forwarded again
    proxy.trip_on(b"LPUSH")   # once: forward the request holding these bytes, then reset the
                              # connection before its reply can come back
    proxy.close()

Each accepted connection is forwarded by two threads (one per direction). A cut closes the listening
socket, so a connect is refused at once (as from a server that is down), and resets the connections
it has (``SO_LINGER`` 0), so a client waiting for a reply sees the connection drop.
"""

from __future__ import annotations

import socket
import struct
import threading


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP reset (not a FIN): the peer's next read or write fails."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Link:
    """One client connection and its connection to the target."""

    def __init__(self, proxy: TcpProxy, client: socket.socket, server: socket.socket):
        self.proxy = proxy
        self.client = client
        self.server = server
        self.closed = threading.Event()

    def start(self) -> None:
        for source, sink, upstream in ((self.client, self.server, True), (self.server, self.client, False)):
            threading.Thread(target=self._pump, args=(source, sink, upstream), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        try:
            while not self.closed.is_set():
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
                if upstream and self.proxy._tripped_by(data):
                    break  # the request went through; its reply never will
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            _reset(self.client)
            _reset(self.server)
            self.proxy._forget(self)


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target`` until cut."""

    def __init__(self, target: tuple[str, int], port: int = 0):
        self.target = target
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._listener: socket.socket | None = None
        self._trip: bytes | None = None
        self.accepted = 0  # connections forwarded so far
        self.trips = 0  # connections reset by trip_on
        self.port = port
        self.restore()

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def restore(self) -> None:
        """Accept and forward connections (again, on the same port)."""
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(64)
            self.port = listener.getsockname()[1]
            self._listener = listener
        threading.Thread(target=self._accept_loop, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Refuse new connections and reset every open one."""
        with self._lock:
            listener, self._listener = self._listener, None
            links = list(self._links)
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
            except OSError:
                pass
            listener.close()
        for link in links:
            link.close()

    def trip_on(self, marker: bytes) -> None:
        """Once: forward the first client data holding ``marker``, then reset that connection."""
        with self._lock:
            self._trip = marker

    def close(self) -> None:
        self.cut()

    @property
    def is_cut(self) -> bool:
        return self._listener is None

    def _tripped_by(self, data: bytes) -> bool:
        with self._lock:
            if self._trip is None or self._trip not in data:
                return False
            self._trip = None
            self.trips += 1
            return True

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                _reset(client)
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(self, client, server)
            with self._lock:
                if self._listener is not listener:  # cut while connecting
                    link.closed.set()
                    _reset(client)
                    _reset(server)
                    return
                self._links.add(link)
                self.accepted += 1
            link.start()
