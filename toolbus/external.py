"""External tools: an executable in any language, speaking the wire protocol over loopback TCP.

Starting one: listen on an ephemeral loopback port, start the command line with the ``-TB_*``
arguments (``toolbus.processes``), accept its connection, read ``snd-connect`` and send the
signature, which it accepts with ``snd-void``. Then one I/O thread per running tool reads its socket,
stdout and stderr until the connection ends, and reports the end as a crash with the exit status and
the tail of stderr. The protocol itself (framing, messages, the tool's states) is ``toolbus.wire``:
this module is the socket shell around it.
"""

from __future__ import annotations

import logging
import os
import select
import selectors
import socket
import subprocess
import threading
import time
from collections import deque

from toolbus import wire
from toolbus.aterm import ATerm, ATermAppl
from toolbus.descriptors import ToolDescriptor
from toolbus.errors import ProtocolError, ToolCrashed
from toolbus.instances import ToolInstance, Transaction
from toolbus.processes import (
    GRACE_PERIOD,
    STDERR_TAIL_LINES,
    close_pipes,
    kill_group,
    read_available,
    reap,
    spawn,
    status_text,
    stderr_tail,
)

# Tool instances of every kind log under one name, so that a filter on it sees their whole life.
log = logging.getLogger("toolbus.instances")
#: How long an external tool may take to connect and accept its signature.
START_TIMEOUT = 15.0
#: How long a message may wait for the tool to take it when no call's deadline says otherwise (an
#: ack, a call without a timeout). A tool that has not taken it by then has stopped reading its
#: input: it is killed, as if it had crashed, rather than holding its instance for ever.
SEND_TIMEOUT = 30.0


class ExternalTool(ToolInstance):
    """An executable in any language, speaking the wire protocol over loopback TCP.

    One I/O thread per running tool reads its socket, stdout and stderr.
    """

    def __init__(self, descriptor: ToolDescriptor):
        super().__init__(descriptor)
        self._process: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._conn: wire.BusSide | None = None
        # Callers send while the I/O thread reads, and wire.BusSide is not thread-safe: its state
        # table is guarded by _state_lock (held briefly, never while blocked on the socket), and
        # _send_lock keeps the bytes of concurrent sends in the order of their state changes.
        self._state_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        # The process killed for not reading its input, and what its crash report says.
        self._unread: tuple[subprocess.Popen, str] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    # ---- start -------------------------------------------------------------------------------------

    def _launch(self, generation: int) -> None:
        self._stderr_tail = deque(maxlen=STDERR_TAIL_LINES)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            port = listener.getsockname()[1]
            argv = self.descriptor.command + [
                "-TB_HOST", "127.0.0.1", "-TB_PORT", str(port),
                "-TB_TOOL_NAME", self.name, "-TB_TOOL_ID", str(self.tool_id),
            ]  # fmt: skip
            try:
                process = spawn(argv, str(self.descriptor.base_dir))
            except OSError as e:
                raise ToolCrashed(f"tool {self.name}: cannot start {argv[0]!r}: {e.strerror or e}") from None
            self._process = process
            self._sock = None
            try:
                sock = self._accept(listener, process)
                self._handshake(sock)
            except ToolCrashed:
                kill_group(process)
                if self._sock is not None:
                    self._sock.close()
                close_pipes(process)
                raise
        finally:
            listener.close()
        threading.Thread(
            target=self._io_loop, args=(generation, process, self._sock, self._conn, self._stderr_tail),
            name=f"toolbus-io-{self.name}-{self.tool_id}", daemon=True,
        ).start()  # fmt: skip

    def _start_failure(
        self, process: subprocess.Popen, what: str, error_class: type[ToolCrashed] = ToolCrashed
    ) -> ToolCrashed:
        """The error for a tool that did not start; the tool and its children are gone by then."""
        status = reap(process, broke_protocol=error_class is ProtocolError)
        tail = stderr_tail(process)
        return error_class(
            f"tool {self.name} {what}; {status_text(status)}" + (f"; stderr:\n{tail}" if tail else ""),
            status,
            tail,
        )

    def _accept(self, listener: socket.socket, process: subprocess.Popen) -> socket.socket:
        deadline = time.monotonic() + START_TIMEOUT
        listener.settimeout(0.05)
        while True:
            try:
                sock, _ = listener.accept()
                break
            except TimeoutError:
                if process.poll() is not None:
                    raise self._start_failure(process, "exited before connecting") from None
                if time.monotonic() > deadline:
                    raise self._start_failure(
                        process, f"did not connect within {START_TIMEOUT:g} s"
                    ) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        return sock

    def _handshake(self, sock: socket.socket) -> None:
        conn = wire.BusSide(self.name)
        self._conn = conn
        sock.settimeout(START_TIMEOUT)
        try:
            message = self._read_message(sock, conn)
            if (
                not isinstance(message, wire.Connect)
                or message.tool_name != self.name
                or message.tool_id != self.tool_id
            ):
                raise ProtocolError(
                    f"it introduced itself as {message}; expected snd-connect({self.name},{self.tool_id})"
                )
            sigs = self.signatures
            inputs = tuple(ATermAppl("rec-eval", [s.pattern]) for s in sigs.evals) + tuple(
                ATermAppl("rec-do", [s.pattern]) for s in sigs.dos
            )
            outputs = tuple(ATermAppl("snd-event", [s.pattern]) for s in sigs.events)
            sock.sendall(conn.send(wire.Interface(inputs, outputs)))
            message = self._read_message(sock, conn)
            if isinstance(message, wire.Disconnect):
                raise self._start_failure(self._process, "refused its signature (disconnected)")
        except ProtocolError as e:
            raise self._start_failure(
                self._process,
                f"broke the wire protocol during the handshake: {self._unnamed(e)}",
                ProtocolError,
            ) from None
        except TimeoutError:
            raise self._start_failure(
                self._process, f"did not finish the handshake within {START_TIMEOUT:g} s"
            ) from None
        except OSError as e:
            raise self._start_failure(
                self._process, f"lost the connection during the handshake ({e})"
            ) from None
        sock.settimeout(None)

    def _unnamed(self, error: ProtocolError) -> str:
        """The text of a wire error without the leading "tool NAME", which the caller says first."""
        return str(error).removeprefix(f"tool {self.name} ")

    def _read_message(self, sock: socket.socket, conn: wire.BusSide) -> wire.Message:
        while True:
            message = conn.next_message()
            if message is not None:
                return message
            conn.receive_data(sock.recv(65536))

    # ---- running -----------------------------------------------------------------------------------

    def _leaving(self) -> bool:
        with self._state_lock:
            return self._conn is not None and self._conn.state in (
                wire.ToolState.CLOSING,
                wire.ToolState.CLOSED,
            )

    def _deliver(self, txn: Transaction, generation: int) -> None:
        message = wire.Eval(txn.call) if txn.kind == "eval" else wire.Do(txn.call)
        self._send(message, txn.deadline)

    def _send_ack(self, event: ATerm, result: ATerm) -> None:
        self._send(wire.Ack(event, result))

    def _send(self, message: wire.Message, deadline: float | None = None) -> None:
        """Send ``message`` by ``deadline`` (monotonic; default ``SEND_TIMEOUT`` from now).

        Sends happen under the instance's lock: a tool that stops reading must not hold it longer
        than that. One that has not taken the whole message by then is killed (its I/O thread
        reports the crash, saying why), and a call whose deadline it was times out as usual.
        """
        if deadline is None:
            deadline = time.monotonic() + SEND_TIMEOUT
        with self._send_lock:
            try:
                with self._state_lock:
                    data = self._conn.send(message)
                _send_by(self._sock, data, deadline)
            except _Unread as e:
                self._stopped_reading(message, e.args[0], len(data))
            except (OSError, ProtocolError) as e:
                # The tool is gone or going (its connection closed, or it said snd-disconnect):
                # its I/O thread reports the crash with the exit status.
                log.debug("tool %s: cannot send %s: %s", self.name, type(message).__name__, e)

    def _stopped_reading(self, message: wire.Message, sent: int, size: int) -> None:
        """The tool did not take a whole message in time: it is killed (a half-sent message
        cannot be taken back), and its crash report says why."""
        process = self._process
        reason = (
            f"tool {self.name} stopped reading its input: it took {sent:,} of the {size:,} bytes "
            f"of a {wire.to_term(message).name} in the time allowed"
        )
        log.warning("%s; killing it", reason)
        self._unread = (process, reason)
        kill_group(process)

    def _dispatch(self, generation: int, conn: wire.BusSide) -> ToolCrashed | None:
        """Hand every whole message received so far to the instance.

        Returns the problem that ends the connection, if there is one.
        """
        while True:
            try:
                with self._state_lock:
                    message = conn.next_message()
            except ProtocolError as e:
                return ProtocolError(f"tool {self.name} broke the wire protocol: {self._unnamed(e)}")
            if message is None:
                return None
            if isinstance(message, wire.Value):
                self._answer(generation, message.value)
            elif isinstance(message, wire.Void):
                self._answer(generation)
            elif isinstance(message, wire.Emission):
                self._event(generation, message.event)
            elif isinstance(message, wire.Disconnect):
                return ToolCrashed(f"tool {self.name} disconnected")

    def _io_loop(self, generation: int, process: subprocess.Popen, sock: socket.socket,
                 conn: wire.BusSide, tail: deque[str]) -> None:  # fmt: skip
        """Read the tool's socket, stdout and stderr until the connection ends; then report."""
        tool_log = logging.getLogger(f"toolbus.tool.{self.name}")

        def output(kind: str, line: str) -> None:
            """A line the tool wrote: stderr lines are warnings and go into the crash report's tail."""
            if kind == "stderr":
                tail.append(line)
                tool_log.warning("%s", line)
            else:
                tool_log.info("%s", line)

        sel = selectors.DefaultSelector()
        sel.register(sock, selectors.EVENT_READ, "sock")
        for stream, kind in ((process.stdout, "stdout"), (process.stderr, "stderr")):
            os.set_blocking(stream.fileno(), False)
            sel.register(stream, selectors.EVENT_READ, kind)
        partial = {"stdout": b"", "stderr": b""}
        try:
            # What the tool sent right after its handshake may have arrived with the handshake's
            # answer: it is buffered already, and no socket readiness will announce it.
            problem = self._dispatch(generation, conn)
            while problem is None:
                for key, _ in sel.select():
                    kind = key.data
                    if kind == "sock":
                        try:
                            data = sock.recv(262144)
                        except OSError:
                            data = b""
                        with self._state_lock:
                            conn.receive_data(data)
                        problem = self._dispatch(generation, conn)
                        if problem is not None:
                            break
                    else:
                        chunk = os.read(key.fileobj.fileno(), 65536)
                        if not chunk:
                            sel.unregister(key.fileobj)
                            continue
                        lines = (partial[kind] + chunk).split(b"\n")
                        partial[kind] = lines.pop()
                        for line in lines:
                            output(kind, line.decode("utf-8", "replace"))
            status = reap(process, broke_protocol=isinstance(problem, ProtocolError))
            for stream, kind in ((process.stderr, "stderr"), (process.stdout, "stdout")):
                rest = partial[kind] + read_available(stream)
                for line in rest.decode("utf-8", "replace").splitlines():
                    output(kind, line)
            text = "\n".join(tail)
            if self._unread is not None and self._unread[0] is process:
                problem = ToolCrashed(self._unread[1])  # it was killed for it: the real reason
            message = f"{problem}; {status_text(status)}" + (f"; stderr:\n{text}" if text else "")
            self._crashed(generation, type(problem)(message, status, text))
        finally:
            sel.close()
            sock.close()
            kill_group(process)  # nothing of the tool stays behind, children included
            close_pipes(process)

    # ---- stop --------------------------------------------------------------------------------------

    def _shutdown(self, msg: str, graceful: bool) -> None:
        process, sock = self._process, self._sock
        if process is None:
            return
        if graceful:
            self._send(wire.Terminate(msg), time.monotonic() + GRACE_PERIOD)
            try:
                process.wait(timeout=GRACE_PERIOD)
            except subprocess.TimeoutExpired:
                log.warning(
                    "tool %s did not exit within %.1f s of rec-terminate; killing it", self.name, GRACE_PERIOD
                )
        kill_group(process)
        process.wait()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the I/O thread sees the end and exits
            except OSError:
                pass


class _Unread(Exception):
    """The tool did not take a whole message by the deadline; ``args[0]`` is the bytes it took."""


def _send_by(sock: socket.socket, data: bytes, deadline: float) -> None:
    """Send all of ``data`` by ``deadline`` (monotonic), or raise ``_Unread``.

    The socket stays blocking for its I/O thread; each send here is non-blocking and waits for
    room in the connection's buffers for at most what is left of the time.
    """
    view = memoryview(data)
    sent = 0
    poller: select.poll | None = None
    while sent < len(data):
        try:
            sent += sock.send(view[sent:], socket.MSG_DONTWAIT)
            continue
        except BlockingIOError:
            pass
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Unread(sent)
        if poller is None:
            poller = select.poll()
            poller.register(sock, select.POLLOUT)
        poller.poll(max(1, int(left * 1000)))
