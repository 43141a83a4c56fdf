"""Function signatures: what a tool accepts (evals and dos) and emits (events).

    eval(compute(<str>), <int>)      an eval: call pattern, result type
    do(store(<str>, <int>))          a do: call pattern, no result
    event(show-time(<str>), <term>)  an event, and the type of its acknowledgement

A pattern is an unquoted application whose arguments are types or literal terms. Types are the
built-ins ``<int> <real> <str> <bool> <term> <list>``, ``<list(T)>`` for a list of T, and any other
``<name>``: a user type, matching an unquoted application called ``name`` of any arity.

This module also converts between ATerms and Python values by type, for internal tools and the
tool-side adapter: ``<int>`` <-> int, ``<real>`` <-> float, ``<str>`` <-> str, ``<bool>`` <-> bool,
``<list(T)>`` <-> list, and ``<list>``, ``<term>`` and user types <-> the ATerm itself.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from toolbus.aterm import (
    ATerm,
    ATermAppl,
    ATermInt,
    ATermList,
    ATermPlaceholder,
    ATermReal,
    ParseError,
    is_open,
    parse,
    term,
)
from toolbus.errors import SignatureError, brief

KINDS = ("eval", "do", "event")


@dataclass(frozen=True)
class Signature:
    """One declared eval, do or event."""

    kind: str  # "eval", "do" or "event"
    pattern: ATermAppl  # the call (or event) pattern
    result: ATerm | None  # eval: result type; event: ack type; do: None
    text: str  # as declared

    @property
    def name(self) -> str:
        return self.pattern.name

    @property
    def arity(self) -> int:
        return len(self.pattern.args)

    @property
    def method_name(self) -> str:
        """The Python method that serves this call: ``get-text`` -> ``get_text``."""
        return method_name(self.pattern.name)

    def __str__(self) -> str:
        return self.text


def method_name(call_name: str) -> str:
    """The Python method that serves calls named ``call_name``: ``get-text`` -> ``get_text``."""
    return call_name.replace("-", "_")


def parse_signature(text: str) -> Signature:
    """Read one signature. Raises ValueError saying what is wrong."""
    try:
        t = parse(text)
    except ParseError as e:
        raise ValueError(f"{text!r} is not an ATerm: {e}") from None
    if not isinstance(t, ATermAppl) or t.quoted or t.name not in KINDS:
        raise ValueError(f"{text!r} must be eval(Call, Type), do(Call) or event(Event, AckType)")
    kind = t.name
    expected = {"eval": (2,), "do": (1,), "event": (1, 2)}[kind]
    if len(t.args) not in expected:
        shape = {"eval": "eval(Call, ResultType)", "do": "do(Call)", "event": "event(Event, AckType)"}[kind]
        raise ValueError(f"{text!r} must have the form {shape}")
    pattern = t.args[0]
    if not isinstance(pattern, ATermAppl) or pattern.quoted or not pattern.name:
        raise ValueError(f"{text!r}: the pattern {pattern} must be an unquoted application like f(<int>)")
    _check_types(pattern.args, text)
    result = None
    if kind == "eval":
        result = t.args[1]
    elif kind == "event":
        result = t.args[1] if len(t.args) == 2 else ATermPlaceholder(parse("term"))
    if result is not None:
        _check_types((result,), text)
    return Signature(kind, pattern.strip_annotations(), result, text)


def _check_types(types: tuple[ATerm, ...], text: str) -> None:
    """Types are placeholders <name> or <list(T)>; anything else is a literal, checked for variables."""
    for ty in types:
        if is_open(ty):
            raise ValueError(f"{text!r}: signatures contain types like <int>, not variables like X?")
        if isinstance(ty, ATermPlaceholder):
            inner = ty.type
            if not isinstance(inner, ATermAppl) or inner.quoted or not inner.name:
                raise ValueError(f"{text!r}: {ty} is not a type; use <int>, <str>, <list(<int>)> or <name>")
            if inner.args:
                if inner.name != "list" or len(inner.args) != 1:
                    raise ValueError(f"{text!r}: {ty} is not a type; only <list(T)> takes an argument")
                _check_types(inner.args, text)
        elif isinstance(ty, ATermAppl):
            _check_types(ty.args, text)
        elif isinstance(ty, ATermList):
            _check_types(tuple(ty), text)


# --------------------------------------------------------------------------------------------------
# Checking terms against types


def conforms(value: ATerm, ty: ATerm) -> bool:
    """True when ``value`` is of type ``ty`` (a type or a literal pattern; annotations are ignored)."""
    if isinstance(ty, ATermPlaceholder):
        inner = ty.type
        name = inner.name
        if inner.args:  # <list(T)>
            return isinstance(value, ATermList) and all(conforms(e, inner.args[0]) for e in value)
        if name == "term":
            return True
        if name == "int":
            return isinstance(value, ATermInt)
        if name == "str":
            return isinstance(value, ATermAppl) and value.is_string
        if name == "real":
            return isinstance(value, ATermReal)
        if name == "bool":
            return (
                isinstance(value, ATermAppl)
                and not value.quoted
                and not value.args
                and value.name in ("true", "false")
            )
        if name == "list":
            return isinstance(value, ATermList)
        return isinstance(value, ATermAppl) and not value.quoted and value.name == name  # user type
    if isinstance(ty, ATermAppl):
        return (
            isinstance(value, ATermAppl)
            and value.name == ty.name
            and value.quoted == ty.quoted
            and len(value.args) == len(ty.args)
            and all(conforms(v, t) for v, t in zip(value.args, ty.args))
        )
    if isinstance(ty, ATermList):
        return (
            isinstance(value, ATermList)
            and len(value) == len(ty)
            and all(conforms(v, t) for v, t in zip(value, ty))
        )
    return value.strip_annotations() == ty.strip_annotations()


def to_python(value: ATerm, ty: ATerm) -> Any:
    """The Python value of a term of type ``ty`` (the term itself for <term>, <list>, user types)."""
    if isinstance(ty, ATermPlaceholder):
        inner = ty.type
        if inner.args:
            return [to_python(e, inner.args[0]) for e in value]
        name = inner.name
        if name == "int" or name == "real":
            return value.value
        if name == "str":
            return value.name
        if name == "bool":
            return value.name == "true"
    return value


def from_python(value: Any, ty: ATerm | None = None) -> ATerm:
    """The term for a Python value returned by a tool method, guided by the result type."""
    if isinstance(ty, ATermPlaceholder) and ty.type.args and isinstance(value, (list, tuple)):
        return ATermList([from_python(v, ty.type.args[0]) for v in value])
    if (
        isinstance(ty, ATermPlaceholder)
        and ty.type.name == "real"
        and isinstance(value, int)
        and not isinstance(value, bool)
    ):
        return ATermReal(float(value))
    return term(value)


# --------------------------------------------------------------------------------------------------
# A tool's signatures


class Signatures:
    """All signatures of one tool, and the checks the bus makes before anything crosses to a tool."""

    def __init__(self, tool: str, signatures: list[Signature]):
        self.tool = tool
        self.all = list(signatures)
        self.evals = [s for s in self.all if s.kind == "eval"]
        self.dos = [s for s in self.all if s.kind == "do"]
        self.events = [s for s in self.all if s.kind == "event"]

    @classmethod
    def from_texts(cls, tool: str, texts: list[str]) -> Signatures:
        return cls(tool, [parse_signature(t) for t in texts])

    def _find(self, candidates: list[Signature], t: ATerm) -> Signature | None:
        for sig in candidates:
            if conforms(t, sig.pattern):
                return sig
        return None

    def _closest(self, candidates: list[Signature], t: ATerm) -> str:
        """The signature a mistaken term most likely meant: same name first (of any kind)."""
        name = t.name if isinstance(t, ATermAppl) else ""
        arity = len(t.args) if isinstance(t, ATermAppl) else -1
        same_name = [s for s in candidates + self.all if s.name == name]
        if same_name:
            best = next((s for s in same_name if s.arity == arity), same_name[0])
        elif candidates:
            names = difflib.get_close_matches(name, [s.name for s in candidates], n=1, cutoff=0.0)
            best = next(s for s in candidates if s.name == names[0])
        else:
            return "the tool declares no signature of this kind"
        return f"closest signature: {best.text}"

    def _reject(self, what: str, t: ATerm, candidates: list[Signature]) -> SignatureError:
        return SignatureError(
            f"tool {self.tool}: {what} {brief(t)} fits no signature; {self._closest(candidates, t)}"
        )

    def _closed(self, what: str, t: ATerm) -> None:
        if is_open(t):
            raise SignatureError(f"tool {self.tool}: {what} {brief(t)} still contains a variable (X?)")

    def check_eval(self, call: ATerm) -> Signature:
        """The eval signature ``call`` fits; SignatureError if none."""
        self._closed("eval", call)
        sig = self._find(self.evals, call)
        if sig is None:
            raise self._reject("eval", call, self.evals)
        return sig

    def check_do(self, call: ATerm) -> Signature:
        """The do signature ``call`` fits; SignatureError if none."""
        self._closed("do", call)
        sig = self._find(self.dos, call)
        if sig is None:
            raise self._reject("do", call, self.dos)
        return sig

    def check_value(self, sig: Signature, value: ATerm) -> None:
        """A value returned for an eval must be of the eval's result type."""
        if not conforms(value, sig.result):
            raise SignatureError(
                f"tool {self.tool}: value {brief(value)} for {brief(sig.pattern)} is not of the result type "
                f"{sig.result}; signature: {sig.text}"
            )

    def check_event(self, event: ATerm) -> Signature:
        """The event signature an emitted event fits; SignatureError if none."""
        sig = self._find(self.events, event)
        if sig is None:
            raise self._reject("event", event, self.events)
        return sig

    def check_ack(self, sig: Signature, result: ATerm) -> None:
        """An acknowledgement must be of the event's ack type."""
        self._closed("ack", result)
        if not conforms(result, sig.result):
            raise SignatureError(
                f"tool {self.tool}: ack {brief(result)} is not of the ack type {sig.result}; signature: {sig.text}"
            )
