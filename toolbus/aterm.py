"""ATerms: the data that flows between the bus and its tools.

Kinds: int, real, application (quoted or not), list, placeholder and, in bus patterns only, result
variable. Terms are immutable and compare structurally (annotations included); their hash is computed
once, bottom-up, when they are built.

Every operation here -- parsing, printing, equality, hashing, matching, ``make``, environments and the
shared text format (TAF) -- is iterative, so a 100,000-deep term never meets Python's recursion limit.

The parser tokenizes with one regular expression (``findall`` runs in C) and builds the term in a flat
loop over the tokens with an explicit stack of open brackets; it is linear in the input and raises only
``ParseError``. Token positions are only worked out again when there is an error to report.
"""

from __future__ import annotations

import gc
import math
import re
from collections.abc import Callable, Iterator, MutableMapping
from functools import lru_cache
from itertools import accumulate, islice
from typing import Any

__all__ = [
    "ATerm",
    "ATermAppl",
    "ATermInt",
    "ATermList",
    "ATermPlaceholder",
    "ATermReal",
    "ATermVar",
    "Environment",
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "ParseError",
    "as_term",
    "is_identifier",
    "is_open",
    "make",
    "parse",
    "read_taf",
    "term",
    "write_taf",
]

#: Deepest nesting the parser accepts. Far beyond any real term (docs/toolbus.md asks for 100,000), and it
#: bounds the memory a hostile input such as megabytes of ``[`` can make the parser use.
MAX_DEPTH = 1_000_000


class ParseError(ValueError):
    """Text that is not an ATerm. Says what was expected at which position."""

    def __init__(self, text: str, position: int, expected: str, found: str | None = None):
        self.position = position
        self.expected = expected
        self.found = found
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        where = f"position {position} (line {line}, column {column})"
        got = "end of input" if found is None else repr(found[:40])
        super().__init__(f"expected {expected} at {where}, found {got}")


# --------------------------------------------------------------------------------------------------
# Terms

_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_\-+*$]*", re.ASCII)


def is_identifier(name: str) -> bool:
    """Whether ``name`` is an ATerm identifier: an ASCII letter, then letters, digits or ``_-+*$``."""
    return _IDENT.fullmatch(name) is not None


def _check_ident(name: str) -> None:
    if _IDENT.fullmatch(name) is None:
        raise ValueError(
            f"{name!r} is not an ATerm identifier (a letter, then letters, digits or _-+*$); "
            "use a quoted application for other names"
        )


class ATerm:
    """Base of all terms. Immutable; ``==`` and ``hash`` are structural, annotations included.

    The public attributes are read-only properties over private slots: the slots are written once,
    by the builders in this module, with plain attribute stores (the fastest way Python has).
    """

    __slots__ = ("_annotations", "_hash")
    _annotations: tuple[ATerm, ...]
    _hash: int

    @property
    def annotations(self) -> tuple[ATerm, ...]:
        return self._annotations

    def __hash__(self) -> int:
        try:
            return self._hash
        except AttributeError:  # not hashed yet: hashes are worked out on first use, then kept
            return _hash_all(self)

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, ATerm) or hash(self) != hash(other):
            return False
        return _equal(self, other, True)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __str__(self) -> str:
        return _to_text(self)

    def __repr__(self) -> str:
        return f"parse({_to_text(self)!r})"

    def __reduce__(self):
        # Pickle and copy through the canonical text: small, and independent of the slots.
        return (parse, (_to_text(self),))

    def match(self, pattern: ATerm | str) -> list[Any] | None:
        """Match this term against ``pattern`` (ATerm library rules, see the module docs).

        Returns what the placeholders extract, left to right, or None when there is no match.
        """
        out: list[Any] = []
        # most patterns are terms already: telling them apart here saves a call per match
        if _match(pattern if isinstance(pattern, ATerm) else _pattern(pattern), self, out, None):
            return out
        return None

    def with_annotations(self, annotations: Any) -> ATerm:
        """This term with its annotations replaced (a list of terms or Python values)."""
        raise NotImplementedError  # every concrete kind overrides it

    def strip_annotations(self) -> ATerm:
        """This term without annotations at any depth."""
        return _rebuild(self, _strip_enter)


_new = object.__new__


def _annos(values: Any) -> tuple[ATerm, ...]:
    return tuple(term(v) for v in values)


class ATermInt(ATerm):
    """An integer (``42``, ``-7``; ``42L`` reads as 42). ``value`` is a Python int."""

    __slots__ = ("_value",)
    _value: int

    @property
    def value(self) -> int:
        return self._value

    def __new__(cls, value: int, annotations: Any = ()) -> ATermInt:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"ATermInt needs an int, not {type(value).__name__}")
        return _checked_int(value).with_annotations(annotations) if annotations else _checked_int(value)

    def with_annotations(self, annotations: Any) -> ATerm:
        return _int(self._value, _annos(annotations))


#: Python converts ints of at most this many digits to and from text (sys.get_int_max_str_digits):
#: beyond it the conversion is quadratic, so ATerm ints stop there too.
MAX_INT_DIGITS = 4300
_INT_LIMIT = 10**MAX_INT_DIGITS
_MAX_INT_BITS = _INT_LIMIT.bit_length() - 1  # narrower ints are certainly below the limit


def _checked_int(value: int) -> ATermInt:
    if value.bit_length() > _MAX_INT_BITS and abs(value) >= _INT_LIMIT:
        raise ValueError(f"ATerm ints have at most {MAX_INT_DIGITS} digits")
    return _int(int(value))


def _int(value: int, annos: tuple = ()) -> ATermInt:
    t = _new(ATermInt)
    t._value = value
    t._annotations = annos
    return t


class ATermReal(ATerm):
    """A real (``2.5``, ``1e-3``). ``value`` is a finite Python float."""

    __slots__ = ("_value",)
    _value: float

    @property
    def value(self) -> float:
        return self._value

    def __new__(cls, value: float, annotations: Any = ()) -> ATermReal:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TypeError(f"ATermReal needs a float, not {type(value).__name__}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"ATerm reals are finite; {value!r} has no text form")
        return _real(value, _annos(annotations))

    def with_annotations(self, annotations: Any) -> ATerm:
        return _real(self._value, _annos(annotations))


def _real(value: float, annos: tuple = ()) -> ATermReal:
    t = _new(ATermReal)
    t._value = value
    t._annotations = annos
    return t


class ATermAppl(ATerm):
    """A function application ``name(args)``; ``quoted`` for ``"name"(args)``.

    A quoted application without arguments is a string. The empty name with arguments is a tuple.
    Symbol identity is (name, arity, quoted).
    """

    __slots__ = ("_name", "_args", "_quoted")
    _name: str
    _args: tuple[ATerm, ...]
    _quoted: bool

    @property
    def name(self) -> str:
        return self._name

    @property
    def args(self) -> tuple[ATerm, ...]:
        return self._args

    @property
    def quoted(self) -> bool:
        return self._quoted

    def __new__(cls, name: str, args: Any = (), quoted: bool = False, annotations: Any = ()) -> ATermAppl:
        if not isinstance(name, str):
            raise TypeError(f"an application's name is a str, not {type(name).__name__}")
        args = tuple(term(a) for a in args)
        if not quoted and name != "":  # the empty name is the tuple: (), (a,b)
            _check_ident(name)
        return _appl(name, args, bool(quoted), _annos(annotations))

    @property
    def arity(self) -> int:
        return len(self._args)

    @property
    def is_string(self) -> bool:
        return self._quoted and not self._args

    def with_annotations(self, annotations: Any) -> ATerm:
        return _appl(self._name, self._args, self._quoted, _annos(annotations))


def _appl(name: str, args: tuple, quoted: bool, annos: tuple = ()) -> ATermAppl:
    t = _new(ATermAppl)
    t._name = name
    t._args = args
    t._quoted = quoted
    t._annotations = annos
    return t


class ATermList(ATerm):
    """A list ``[a, b, c]``. Behaves as a read-only sequence of its elements."""

    __slots__ = ("_elements",)
    _elements: tuple[ATerm, ...]

    @property
    def elements(self) -> tuple[ATerm, ...]:
        return self._elements

    def __new__(cls, elements: Any = (), annotations: Any = ()) -> ATermList:
        return _list(tuple(term(e) for e in elements), _annos(annotations))

    def __len__(self) -> int:
        return len(self._elements)

    def __iter__(self) -> Iterator[ATerm]:
        return iter(self._elements)

    def __getitem__(self, index):
        return self._elements[index]

    def __bool__(self) -> bool:
        return True  # a term is a value, also when it is the empty list

    def with_annotations(self, annotations: Any) -> ATerm:
        return _list(self._elements, _annos(annotations))


def _list(elements: tuple, annos: tuple = ()) -> ATermList:
    t = _new(ATermList)
    t._elements = elements
    t._annotations = annos
    return t


class ATermPlaceholder(ATerm):
    """A placeholder ``<type>``: the type of a hole in a pattern."""

    __slots__ = ("_type",)
    _type: ATerm

    @property
    def type(self) -> ATerm:
        return self._type

    def __new__(cls, type: Any, annotations: Any = ()) -> ATermPlaceholder:
        return _placeholder(term(type), _annos(annotations))

    def with_annotations(self, annotations: Any) -> ATerm:
        return _placeholder(self._type, _annos(annotations))


def _placeholder(type_: ATerm, annos: tuple = ()) -> ATermPlaceholder:
    t = _new(ATermPlaceholder)
    t._type = type_
    t._annotations = annos
    return t


class ATermVar(ATerm):
    """A result variable ``Name?`` of a bus pattern. Carries no annotations."""

    __slots__ = ("_name",)
    _name: str

    @property
    def name(self) -> str:
        return self._name

    def __new__(cls, name: str) -> ATermVar:
        if not isinstance(name, str):
            raise TypeError(f"a variable's name is a str, not {type(name).__name__}")
        _check_ident(name)
        return _var(name)

    def with_annotations(self, annotations: Any) -> ATerm:
        if annotations:
            raise ValueError("variables carry no annotations")
        return self


def _var(name: str) -> ATermVar:
    t = _new(ATermVar)
    t._name = name
    t._annotations = ()
    return t


TRUE = _appl("true", (), False)
FALSE = _appl("false", (), False)


def term(value: Any) -> ATerm:
    """Convert a plain Python value to an ATerm (an ATerm is returned as it is).

    int -> int, float -> real, bool -> ``true``/``false``, str -> quoted string, list or tuple -> list.
    """
    cls = value.__class__
    if cls is bool:
        return TRUE if value else FALSE
    if isinstance(value, ATerm):
        return value
    if isinstance(value, int):
        return _checked_int(value)
    if isinstance(value, float):
        return ATermReal(value)
    if isinstance(value, str):
        return _appl(value, (), True)
    if isinstance(value, (list, tuple)):
        return _list(tuple(term(v) for v in value))
    raise TypeError(f"cannot make an ATerm of {cls.__name__} {value!r:.60}")


def as_term(value: Any) -> ATerm:
    """A term given as an ATerm, as its text, or as a plain Python value (see ``term``).

    Text is parsed: ``as_term('f(1)')`` is ``f(1)``, where ``term('f(1)')`` is the string ``"f(1)"``.
    """
    return parse(value) if isinstance(value, str) else term(value)


def is_open(t: ATerm) -> bool:
    """True when ``t`` still contains a result variable (and so may not be sent to a tool)."""
    stack = [t]
    while stack:
        x = stack.pop()
        if x.__class__ is ATermVar:
            return True
        stack.extend(_children(x))
    return False


# --------------------------------------------------------------------------------------------------
# Hashing and structural equality (iterative)


def _children(t: ATerm) -> tuple:
    """Every term directly inside ``t``: arguments, elements or the placeholder's type, then annotations."""
    cls = t.__class__
    if cls is ATermAppl:
        return t._args + t._annotations
    if cls is ATermList:
        return t._elements + t._annotations
    if cls is ATermPlaceholder:
        return (t._type, *t._annotations)
    return t._annotations


def _hash_all(root: ATerm) -> int:
    """Hash every not yet hashed node of root, children first, and keep each node's hash."""
    stack: list[tuple[ATerm, bool]] = [(root, False)]
    while stack:
        t, children_done = stack.pop()
        if children_done:
            cls = t.__class__
            # children are hashed now, so hashing the tuples below calls no deeper than one level
            if cls is ATermAppl:
                h = hash((3, t._name, t._quoted, t._args, t._annotations))
            elif cls is ATermList:
                h = hash((4, t._elements, t._annotations))
            elif cls is ATermInt:
                h = hash((1, t._value, t._annotations))
            elif cls is ATermReal:
                h = hash((2, t._value, t._annotations))
            elif cls is ATermPlaceholder:
                h = hash((5, t._type, t._annotations))
            else:
                h = hash((6, t._name))
            t._hash = h
            continue
        try:
            t._hash  # noqa: B018 - probing the slot: unset means not hashed yet
        except AttributeError:
            stack.append((t, True))
            stack.extend((c, False) for c in _children(t))
    return root._hash


def _equal(a: ATerm, b: ATerm, annotations: bool) -> bool:
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if x is y:
            continue
        cls = x.__class__
        if cls is not y.__class__:
            return False
        if annotations:
            if hash(x) != hash(y) or len(x._annotations) != len(y._annotations):
                return False
            stack.extend(zip(x._annotations, y._annotations))
        if cls is ATermAppl:
            if x._name != y._name or x._quoted != y._quoted or len(x._args) != len(y._args):
                return False
            stack.extend(zip(x._args, y._args))
        elif cls is ATermList:
            if len(x._elements) != len(y._elements):
                return False
            stack.extend(zip(x._elements, y._elements))
        elif cls is ATermPlaceholder:
            stack.append((x._type, y._type))
        elif x._value != y._value if cls is not ATermVar else x._name != y._name:
            return False
    return True


# --------------------------------------------------------------------------------------------------
# Printing


def _quote(name: str) -> str:
    if _NEEDS_ESCAPE.search(name) is None:
        return f'"{name}"'
    return '"' + _NEEDS_ESCAPE.sub(_escape_char, name) + '"'


_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f\x7f]')
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\b": "\\b", "\f": "\\f"}


def _escape_char(m: re.Match) -> str:
    c = m.group()
    return _ESCAPES.get(c) or f"\\{ord(c):03o}"


def _to_text(root: ATerm) -> str:
    out: list[str] = []
    append = out.append
    stack: list[Any] = [root]
    pop = stack.pop
    push = stack.append
    while stack:
        t = pop()
        cls = t.__class__
        if cls is str:
            append(t)
            continue
        annos = t._annotations
        if annos:
            push("}")
            for a in reversed(annos[1:]):
                push(a)
                push(",")
            push(annos[0])
            push("{")
        if cls is ATermAppl:
            args = t._args
            if args:
                append((_quote(t._name) if t._quoted else t._name) + "(")
                push(")")
                for a in reversed(args[1:]):
                    push(a)
                    push(",")
                push(args[0])
            elif t._quoted:
                append(_quote(t._name))
            else:
                append(t._name if t._name else "()")
        elif cls is ATermInt:
            append(str(t._value))
        elif cls is ATermList:
            elements = t._elements
            if elements:
                append("[")
                push("]")
                for e in reversed(elements[1:]):
                    push(e)
                    push(",")
                push(elements[0])
            else:
                append("[]")
        elif cls is ATermReal:
            append(repr(t._value))
        elif cls is ATermPlaceholder:
            append("<")
            push(">")
            push(t._type)
        else:
            append(t._name + "?")
    return "".join(out)


# --------------------------------------------------------------------------------------------------
# Parsing

# One token per match: a quoted symbol, a word (identifier, variable, number -- classified later, and
# rejected there if malformed), a TAF reference, or any other single character (punctuation or junk).
# A comma between items is folded into the token after it (group 1), which halves the tokens the
# Python loop sees; a comma anywhere else is left as a token of its own, and so an error.
# Linear on any input: the whitespace runs are possessive and the text is tokenized only up to its
# last non-blank character (``_token_end``), so no match can fail after a long run of blanks (with
# backtracking, trailing blanks cost cubic time: 800 of them took seconds); and a quoted symbol that
# is never closed is one token running to the end of the text, instead of being rescanned from every
# later '"' (quadratic on '"\"\"\"...'). ``_quoted`` tells such a token from a closed one.
_TOKEN = re.compile(
    r'[ \t\r\n]*+(,?)[ \t\r\n]*+([()\[\]{}<>]|"(?:[^"\\]|\\[\s\S])*+(?:"|\\)?|[A-Za-z0-9_.+*$?\-]+'
    r"|#[A-Za-z0-9+/]+|[^ \t\r\n])",
    re.ASCII,
)
_END = ("", "")  # the token after the last one
_NUMBER = re.compile(r"(-?[0-9]+)[lL]?|(-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)", re.ASCII)
_ESCAPE = re.compile(r"\\([0-7]{3}|[ntbrf\\'\"])|\\")
_UNESCAPE = {"n": "\n", "t": "\t", "b": "\b", "r": "\r", "f": "\f", "\\": "\\", "'": "'", '"': '"'}
_WHITESPACE = " \t\r\n"


class _Failure(Exception):
    """Raised inside the parser loop with a token index; turned into a ParseError with a position."""

    def __init__(self, index: int, expected: str, offset: int = 0, comma: bool = False):
        self.index = index
        self.expected = expected
        self.offset = offset  # characters into the token
        self.comma = comma  # the fault is the comma before the token


def _quoted(tok: str, index: int) -> ATermAppl:
    """The leaf a quoted token stands for: a string, or the name of a quoted application."""
    if len(tok) < 2 or tok[-1] != '"' or (tok[-2] == "\\" and _escaped_last(tok)):
        raise _Failure(index, "a closing '\"' of the quoted symbol")
    name = tok[1:-1]
    if "\\" in name:
        name = _unescape(name, index)
    return _appl(name, (), True)


def _unescape(body: str, index: int) -> str:
    def replace(m: re.Match) -> str:
        code = m.group(1)
        if code is None:
            raise _Failure(
                index,
                "a known escape (\\n \\t \\b \\r \\f \\\\ \\' \\\" or three octal digits)",
                m.start() + 1,
            )
        return _UNESCAPE.get(code) or chr(int(code, 8))

    return _ESCAPE.sub(replace, body)


def _escaped_last(tok: str) -> bool:
    """Whether the last '"' of a quoted token is escaped (an odd run of backslashes before it): the
    token is then an unterminated quoted symbol that ran to the end of the text."""
    run = len(tok) - 1 - len(tok[:-1].rstrip("\\"))
    return run % 2 == 1


def _number(tok: str, index: int) -> ATerm:
    m = _NUMBER.fullmatch(tok)
    if m is None:
        raise _Failure(index, "a number (digits, then optionally '.' and digits, and an exponent)")
    if m.group(1) is not None:
        try:
            return _int(int(m.group(1)))
        except ValueError:  # longer than Python's int/str conversion limit
            raise _Failure(index, f"an integer of at most {MAX_INT_DIGITS} digits") from None
    value = float(tok)
    if not math.isfinite(value):
        raise _Failure(index, "a real within the range of a double")
    return _real(value)


def parse(text: str) -> ATerm:
    """Read one ATerm from text. Whitespace may surround the term and separate its tokens.

    Raises ParseError (a ValueError) saying what was expected where.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse() reads text (str), not {type(text).__name__}")
    return _read(text, False)


@lru_cache(maxsize=1024)
def _parse_cached(text: str) -> ATerm:
    return _read(text, False)


def _pattern(pattern: ATerm | str) -> ATerm:
    """A pattern given as a term or as text; texts of patterns repeat, so their parse is cached."""
    if isinstance(pattern, ATerm):
        return pattern
    if isinstance(pattern, str):
        return _parse_cached(pattern)
    raise TypeError(f"a pattern is an ATerm or its text, not {type(pattern).__name__}")


def _token_end(text: str) -> int:
    """Where tokenizing stops: after the last non-blank character (see ``_TOKEN``)."""
    return len(text.rstrip(_WHITESPACE))


def _read(text: str, taf: bool) -> ATerm:
    toks = _TOKEN.findall(text, 0, _token_end(text))
    # Terms cannot form reference cycles, so the cyclic garbage collector has nothing to find among
    # the objects a parse makes; left on, it rescans the growing heap many times during a big parse.
    paused = len(toks) > 1000 and gc.isenabled()
    if paused:
        gc.disable()
    try:
        return _build(toks, taf)
    except _Failure as failure:
        raise _parse_error(text, toks, failure) from None
    finally:
        if paused:
            gc.enable()


def _parse_error(text: str, toks: list[tuple[str, str]], failure: _Failure) -> ParseError:
    if failure.index >= len(toks) or toks[failure.index] is _END:
        return ParseError(text, len(text.rstrip(_WHITESPACE)), failure.expected)
    # Find the token's position again; only done on the error path (islice skips in C).
    m = next(islice(_TOKEN.finditer(text, 0, _token_end(text)), failure.index, None))
    if failure.comma:
        return ParseError(text, m.start(1), failure.expected, ",")
    at = failure.offset
    return ParseError(text, m.start(2) + at, failure.expected, m.group(2)[at:])


def _build(toks: list[tuple[str, str]], taf: bool) -> ATerm:
    """The flat parser loop: one pass over the tokens, an explicit stack of open brackets.

    Each token is (comma, text). (1) A term starts at a token: a leaf is complete there; an opening
    bracket, or a name followed by '(', is pushed, and its first item starts at the next token.
    (2) A complete term takes its annotations, then goes into the innermost open bracket: after a
    comma the next item starts (1); at the closing bracket, the bracket's term is complete (2).
    Every way into (1) has checked the comma of its token: present after an item, absent after an
    opening bracket.
    """
    n = len(toks)
    toks.append(_END)
    if toks[0][0]:
        raise _Failure(0, "a term", comma=True)
    stack: list[tuple] = []  # open brackets, innermost last: (closer, start token, items, head, quoted)
    items: list | None = None  # items of the innermost open bracket
    closer: str | None = None  # its closing token; None outside every bracket
    leaves: dict[str, ATerm] = {}  # word -> leaf: within one text, equal symbols are one object
    if taf:
        # TAF numbers subterms by the length of their text as written, and the writer puts no
        # whitespace between tokens: a token's offset is the running sum of the lengths of the
        # tokens before it, so whitespace a reader meets between tokens changes no number.
        offsets = [0, *accumulate(len(c) + len(t) for c, t in toks)]
        table: list[ATerm] = []
        ref_len = 2  # length of "#" + the base-64 digits of the next number
    i = 0
    bracket = None  # a bracket just opened: (closer, start token, items, head, quoted)
    while True:
        if bracket:  # pushed, and its first item starts at token i
            if toks[i][0]:
                raise _Failure(i, "a term", comma=True)
            stack.append(bracket)
            if len(stack) > MAX_DEPTH:
                raise _Failure(bracket[1], f"nesting at most {MAX_DEPTH} deep")
            closer, _, items, _, _ = bracket
            bracket = None

        # --- 1. a term starts at token i
        start = i
        tok = toks[i][1]
        i += 1
        c = tok[:1]
        if c.isalpha():  # a name (or a variable): a leaf, or an application when '(' follows
            value = leaves.get(tok)
            if value is None:
                value = leaves[tok] = _word(tok, start)
            if toks[i] == _OPEN_PAREN:
                bracket = _arguments(value, start, toks, i)
                i += 1 if bracket else 2  # past '(', or past "()": f() is f
        elif c == '"':  # a quoted name: the same
            value = _quoted(tok, start)
            if toks[i] == _OPEN_PAREN:
                bracket = _arguments(value, start, toks, i)
                i += 1 if bracket else 2
        elif "0" <= c <= "9" or c == "-":
            # a word token, so ASCII: plain ints are read here, and _number reads all the rest
            value = _int(int(tok)) if tok.isdigit() and len(tok) < 4000 else _number(tok, start)
        elif c in _BRACKETS:
            closing, at_once, value = _BRACKETS[c]
            if toks[i] == at_once:
                i += 1  # "[]" or "()"
            else:
                bracket = (closing, start, [], "", False)
        elif c == "#" and taf and len(tok) > 1:
            value = _reference(tok, start, table)
        else:
            raise _Failure(start, "a term")
        if bracket:
            continue

        # --- 2. value is complete (tokens start..i-1): its annotations, then into its bracket
        while True:
            comma, tok = toks[i]
            if tok == "{" and not comma:
                i += 1
                bracket = _annotations(value, start, toks, i)
                if bracket:
                    break
                i += 1  # "{}": no annotations
                comma, tok = toks[i]
            if taf:
                length = offsets[i] - offsets[start] - len(toks[start][0])
                if length > ref_len:
                    table.append(value)
                    ref_len = 1 + len(_to_base64(len(table)))
            if comma and closer in _SEPARATED:
                items.append(value)
                break
            if tok != closer or comma:
                return _finish(value, toks, i, n, closer)  # the end of the text, or an error
            items.append(value)
            i += 1
            closer, start, items, head, quoted = stack.pop()
            if closer == ")":
                value = _appl(head, tuple(items), quoted)
            elif closer == "]":
                value = _list(tuple(items))
            elif closer == ">":
                value = _placeholder(items[0])
            else:  # "}": head is the annotated term
                value = head.with_annotations(items)
            closer, _, items, _, _ = stack[-1] if stack else _OUTSIDE


def _arguments(name: ATerm, start: int, toks: list[tuple[str, str]], i: int) -> tuple | None:
    """The bracket of a name's arguments, '(' at token i; None for "f()", which is f."""
    if name.__class__ is ATermVar:
        raise _Failure(i, "',' or a closing bracket: a variable has no arguments")
    if toks[i + 1] == _CLOSE_PAREN:
        return None
    return (")", start, [], name._name, name._quoted)


def _annotations(term: ATerm, start: int, toks: list[tuple[str, str]], i: int) -> tuple | None:
    """The bracket of a term's annotations, '{' before token i; None for "{}", which is none."""
    if term._annotations or term.__class__ is ATermVar:
        raise _Failure(i - 1, "',' or a closing bracket: this term can take no annotations")
    if toks[i] == _CLOSE_BRACE:
        return None
    return ("}", start, [], term, False)


def _finish(value: ATerm, toks: list[tuple[str, str]], i: int, n: int, closer: str | None) -> ATerm:
    """A complete term followed by neither ',' nor the closer: the whole term if the text ends here."""
    comma = bool(toks[i][0])
    if closer is None:
        if i < n:
            raise _Failure(i, "end of input", comma=comma)
        return value
    if comma:  # inside <...>
        raise _Failure(i, "'>'", comma=True)
    raise _Failure(i, _CLOSERS[closer])


def _word(tok: str, index: int) -> ATerm:
    """The leaf a word stands for: an identifier (an application without arguments) or a variable."""
    if tok[-1] == "?":
        if _IDENT.fullmatch(tok, 0, len(tok) - 1) is None:
            raise _Failure(index, "a term")
        return _var(tok[:-1])
    if _IDENT.fullmatch(tok) is None:
        raise _Failure(index, "a term")
    return _appl(tok, (), False)


def _reference(tok: str, index: int, table: list[ATerm]) -> ATerm:
    """The subterm a TAF reference, ``#`` and base-64 digits, stands for."""
    number = 0
    for digit in tok[1:]:
        number = number * 64 + _B64.index(digit)
    if number >= len(table):
        raise _Failure(index, f"a reference to one of the {len(table)} subterms read so far")
    return table[number]


_OPEN_PAREN = ("", "(")
_CLOSE_PAREN = ("", ")")
_CLOSE_BRACE = ("", "}")
# Brackets that start a term: their closer, the token that closes them at once, and the term they
# are then. A placeholder is never empty: "<>" reads on, and fails at ">".
_BRACKETS = {
    "[": ("]", ("", "]"), _list(())),
    "(": (")", _CLOSE_PAREN, _appl("", (), False)),
    "<": (">", None, None),
}
_SEPARATED = frozenset(")]}")  # brackets whose items are separated by commas (not "<...>")
_OUTSIDE = (None, None, None, None, None)  # the innermost bracket when there is none
# What a token that is neither ',' nor the closer of the innermost bracket should have been.
_CLOSERS = {")": "',' or ')'", "]": "',' or ']'", "}": "',' or '}'", ">": "'>'"}


# --------------------------------------------------------------------------------------------------
# Shared text (TAF)

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _to_base64(n: int) -> str:
    digits = _B64[n % 64]
    n //= 64
    while n:
        digits = _B64[n % 64] + digits
        n //= 64
    return digits


def read_taf(text: str) -> ATerm:
    """Read the ATerm library's shared textual format (``!`` then the term, with ``#`` references)."""
    if not isinstance(text, str):
        raise TypeError(f"read_taf() reads text (str), not {type(text).__name__}")
    if not text.startswith("!"):
        raise ParseError(text, 0, "'!' (the start of a shared text)", text[:1] or None)
    try:
        return _read(text[1:], True)
    except ParseError as error:
        raise ParseError(text, error.position + 1, error.expected, error.found) from None


def write_taf(root: ATerm) -> str:
    """Write a term in the shared textual format: equal subterms after the first become references."""
    table: dict[ATerm, int] = {}
    # Pre-order walk with explicit "text" and "exit" items: an "exit" closes a subterm and numbers it
    # when its written text is longer than a reference to the next number would be.
    ref_len = 2
    out = ["!"]
    size = 1  # characters written so far
    starts: list[int] = []
    stack = [("enter", root)]
    while stack:
        op, t = stack.pop()
        if op == "text":
            out.append(t)
            size += len(t)
            continue
        if op == "enter":
            number = table.get(t)
            if number is not None:
                ref = "#" + _to_base64(number)
                out.append(ref)
                size += len(ref)
                continue
            starts.append(size)
            stack.append(("exit", t))
            annos = t._annotations
            if annos:
                stack.append(("text", "}"))
                for a in reversed(annos[1:]):
                    stack.append(("enter", a))
                    stack.append(("text", ","))
                stack.append(("enter", annos[0]))
                stack.append(("text", "{"))
            cls = t.__class__
            if cls is ATermAppl:
                head = _quote(t._name) if t._quoted else t._name  # spaces inside quotes stay spaces
                if t._args:
                    stack.append(("text", ")"))
                    for a in reversed(t._args[1:]):
                        stack.append(("enter", a))
                        stack.append(("text", ","))
                    stack.append(("enter", t._args[0]))
                    stack.append(("text", head + "("))
                else:
                    stack.append(("text", head or "()"))
            elif cls is ATermList:
                if t._elements:
                    stack.append(("text", "]"))
                    for e in reversed(t._elements[1:]):
                        stack.append(("enter", e))
                        stack.append(("text", ","))
                    stack.append(("enter", t._elements[0]))
                    stack.append(("text", "["))
                else:
                    stack.append(("text", "[]"))
            elif cls is ATermPlaceholder:
                stack.append(("text", ">"))
                stack.append(("enter", t._type))
                stack.append(("text", "<"))
            else:
                stack.append(("text", _to_text(t.with_annotations(()))))  # annotations were pushed above
        else:  # exit
            length = size - starts.pop()
            if length > ref_len:
                table[t] = len(table)
                ref_len = 1 + len(_to_base64(len(table)))
    return "".join(out)


# --------------------------------------------------------------------------------------------------
# Matching

_COMPOUND_TYPES = frozenset(("fun", "appl", "str"))
_EMIT = object()  # stack marker: append the value to the extraction list
_NO_MATCH = object()  # what an extractor returns for a subject its placeholder does not match


def _is_list_placeholder(p: ATerm) -> bool:
    if p.__class__ is not ATermPlaceholder:
        return False
    ty = p._type
    return ty.__class__ is ATermAppl and ty._name == "list" and not ty._args and not ty._quoted


def _match(pattern: ATerm, subject: ATerm, out: list | None, bindings: dict | None) -> bool:
    """Match subject against pattern; extractions go to ``out``, variable bindings to ``bindings``.

    Annotations are ignored at every depth. ``bindings`` receives the bindings only on success.
    The (pattern, subject) pairs still to match wait on a stack, the leftmost on top, so that the
    extractions come out left to right.
    """
    local: dict[str, ATerm] = {}
    stack: list[tuple] = [(pattern, subject)]
    pop = stack.pop
    while stack:
        p, s = pop()
        if p is _EMIT:
            if out is not None:
                out.append(s)
            continue
        pcls = p.__class__
        if pcls is ATermPlaceholder:
            ty = p._type
            extract = None
            if ty.__class__ is ATermAppl and not ty._args and not ty._quoted:
                extract = _EXTRACTORS.get(ty._name)
            if extract is not None:  # <int>, <str>, <term>, ...
                value = extract(s)
                if value is _NO_MATCH:
                    return False
                if out is not None:
                    out.append(value)
            elif not _match_other_placeholder(ty, s, out, stack):  # <fun(..)>, <abc>, ...
                return False
        elif pcls is ATermVar:
            bound = local.get(p._name)
            if bound is None:
                local[p._name] = s
            elif bound != s:
                return False
        elif pcls is not s.__class__:
            return False
        elif pcls is ATermAppl:
            if p._name != s._name or p._quoted != s._quoted or len(p._args) != len(s._args):
                return False
            if p._args:
                stack.extend(zip(reversed(p._args), reversed(s._args)))
        elif pcls is ATermList:
            if not _push_sequence(stack, p._elements, s._elements, False):
                return False
        elif p._value != s._value:  # an int or a real
            return False
    if bindings is not None:
        bindings.update(local)
    return True


def _match_other_placeholder(ty: ATerm, s: ATerm, out: list | None, stack: list[tuple]) -> bool:
    """The placeholders that extract no plain value: ``<fun(P..)>``, ``<appl(P..)>`` and ``<str(P..)>``
    extract the subject's name, then what P.. extract from its arguments; any other (``<abc>``)
    matches only an equal placeholder, and extracts nothing."""
    if ty.__class__ is ATermAppl and ty._args and not ty._quoted and ty._name in _COMPOUND_TYPES:
        if s.__class__ is not ATermAppl or s._quoted != (ty._name == "str") or not s._args:
            return False
        if out is not None:
            out.append(s._name)
        return _push_sequence(stack, ty._args, s._args, True)
    return s.__class__ is ATermPlaceholder and _equal(ty, s._type, False)


def _push_sequence(stack: list[tuple], patterns: tuple, subjects: tuple, rest_needs_one: bool) -> bool:
    """Schedule element-wise matches, with a trailing ``<list>`` taking the remaining elements."""
    if patterns and _is_list_placeholder(patterns[-1]):
        fixed = len(patterns) - 1
        if len(subjects) < fixed + (1 if rest_needs_one else 0):
            return False
        stack.append((_EMIT, _list(subjects[fixed:])))
        patterns = patterns[:fixed]
        subjects = subjects[:fixed]
    elif len(patterns) != len(subjects):
        return False
    stack.extend(zip(reversed(patterns), reversed(subjects)))
    return True


# What the placeholders without arguments match, and extract: one function each, by name.


def _extract_int(s: ATerm) -> Any:
    return s._value if s.__class__ is ATermInt else _NO_MATCH


def _extract_real(s: ATerm) -> Any:
    return s._value if s.__class__ is ATermReal else _NO_MATCH


def _extract_bool(s: ATerm) -> Any:
    if s.__class__ is ATermAppl and not s._quoted and not s._args and s._name in ("true", "false"):
        return s._name == "true"
    return _NO_MATCH


def _extract_str(s: ATerm) -> Any:
    return s._name if s.__class__ is ATermAppl and s._quoted and not s._args else _NO_MATCH


def _extract_name(s: ATerm) -> Any:
    return s._name if s.__class__ is ATermAppl and not s._quoted and not s._args else _NO_MATCH


def _extract_term(s: ATerm) -> Any:
    return s


def _extract_list(s: ATerm) -> Any:
    return s if s.__class__ is ATermList else _NO_MATCH


def _extract_placeholder(s: ATerm) -> Any:
    return s if s.__class__ is ATermPlaceholder else _NO_MATCH


_EXTRACTORS: dict[str, Callable[[ATerm], Any]] = {
    "int": _extract_int,
    "long": _extract_int,
    "real": _extract_real,
    "bool": _extract_bool,
    "str": _extract_str,
    "fun": _extract_name,
    "appl": _extract_name,
    "id": _extract_name,
    "term": _extract_term,
    "list": _extract_list,
    "placeholder": _extract_placeholder,
}


# --------------------------------------------------------------------------------------------------
# Rebuilding terms (make, substitute, strip): one iterative post-order walk


def _rebuild(root: ATerm, enter: Callable[[ATerm], Any]) -> ATerm:
    """Rebuild ``root`` bottom-up. ``enter(node)`` is called in pre-order, left to right; it returns
    either a finished term (used as is, not descended into) or ``(children, build)``: the children are
    rebuilt in turn and ``build(results)`` makes the node from them.
    """
    results: list[ATerm] = []
    stack: list[tuple] = [(root, None)]
    while stack:
        node, build = stack.pop()
        if build is not None:
            count = node
            args = results[len(results) - count :] if count else []
            del results[len(results) - count :]
            results.append(build(args))
            continue
        r = enter(node)
        if isinstance(r, ATerm):
            results.append(r)
            continue
        children, build = r
        stack.append((len(children), build))
        for child in reversed(children):
            stack.append((child, None))
    return results[0]


def _structure(node: ATerm) -> tuple[tuple, Callable] | ATerm:
    """Children and builder that rebuild ``node`` unchanged except for its children."""
    cls = node.__class__
    annos = node._annotations
    if cls is ATermAppl:
        if not node._args:
            return node
        return node._args, lambda r: _appl(node._name, tuple(r), node._quoted, annos)
    if cls is ATermList:
        if not node._elements:
            return node
        return node._elements, lambda r: _list(tuple(r), annos)
    if cls is ATermPlaceholder:
        return (node._type,), lambda r: _placeholder(r[0], annos)
    return node


def _strip_enter(node: ATerm):
    if node._annotations:
        node = node.with_annotations(())
    r = _structure(node)
    if isinstance(r, ATerm):
        return r
    children, build = r
    return children, lambda res: build(res).with_annotations(())


# --------------------------------------------------------------------------------------------------
# make


def make(pattern: ATerm | str, *args: Any) -> ATerm:
    """Build a term from a pattern, each placeholder in order taking one argument.

    ``make('f(<int>,<term>)', 3, parse('a')) == parse('f(3,a)')``. See the table of docs/toolbus.md §1.3 for what each
    placeholder takes. A wrong count or type, or an unknown placeholder, is a TypeError.
    """
    supply = iter(args)
    used = 0

    def take(placeholder: ATerm) -> Any:
        nonlocal used
        try:
            value = next(supply)
        except StopIteration:
            raise TypeError(
                f"make() needs more arguments: {placeholder} is placeholder {used + 1}, "
                f"but only {len(args)} given"
            ) from None
        used += 1
        return value

    def enter(node: ATerm):
        cls = node.__class__
        if cls is ATermList and node._elements and _is_list_placeholder(node._elements[-1]):
            # a trailing <list> splices its elements into the list
            annos = node._annotations

            def splice(r: list) -> ATerm:
                return _list(tuple(r[:-1]) + r[-1]._elements, annos)

            return node._elements, splice
        if cls is not ATermPlaceholder:
            return _structure(node)
        ty = node._type
        annos = node._annotations
        if ty.__class__ is ATermAppl and not ty._quoted:
            if ty._args and ty._name in _COMPOUND_TYPES:
                name = take(node)
                quoted = ty._name == "str"
                _expect(node, name, str)
                if not quoted:
                    _check_ident(name)
                return ty._args, lambda r: _appl(name, tuple(r), quoted, annos)
            if not ty._args:
                fill = _FILLERS.get(ty._name, _fill_unknown)
                value = fill(node, take(node))  # a missing argument is reported before an unknown placeholder
                return value.with_annotations(annos) if annos else value
        raise TypeError(f"make() does not know placeholder {node}; use one of {_KNOWN}")

    result = _rebuild(_pattern(pattern), enter)
    if used != len(args):
        raise TypeError(f"make() got {len(args)} arguments for {used} placeholders in {pattern}")
    return result


def _expect(node: ATerm, value: Any, *types: type) -> None:
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        names = " or ".join(t.__name__ for t in types)
        raise TypeError(f"placeholder {node} takes {names}, not {type(value).__name__} {value!r:.60}")


# What the placeholders without arguments take, and make of it: one function each, by name.


def _fill_int(node: ATerm, value: Any) -> ATerm:
    _expect(node, value, int)
    return _checked_int(value)


def _fill_real(node: ATerm, value: Any) -> ATerm:
    _expect(node, value, float, int)
    return ATermReal(float(value))


def _fill_bool(node: ATerm, value: Any) -> ATerm:
    _expect(node, value, bool)
    return TRUE if value else FALSE


def _fill_str(node: ATerm, value: Any) -> ATerm:
    _expect(node, value, str)
    return _appl(value, (), True)


def _fill_name(node: ATerm, value: Any) -> ATerm:
    _expect(node, value, str)
    _check_ident(value)
    return _appl(value, (), False)


def _fill_term(node: ATerm, value: Any) -> ATerm:
    return term(value)


def _fill_list(node: ATerm, value: Any) -> ATerm:
    _expect(node, value, ATermList, list, tuple)
    return term(value) if not isinstance(value, ATermList) else value


def _fill_placeholder(node: ATerm, value: Any) -> ATerm:
    _expect(node, value, ATerm)
    return _placeholder(value)


_FILLERS: dict[str, Callable[[ATerm, Any], ATerm]] = {
    "int": _fill_int,
    "long": _fill_int,
    "real": _fill_real,
    "bool": _fill_bool,
    "str": _fill_str,
    "fun": _fill_name,
    "appl": _fill_name,
    "id": _fill_name,
    "term": _fill_term,
    "list": _fill_list,
    "placeholder": _fill_placeholder,
}
_KNOWN = " ".join(f"<{name}>" for name in _FILLERS)


def _fill_unknown(node: ATerm, value: Any) -> ATerm:
    raise TypeError(f"make() does not know placeholder {node}; use one of {_KNOWN}")


# --------------------------------------------------------------------------------------------------
# Environments (ToolBus result variables)


class Environment(MutableMapping):
    """Variable bindings of the bus: variable name -> term.

    ``match`` binds the result variables of a pattern (``value(N?)``), ``substitute`` puts the bound
    values into a pattern.
    """

    def __init__(self, bindings: Any = ()):
        self._bindings: dict[str, ATerm] = {}
        self.update(dict(bindings))

    def __getitem__(self, name: str) -> ATerm:
        return self._bindings[name]

    def __setitem__(self, name: str, value: Any) -> None:
        if not isinstance(name, str):
            raise TypeError("variable names are str")
        self._bindings[name] = term(value)

    def __delitem__(self, name: str) -> None:
        del self._bindings[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._bindings)

    def __len__(self) -> int:
        return len(self._bindings)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in self._bindings.items())
        return f"Environment({inner})"

    def match(self, pattern: ATerm | str, subject: ATerm | str) -> bool:
        """Match subject against pattern; on success bind the pattern's variables and return True."""
        subject = parse(subject) if isinstance(subject, str) else subject
        return _match(_pattern(pattern), subject, None, self._bindings)

    def substitute(self, pattern: ATerm | str) -> ATerm:
        """The pattern with every bound variable replaced by its value (unbound ones stay)."""
        bindings = self._bindings

        def enter(node: ATerm):
            if node.__class__ is ATermVar:
                return bindings.get(node._name, node)
            return _structure(node)

        return _rebuild(_pattern(pattern), enter)
