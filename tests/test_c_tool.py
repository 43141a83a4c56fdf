"""The example tool written in C (examples/tools/c/strtool.c), run as a real process.

The test plays the bus: it listens on an ephemeral loopback port, starts the tool with the docs/toolbus.md §5 command
line and drives the connection with ``toolbus.wire.BusSide``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from toolbus.aterm import make, parse
from toolbus.wire import (
    Ack,
    BusSide,
    Connect,
    Disconnect,
    Do,
    Eval,
    Interface,
    Terminate,
    ToolState,
    Value,
    Void,
    frame,
    from_term,
    to_term,
)

pytestmark = pytest.mark.process

SOURCE = Path(__file__).resolve().parent.parent / "examples" / "tools" / "c" / "strtool.c"
TIMEOUT = 10  # seconds, for every socket operation and every wait for the process
INTERFACE = Interface(
    (parse("rec-eval(reverse(<str>))"), parse("rec-eval(length(<str>))"), parse("rec-do(log(<str>))")),
    (),
)


@pytest.fixture(scope="module")
def strtool(tmp_path_factory) -> Path:
    """strtool.c compiled with the system C compiler; any warning fails the test."""
    cc = shutil.which("cc")
    if cc is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no C compiler (cc) on PATH; CI must be able to build the C example tool")
        pytest.skip("no C compiler (cc) on PATH")
    exe = tmp_path_factory.mktemp("strtool") / "strtool"
    build = subprocess.run(
        [cc, "-std=c99", "-Wall", "-Wextra", "-O2", "-o", str(exe), str(SOURCE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert build.returncode == 0 and not build.stderr, build.stderr
    return exe


class Tool:
    """One strtool process connected to a listening socket, the bus end driven by BusSide."""

    def __init__(self, exe: Path, workdir: Path, shuffled_args: bool = False):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT)
        port = self.listener.getsockname()[1]
        pairs = [("-TB_HOST", "127.0.0.1"), ("-TB_PORT", str(port))]
        pairs += [("-TB_TOOL_NAME", "strtool"), ("-TB_TOOL_ID", "7")]
        if shuffled_args:
            pairs = [("-verbose", "yes"), *reversed(pairs), ("-x", "1")]
        self.stderr_path = workdir / "strtool.stderr"
        with open(self.stderr_path, "wb") as err:
            args = [str(exe), *(a for pair in pairs for a in pair)]
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stderr=err)
        try:
            self.sock, _ = self.listener.accept()
        except OSError:  # it never connected: do not leave it running
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)
            self.listener.close()
            raise
        self.sock.settimeout(TIMEOUT)
        self.bus = BusSide("strtool")
        self.received = bytearray()  # raw bytes read since the last send

    def send(self, message) -> None:
        self.received.clear()
        self.sock.sendall(self.bus.send(message))

    def send_text(self, text: str) -> None:
        """Sends ``text`` exactly as written (not canonicalised); BusSide still tracks the state."""
        self.bus.send(from_term(parse(text)))
        self.received.clear()
        body = text.encode("utf-8")
        self.sock.sendall(b"%011d:" % (len(body) + 12) + body)

    def receive(self):
        while (message := self.bus.next_message()) is None:
            data = self.sock.recv(1 << 16)
            self.received += data
            self.bus.receive_data(data)
        return message

    def handshake(self) -> None:
        assert self.receive() == Connect("strtool", 7)
        self.send(INTERFACE)
        assert self.receive() == Void()
        assert self.bus.state is ToolState.READY

    def eval(self, call: str, *, raw: bool = False):
        """The value of ``rec-eval(call)``; checks the tool wrote it in canonical text."""
        if raw:
            self.send_text(f"rec-eval({call})")
        else:
            self.send(Eval(parse(call)))
        answer = self.receive()
        assert isinstance(answer, Value), answer
        assert bytes(self.received) == frame(to_term(answer))
        return answer.value

    def wait(self) -> int:
        return self.proc.wait(timeout=TIMEOUT)

    def stderr(self) -> str:
        return self.stderr_path.read_text("utf-8", errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)
        self.sock.close()
        self.listener.close()


@pytest.fixture
def tool(strtool, tmp_path):
    t = Tool(strtool, tmp_path)
    yield t
    t.close()


@pytest.fixture
def ready(tool):
    tool.handshake()
    return tool


def quoted(text: str) -> str:
    """The ATerm text of a string."""
    return str(make("<str>", text))


# --------------------------------------------------------------------------------------------------


def test_handshake_with_arguments_in_any_order(strtool, tmp_path):
    tool = Tool(strtool, tmp_path, shuffled_args=True)
    try:
        tool.handshake()
        tool.send(Terminate("done"))
        assert tool.wait() == 0
    finally:
        tool.close()


def test_reverse_ascii(ready):
    assert ready.eval('reverse("hello, world")') == parse('"dlrow ,olleh"')
    assert ready.eval('reverse("")') == parse('""')
    assert ready.bus.state is ToolState.READY


def test_reverse_non_ascii_by_code_points(ready):
    text = "héllo wörld € 日本語 𝄞 🙂"
    assert ready.eval(f"reverse({quoted(text)})").name == text[::-1]


def test_reverse_every_escape(ready):
    # Written by hand, with whitespace between tokens, so every input escape is exercised:
    # \" \\ \n \t \r \b \f \' and three-digit octal (\101 is 'A', \000 NUL, \177 DEL, \351 'é').
    call = r'reverse ( "q\"b\\n\nt\tr\rb\bf\fa\'o\101\000\177\351\033z" )'
    decoded = "q\"b\\n\nt\tr\rb\bf\fa'oA\x00\x7f\xe9\x1bz"
    value = ready.eval(call, raw=True)
    assert value.name == decoded[::-1]
    # The answer must be canonical text: the escapes of docs/toolbus.md §1.2, octal for other controls, 'é' raw.
    assert bytes(ready.received).endswith(
        r"""snd-value("z\033é\177\000Ao'a\ff\bb\rr\tt\nn\\b\"q")""".encode()
    )


def test_length_counts_code_points(ready):
    assert ready.eval('length("")') == parse("0")
    assert ready.eval('length("abc")') == parse("3")
    assert ready.eval(f"length({quoted('日本語 𝄞é')})") == parse("6")
    assert ready.eval(r'length("\000\n\351")', raw=True) == parse("3")


def test_do_log_writes_to_stderr(ready):
    ready.send(Do(parse(f"log({quoted('hello from the bus ✓')})")))
    assert ready.receive() == Void()  # the tool writes the line before it answers
    assert "hello from the bus ✓" in ready.stderr()
    assert ready.bus.state is ToolState.READY


def test_ack_is_ignored(ready):
    ready.send(Ack(parse("ev(1)"), parse("ok")))
    assert ready.eval('reverse("ab")') == parse('"ba"')


def test_megabyte_string(ready):
    text = ('abc "\\ é€𝄞\n\x01' * 100_000)[:1_000_000]
    assert ready.eval(f"reverse({quoted(text)})").name == text[::-1]
    assert ready.eval(f"length({quoted(text)})").value == len(text)


def test_terminate_exits_0(ready):
    ready.send(Terminate("bye"))
    assert ready.receive() == Disconnect()
    assert ready.wait() == 0


def test_eof_exits_0(ready):
    ready.sock.shutdown(socket.SHUT_WR)
    assert ready.receive() == Disconnect()
    assert ready.wait() == 0


def test_terminate_during_handshake_exits_0(tool):
    assert tool.receive() == Connect("strtool", 7)
    tool.send(Terminate("not today"))
    assert tool.wait() == 0


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"hello world!", id="bad-header"),
        pytest.param(b"00000000012x", id="header-without-colon"),
        pytest.param(b"00000000005:", id="length-shorter-than-header"),
        pytest.param(b"00000000015:\xff\xfe\xfd", id="not-utf8"),
        pytest.param(b"00000000016:f((1", id="not-an-aterm"),
        pytest.param(frame(parse('rec-eval(shout("x"))')), id="unknown-eval"),
        pytest.param(frame(parse("rec-eval(reverse(42))")), id="wrong-argument-type"),
        pytest.param(frame(parse("hello(world)")), id="unknown-message"),
    ],
)
def test_garbage_exits_2_without_answering(ready, garbage):
    ready.received.clear()
    ready.sock.sendall(garbage)
    assert ready.wait() == 2
    assert ready.receive() == Disconnect()
    assert ready.received == b""  # it answered nothing
    lines = ready.stderr().splitlines()
    assert len(lines) == 1 and lines[0].startswith("strtool: "), lines
