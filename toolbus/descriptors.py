"""Tool descriptors: ``tools.toml``, the declaration of every tool.

    [tool.calc]
    tool_name = "examples.tools.calc:Calc"   # internal: "module:Class"; external: a command line
    host_name = "ToolBus"                    # "ToolBus" = inside the worker; else the host group
    restart_frequency = 0                    # 0: never restart; N > 0: after every N requests
    function_signatures = ["eval(compute(<str>), <int>)", "do(store(<str>, <int>))"]

An external command line is split like a shell does (it is not run by one) and started in the
directory of ``tools.toml``; ``{python}`` in it stands for the interpreter running the bus.
``load_tools`` checks everything and reports every problem at once in one ``DescriptorError``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from toolbus.aterm import is_identifier
from toolbus.errors import DescriptorError
from toolbus.signatures import Signatures, parse_signature

INTERNAL_HOST = "ToolBus"
REQUIRED = ("tool_name", "host_name", "function_signatures")
OPTIONAL = ("restart_frequency",)
_CLASS_REF = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def default_tools_path() -> Path:
    """``$TOOLCALL_TOOLS``, or ``tools.toml`` at the repository root."""
    env = os.environ.get("TOOLCALL_TOOLS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "tools.toml"


def tool_queue(name: str) -> str:
    """The Celery queue of the tool called ``name``: ``toolbus.<name>``."""
    return f"toolbus.{name}"


@dataclass(frozen=True)
class ToolDescriptor:
    """One declared tool (the seed's ToolDescriptor, snake_cased)."""

    name: str  # the table key: an ATerm identifier, used in queue names and on the wire
    tool_name: str
    host_name: str
    restart_frequency: int
    function_signatures: tuple[str, ...]
    signatures: Signatures = field(repr=False, compare=False)
    base_dir: Path = field(default=Path("."), compare=False)  # where external tools start

    @property
    def internal(self) -> bool:
        return self.host_name == INTERNAL_HOST

    @property
    def queue(self) -> str:
        """The Celery queue of this tool."""
        return tool_queue(self.name)

    @property
    def command(self) -> list[str]:
        """An external tool's command line, split, with ``{python}`` expanded."""
        return [sys.executable if part == "{python}" else part for part in shlex.split(self.tool_name)]

    def tool_class(self) -> type:
        """The class of an internal tool (imports its module)."""
        module_name, _, class_name = self.tool_name.partition(":")
        return getattr(importlib.import_module(module_name), class_name)


def load_tools(
    path: str | os.PathLike | None = None, check_classes: bool = True
) -> dict[str, ToolDescriptor]:
    """Read and check ``tools.toml``; returns {name: ToolDescriptor}.

    Raises DescriptorError listing every problem (file, tool, field, what is wrong).
    ``check_classes=False`` skips importing internal tool classes (for clients that only need the
    signatures).
    """
    path = Path(path) if path is not None else default_tools_path()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise DescriptorError(
            f"{path}: no such file (set TOOLCALL_TOOLS to the tools file)", [f"{path}: no such file"]
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise DescriptorError(f"{path}: not valid TOML: {e}", [f"{path}: not valid TOML: {e}"]) from None
    except OSError as e:
        raise DescriptorError(
            f"{path}: cannot read: {e.strerror}", [f"{path}: cannot read: {e.strerror}"]
        ) from None

    problems: list[str] = []
    tools: dict[str, ToolDescriptor] = {}
    for key in data:
        if key != "tool":
            problems.append(
                f"{path}: unknown top-level key {key!r}; tools are declared as [tool.NAME] tables"
            )
    table = data.get("tool", {})
    if not isinstance(table, dict):
        problems.append(f"{path}: 'tool' must be a table of [tool.NAME] tables")
        table = {}
    for name, spec in table.items():
        descriptor = _load_one(path, name, spec, check_classes, problems)
        if descriptor is not None:
            tools[name] = descriptor
    if problems:
        raise DescriptorError(
            f"{path}: {len(problems)} problem(s) in the tool descriptors:\n" + "\n".join(problems), problems
        )
    return tools


def _load_one(
    path: Path, name: str, spec: object, check_classes: bool, problems: list[str]
) -> ToolDescriptor | None:
    before = len(problems)

    def problem(field_name: str | None, what: str) -> None:
        where = f"{path}: tool {name}" + (f", field {field_name}" if field_name else "")
        problems.append(f"{where}: {what}")

    if not is_identifier(name):
        problem(None, "the tool name must be an ATerm identifier (a letter, then letters, digits or _-+*$)")
    if not isinstance(spec, dict):
        problem(None, "must be a table with tool_name, host_name and function_signatures")
        return None
    for key in REQUIRED:
        if key not in spec:
            problem(key, "missing (required)")
    for key in spec:
        if key not in REQUIRED + OPTIONAL:
            hint = (
                ' (internal/kind were removed: host_name = "ToolBus" means internal)'
                if key in ("internal", "kind")
                else ""
            )
            problem(key, f"unknown field{hint}; the fields are {', '.join(REQUIRED + OPTIONAL)}")

    tool_name = spec.get("tool_name", "")
    host_name = spec.get("host_name", "")
    restart = spec.get("restart_frequency", 0)
    texts = spec.get("function_signatures", [])
    if not isinstance(tool_name, str) or ("tool_name" in spec and not tool_name.strip()):
        problem("tool_name", f"must be a non-empty string, got {tool_name!r}")
        tool_name = ""
    if not isinstance(host_name, str) or ("host_name" in spec and not host_name.strip()):
        problem("host_name", f'must be a non-empty string ("ToolBus" or a host group), got {host_name!r}')
        host_name = ""
    if not isinstance(restart, int) or isinstance(restart, bool):
        problem("restart_frequency", f"must be an integer, got {restart!r}")
        restart = 0
    elif restart < 0:
        problem(
            "restart_frequency", f"must be 0 (never restart) or a positive number of requests, got {restart}"
        )
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        problem("function_signatures", f"must be a list of strings, got {texts!r}")
        texts = []

    sigs = []
    for text in texts:
        try:
            sigs.append(parse_signature(text))
        except ValueError as e:
            problem("function_signatures", str(e))
    seen: dict[tuple, str] = {}
    for s in sigs:
        key = ("event" if s.kind == "event" else "call", s.name, s.arity)
        if key in seen:
            problem("function_signatures", f"{s.text!r} and {seen[key]!r} declare the same name and arity")
        seen[key] = s.text
    signatures = Signatures(name, sigs)

    internal = host_name == INTERNAL_HOST
    if tool_name and internal:
        if not _CLASS_REF.fullmatch(tool_name):
            problem("tool_name", f'an internal tool is "module:Class", got {tool_name!r}')
        elif check_classes:
            _check_class(
                tool_name, signatures, path.resolve().parent, lambda what: problem("tool_name", what)
            )
    elif tool_name:
        try:
            if not shlex.split(tool_name):
                problem("tool_name", "the command line is empty")
        except ValueError as e:
            problem("tool_name", f"cannot split the command line: {e}")

    if len(problems) > before:
        return None
    return ToolDescriptor(
        name=name,
        tool_name=tool_name,
        host_name=host_name,
        restart_frequency=restart,
        function_signatures=tuple(texts),
        signatures=signatures,
        base_dir=path.resolve().parent,
    )


def takes_bus(cls: type) -> bool:
    """Whether a tool class is built as ``Class(bus)`` rather than ``Class()``.

    It is when its constructor takes one argument: one parameter (``bus`` or ``bus=None``), or one
    required parameter besides optional ones.
    """
    init = inspect.signature(cls)
    if len(init.parameters) == 1:
        return True
    try:
        init.bind()
    except TypeError:
        return True
    return False


def _import_problem(module_name: str, error: BaseException, tools_dir: Path) -> str:
    """What is wrong with an internal tool's module that cannot be imported, and what to do about it.

    Modules are imported from the Python path of the process (``PYTHONPATH``, the current directory
    of ``python -m``, the installed packages), never from the directory of the tools file: a module
    that lies next to a copied tools file needs that directory on ``PYTHONPATH``.
    """
    what = f"{type(error).__name__}: {error}"
    missing = error.name if isinstance(error, ModuleNotFoundError) else None
    if not missing:
        return f"cannot import module {module_name!r}: {what}"
    if not (module_name == missing or module_name.startswith(missing + ".")):
        return (
            f"cannot import module {module_name!r}: it imports {missing!r}, which is not installed "
            f"({what}); install it, or add the directory that holds it to PYTHONPATH"
        )
    top = module_name.split(".")[0]
    if missing != top:
        return f"cannot import module {module_name!r}: package {missing.rpartition('.')[0]!r} has no such module ({what})"
    now = os.environ.get("PYTHONPATH", "")
    if (tools_dir / top).is_dir() or (tools_dir / f"{top}.py").is_file():
        todo = f"{top} is next to the tools file: set PYTHONPATH={os.pathsep.join(filter(None, [str(tools_dir), now]))}"
    else:
        todo = f"add the directory that holds {top}/ (or {top}.py) to PYTHONPATH"
    return (
        f"cannot import module {module_name!r} ({what}): internal tools are imported from the Python "
        f"path, not from the directory of the tools file; {todo} "
        f"({f'PYTHONPATH is now {now}' if now else 'PYTHONPATH is not set'})"
    )


def _check_class(ref: str, signatures: Signatures, tools_dir: Path, problem) -> None:
    module_name, _, class_name = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except BaseException as e:  # any import failure (even sys.exit) is the descriptor's problem to report
        if isinstance(e, KeyboardInterrupt):
            raise
        problem(_import_problem(module_name, e, tools_dir))
        return
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        problem(f"module {module_name!r} has no class {class_name!r}")
        return
    try:
        init = inspect.signature(cls)
        try:
            init.bind()
        except TypeError:
            init.bind(None)  # Class(bus)
    except (TypeError, ValueError):
        problem(f"{ref} must be constructible as {class_name}() or {class_name}(bus)")
    for sig in signatures.evals + signatures.dos:
        method = getattr(cls, sig.method_name, None)
        if not callable(method):
            problem(f"{ref} has no method {sig.method_name}() for {sig.text}")
            continue
        try:
            inspect.signature(method).bind(None, *range(sig.arity))
        except TypeError:
            problem(
                f"{ref}.{sig.method_name}() must accept {sig.arity} positional argument(s) for {sig.text}"
            )
        except ValueError:
            pass  # a builtin without an introspectable signature: trust it
