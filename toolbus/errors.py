"""The errors of the ToolBus. ``ParseError`` (bad ATerm text) lives in ``toolbus.aterm``.

Every class can be rebuilt from its ``args`` alone (``type(e)(*e.args)``), so an error raised in a
worker process reaches the caller in another process with its class and message intact. The message
is always ``args[0]``; extra arguments are details kept for programs (exit status, stderr tail).
"""

from __future__ import annotations

#: How much of a call, a value or a tool's own message an error quotes: enough to recognise it.
BRIEF_CHARS = 200


def brief(thing: object, limit: int = BRIEF_CHARS) -> str:
    """``thing``'s text for a message: whole when short, else its start and its length. A call's
    arguments can be megabytes, and a message is copied into every log line and stored task result
    that carries it."""
    text = str(thing)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


class ToolBusError(Exception):
    """Base of every ToolBus error."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


class DescriptorError(ToolBusError):
    """``tools.toml`` is wrong. The message lists every problem, one per line."""

    def __init__(self, message: str, problems: list[str] | tuple[str, ...] = ()):
        super().__init__(message, list(problems))

    @property
    def problems(self) -> list[str]:
        return self.args[1]


class SignatureError(ToolBusError):
    """A call, value, event or ack that the tool's signatures do not allow."""


class TransactionError(ToolBusError):
    """A transaction id that is unknown, still in use or already finished; an ack for a lost event."""


class ToolError(ToolBusError):
    """The tool itself failed to answer a call (an exception inside an internal tool)."""


class ToolCrashed(ToolBusError):
    """The tool died or disconnected; the message holds the exit status and the tail of its stderr.

    A fresh tool is started for the next request.
    """

    def __init__(self, message: str, exit_status: int | None = None, stderr_tail: str = ""):
        super().__init__(message, exit_status, stderr_tail)

    @property
    def exit_status(self) -> int | None:
        return self.args[1]

    @property
    def stderr_tail(self) -> str:
        return self.args[2]


class ProtocolError(ToolCrashed):
    """The tool broke the wire protocol (bad framing, non-UTF-8, an unexpected message).

    The bus treats such a tool as crashed: it is killed and a fresh one serves the next request.
    """


class ToolTimeout(ToolBusError):
    """No value arrived within the call's timeout; the tool was killed (or discarded) and replaced."""


class NoWorker(ToolBusError):
    """No worker serves the tool's queue, so the call was not sent (it would have waited there until
    its timeout). The message names the queue: start the workers of the tool's host group."""
