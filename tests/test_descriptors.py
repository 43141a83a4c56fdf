"""Spec docs/toolbus.md §3: tool descriptors (``tools.toml``) — loading, the descriptor's fields, and every problem reported."""

from __future__ import annotations

import os
import re
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from toolbus.aterm import parse
from toolbus.descriptors import ToolDescriptor, default_tools_path, load_tools
from toolbus.errors import DescriptorError

REPO = Path(__file__).resolve().parent.parent
FIXTURES = "tests.fixtures"  # importable: the tests run from the repository root

# --------------------------------------------------------------------------------------------------
# Helpers


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tools.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(path: Path, **kwargs) -> DescriptorError:
    with pytest.raises(DescriptorError) as info:
        load_tools(path, **kwargs)
    return info.value


def the_problem(error: DescriptorError, path: Path, tool: str, fields, reason: str) -> str:
    """The reported problem of ``tool`` about one of ``fields`` that says ``reason`` (a regex): it names
    the file, the tool and the field, and it is part of the error's message. Returned without the file
    path (which may contain any word)."""
    fields = (fields,) if isinstance(fields, str) else fields
    assert all(p in str(error) for p in error.problems)
    for p in error.problems:
        if str(path) not in p:
            continue
        rest = p.replace(str(path), "")
        if not re.search(rf"(?<![\w.-]){re.escape(tool)}(?![\w.-])", rest):
            continue
        if fields and not any(f in rest for f in fields):
            continue
        if re.search(reason, rest, re.IGNORECASE):
            return rest
    raise AssertionError(
        f"no problem of tool {tool!r}, field {fields!r}, saying {reason!r} in {error.problems!r}"
    )


def assert_reported(path: Path, tool: str, fields, reason: str, **kwargs) -> str:
    return the_problem(load_error(path, **kwargs), path, tool, fields, reason)


def one_tool(tmp_path: Path, body: str, name: str = "mytool") -> Path:
    return write(tmp_path, f"[tool.{name}]\n" + textwrap.dedent(body))


EXTERNAL = """\
tool_name = "{python} -m mypackage.mytool"
host_name = "localhost"
function_signatures = ["eval(compute(<str>), <int>)"]
"""


def internal(tmp_path: Path, ref: str, signatures: list[str], name: str = "texts") -> Path:
    sigs = ", ".join(f'"{s}"' for s in signatures)
    return one_tool(
        tmp_path,
        f'tool_name = "{ref}"\nhost_name = "ToolBus"\nfunction_signatures = [{sigs}]\n',
        name=name,
    )


TEXT_SIGNATURES = ["eval(get-text(<int>), <str>)"]

# --------------------------------------------------------------------------------------------------
# The repository's tools.toml


def test_repository_tools_toml_loads_with_class_checks():
    tools = load_tools(REPO / "tools.toml", check_classes=True)
    declared = tomllib.loads((REPO / "tools.toml").read_text(encoding="utf-8"))["tool"]
    assert set(tools) == set(declared)
    assert all(isinstance(d, ToolDescriptor) for d in tools.values())


def test_descriptor_fields_are_the_seeds_fields_snake_cased():
    tools = load_tools(REPO / "tools.toml")
    declared = tomllib.loads((REPO / "tools.toml").read_text(encoding="utf-8"))["tool"]
    for name, spec in declared.items():
        d = tools[name]
        assert d.name == name
        assert d.tool_name == spec["tool_name"]
        assert d.host_name == spec["host_name"]
        assert d.restart_frequency == spec.get("restart_frequency", 0)
        assert list(d.function_signatures) == spec["function_signatures"]


def test_calc_descriptor_is_the_specs_example():
    calc = load_tools(REPO / "tools.toml")["calc"]
    assert calc.tool_name == "examples.tools.calc:Calc"
    assert calc.host_name == "ToolBus"
    assert calc.restart_frequency == 0
    assert list(calc.function_signatures) == ["eval(compute(<str>), <int>)", "do(store(<str>, <int>))"]


def test_descriptor_carries_its_parsed_signatures():
    calc = load_tools(REPO / "tools.toml")["calc"]
    assert calc.signatures.check_eval(parse('compute("1+2")')).text == "eval(compute(<str>), <int>)"
    assert calc.signatures.check_do(parse('store("x", 1)')).text == "do(store(<str>, <int>))"


def test_host_name_toolbus_means_internal():
    tools = load_tools(REPO / "tools.toml")
    assert tools["calc"].internal
    assert tools["echo"].internal
    assert not tools["clock"].internal


def test_each_tool_has_its_own_queue_named_after_it():
    tools = load_tools(REPO / "tools.toml")
    assert tools["calc"].queue == "toolbus.calc"
    assert tools["clock"].queue == "toolbus.clock"


def test_python_in_a_command_line_is_the_running_interpreter():
    clock = load_tools(REPO / "tools.toml")["clock"]
    assert clock.command == [sys.executable, "-m", "examples.tools.clock"]


def test_command_line_is_split_like_a_shell_does(tmp_path):
    path = one_tool(
        tmp_path,
        """\
        tool_name = '''{python} -m pkg.tool "two words" 'single quoted' a\\ b'''
        host_name = "localhost"
        function_signatures = ["do(f)"]
        """,
    )
    command = load_tools(path)["mytool"].command
    assert command == [sys.executable, "-m", "pkg.tool", "two words", "single quoted", "a b"]


def test_command_line_is_not_run_by_a_shell(tmp_path):
    path = one_tool(
        tmp_path,
        """\
        tool_name = "mytool $HOME a;b > out"
        host_name = "localhost"
        function_signatures = ["do(f)"]
        """,
    )
    assert load_tools(path)["mytool"].command == ["mytool", "$HOME", "a;b", ">", "out"]


def test_restart_frequency_defaults_to_0(tmp_path):
    path = one_tool(tmp_path, EXTERNAL)
    assert load_tools(path)["mytool"].restart_frequency == 0


def test_positive_restart_frequency_is_kept(tmp_path):
    path = one_tool(tmp_path, EXTERNAL + "restart_frequency = 5\n")
    assert load_tools(path)["mytool"].restart_frequency == 5


def test_signatures_may_share_a_name_when_their_arities_differ(tmp_path):
    path = one_tool(
        tmp_path,
        """\
        tool_name = "mytool"
        host_name = "localhost"
        function_signatures = ["eval(f(<int>), <int>)", "eval(f(<int>, <int>), <int>)", "do(f)"]
        """,
    )
    sigs = load_tools(path)["mytool"].signatures
    assert sigs.check_eval(parse("f(1, 2)")).text == "eval(f(<int>, <int>), <int>)"


def test_an_empty_file_declares_no_tools(tmp_path):
    assert load_tools(write(tmp_path, "")) == {}


# --------------------------------------------------------------------------------------------------
# Where the file is found


def test_tools_file_comes_from_the_toolcall_tools_environment_variable(tmp_path, monkeypatch):
    path = one_tool(tmp_path, EXTERNAL)
    monkeypatch.setenv("TOOLCALL_TOOLS", str(path))
    assert Path(default_tools_path()) == path
    assert set(load_tools()) == {"mytool"}


def test_tools_file_defaults_to_tools_toml_at_the_repository_root(monkeypatch):
    monkeypatch.delenv("TOOLCALL_TOOLS", raising=False)
    assert Path(default_tools_path()).resolve() == REPO / "tools.toml"
    assert set(load_tools()) == set(load_tools(REPO / "tools.toml"))


# --------------------------------------------------------------------------------------------------
# Internal tool classes


def test_internal_tool_whose_methods_fit_its_signatures_loads(tmp_path):
    path = internal(
        tmp_path,
        f"{FIXTURES}.text_tools:TextTool",
        ["eval(get-text(<int>), <str>)", "do(set-text(<int>, <str>))"],
    )
    assert load_tools(path, check_classes=True)["texts"].internal


def test_internal_tool_class_may_take_the_bus_as_argument(tmp_path):
    path = internal(tmp_path, f"{FIXTURES}.text_tools:TextToolWithBus", TEXT_SIGNATURES)
    assert set(load_tools(path, check_classes=True)) == {"texts"}


def test_check_classes_false_does_not_import_the_module(tmp_path):
    path = write(
        tmp_path,
        f"""\
        [tool.ghost]
        tool_name = "no_such_module_for_toolbus_tests:Ghost"
        host_name = "ToolBus"
        function_signatures = ["eval(get-text(<int>), <str>)"]

        [tool.broken]
        tool_name = "{FIXTURES}.broken_module:Tool"
        host_name = "ToolBus"
        function_signatures = ["eval(get-text(<int>), <str>)"]
        """,
    )
    tools = load_tools(path, check_classes=False)
    assert set(tools) == {"ghost", "broken"}
    assert "no_such_module_for_toolbus_tests" not in sys.modules
    assert f"{FIXTURES}.broken_module" not in sys.modules


def test_check_classes_false_still_checks_everything_else(tmp_path):
    path = internal(tmp_path, "no_such_module_for_toolbus_tests:Ghost", ["eval(f(<int>), <int>"])
    assert_reported(
        path, "texts", "function_signatures", re.escape("eval(f(<int>), <int>"), check_classes=False
    )


# --------------------------------------------------------------------------------------------------
# Problems: one of each kind, each naming the file, the tool, the field and what is wrong


@pytest.mark.parametrize("field", ["tool_name", "host_name", "function_signatures"])
def test_missing_required_field_is_reported(tmp_path, field):
    body = "".join(line + "\n" for line in EXTERNAL.splitlines() if not line.startswith(field))
    path = one_tool(tmp_path, body)
    assert_reported(path, "mytool", field, r"missing|required")


def test_unknown_field_is_reported(tmp_path):
    path = one_tool(tmp_path, EXTERNAL + 'colour = "red"\n')
    assert_reported(path, "mytool", "colour", r"unknown")


@pytest.mark.parametrize(("field", "value"), [("internal", "true"), ("kind", '"java"')])
def test_removed_seed_fields_are_unknown_with_a_hint(tmp_path, field, value):
    path = one_tool(tmp_path, EXTERNAL + f"{field} = {value}\n")
    problem = assert_reported(path, "mytool", field, r"unknown|removed")
    assert "host_name" in problem
    assert "ToolBus" in problem


@pytest.mark.parametrize("value", ["42", "true", '["mytool"]'])
def test_tool_name_that_is_not_a_string_is_reported(tmp_path, value):
    path = one_tool(
        tmp_path,
        f'tool_name = {value}\nhost_name = "localhost"\nfunction_signatures = ["do(f)"]\n',
    )
    assert_reported(path, "mytool", "tool_name", r"string")


def test_host_name_that_is_not_a_string_is_reported(tmp_path):
    path = one_tool(tmp_path, 'tool_name = "mytool"\nhost_name = 1\nfunction_signatures = ["do(f)"]\n')
    assert_reported(path, "mytool", "host_name", r"string")


@pytest.mark.parametrize("value", ['"10"', "true", "1.5", "[1]"])
def test_restart_frequency_that_is_not_an_integer_is_reported(tmp_path, value):
    path = one_tool(tmp_path, EXTERNAL + f"restart_frequency = {value}\n")
    assert_reported(path, "mytool", "restart_frequency", r"int")


def test_negative_restart_frequency_is_reported(tmp_path):
    path = one_tool(tmp_path, EXTERNAL + "restart_frequency = -1\n")
    assert_reported(path, "mytool", "restart_frequency", r"negative|-1|positive|>= ?0")


def test_function_signatures_that_is_not_a_list_is_reported(tmp_path):
    path = one_tool(
        tmp_path, 'tool_name = "mytool"\nhost_name = "localhost"\nfunction_signatures = "do(f)"\n'
    )
    assert_reported(path, "mytool", "function_signatures", r"list")


def test_function_signatures_with_a_non_string_is_reported(tmp_path):
    path = one_tool(
        tmp_path, 'tool_name = "mytool"\nhost_name = "localhost"\nfunction_signatures = ["do(f)", 1]\n'
    )
    assert_reported(path, "mytool", "function_signatures", r"string")


@pytest.mark.parametrize(
    "signature", ["eval(compute(<str>), <int>", "call(f)", "eval(f)", "eval(f(X?), <int>)", "do(f(<g(a)>))"]
)
def test_unparsable_signature_is_reported_with_its_text(tmp_path, signature):
    path = one_tool(
        tmp_path,
        f'tool_name = "mytool"\nhost_name = "localhost"\nfunction_signatures = ["do(ok)", "{signature}"]\n',
    )
    assert_reported(path, "mytool", "function_signatures", re.escape(signature))


@pytest.mark.parametrize(
    "signatures",
    [
        ["eval(compute(<str>), <int>)", "eval(compute(<int>), <str>)"],
        ["eval(compute(<str>), <int>)", "do(compute(<int>))"],
        ["do(store(<str>, <int>))", "do(store(<int>, <str>))"],
    ],
)
def test_duplicate_signature_name_and_arity_is_reported(tmp_path, signatures):
    sigs = ", ".join(f'"{s}"' for s in signatures)
    path = one_tool(
        tmp_path, f'tool_name = "mytool"\nhost_name = "localhost"\nfunction_signatures = [{sigs}]\n'
    )
    problem = assert_reported(path, "mytool", "function_signatures", r"same|duplicate|twice|already")
    assert parse(signatures[0]).args[0].name in problem


@pytest.mark.parametrize("name", ["my tool", "1calc", "calc.v2", "_calc", "über"])
def test_tool_name_that_is_not_an_aterm_identifier_is_reported(tmp_path, name):
    path = write(tmp_path, f'[tool."{name}"]\n' + EXTERNAL)
    assert_reported(path, name, None, r"identifier")


@pytest.mark.parametrize(
    "module",
    [
        "no_such_module_for_toolbus_tests",
        f"{FIXTURES}.no_such_module",
        f"{FIXTURES}.broken_module",  # raises RuntimeError when imported
        f"{FIXTURES}.exiting_module",  # calls sys.exit() when imported
    ],
)
def test_internal_tool_whose_module_cannot_be_imported_is_reported(tmp_path, module):
    path = internal(tmp_path, f"{module}:Tool", TEXT_SIGNATURES)
    problem = assert_reported(path, "texts", "tool_name", r"import")
    assert module in problem


def test_an_internal_tool_module_next_to_the_tools_file_names_the_pythonpath_to_set(tmp_path, monkeypatch):
    """Modules are imported from the Python path, not from the tools file's directory: the problem says
    which PYTHONPATH makes the module importable, keeping what PYTHONPATH holds now."""
    package = tmp_path / "uxtools_beside_the_file"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "texts.py").write_text("class Tool:\n    def get_text(self, n):\n        return str(n)\n")
    monkeypatch.setenv("PYTHONPATH", "/opt/elsewhere")
    path = internal(tmp_path, "uxtools_beside_the_file.texts:Tool", TEXT_SIGNATURES)
    problem = assert_reported(path, "texts", "tool_name", r"cannot import")
    assert "'uxtools_beside_the_file.texts'" in problem
    assert f"PYTHONPATH={tmp_path}{os.pathsep}/opt/elsewhere" in problem


def test_an_internal_tool_module_found_nowhere_says_to_add_its_directory_to_pythonpath(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)
    path = internal(tmp_path, "no_such_package_for_toolbus_tests.texts:Tool", TEXT_SIGNATURES)
    problem = assert_reported(path, "texts", "tool_name", r"cannot import")
    assert "'no_such_package_for_toolbus_tests.texts'" in problem
    assert "PYTHONPATH" in problem and "no_such_package_for_toolbus_tests" in problem
    assert "PYTHONPATH is not set" in problem


def test_an_internal_tool_module_whose_own_import_is_missing_names_that_dependency(tmp_path):
    path = internal(tmp_path, f"{FIXTURES}.missing_dependency_module:Tool", TEXT_SIGNATURES)
    problem = assert_reported(path, "texts", "tool_name", r"cannot import")
    assert f"'{FIXTURES}.missing_dependency_module'" in problem
    assert "imports 'no_such_dependency_for_toolbus_tests', which is not installed" in problem


@pytest.mark.parametrize("class_name", ["NoSuchClass", "NOT_A_CLASS"])
def test_internal_tool_whose_class_does_not_exist_is_reported(tmp_path, class_name):
    path = internal(tmp_path, f"{FIXTURES}.text_tools:{class_name}", TEXT_SIGNATURES)
    problem = assert_reported(path, "texts", "tool_name", r"\bclass\b")
    assert class_name in problem


def test_internal_tool_without_the_method_for_a_signature_is_reported(tmp_path):
    path = internal(tmp_path, f"{FIXTURES}.text_tools:NoGetText", TEXT_SIGNATURES)
    problem = assert_reported(path, "texts", ("tool_name", "function_signatures"), r"get_text")
    assert "method" in problem


@pytest.mark.parametrize("class_name", ["GetTextTooFewArguments", "GetTextTooManyArguments"])
def test_internal_tool_method_with_the_wrong_number_of_arguments_is_reported(tmp_path, class_name):
    path = internal(tmp_path, f"{FIXTURES}.text_tools:{class_name}", TEXT_SIGNATURES)
    problem = assert_reported(path, "texts", ("tool_name", "function_signatures"), r"\bargument")
    assert "get_text" in problem


@pytest.mark.parametrize(
    "text", ["[tool.calc\n", 'tool_name = "a"\ntool_name = "b"\n', "[tool.calc]\ntool_name = \n", "= 1\n"]
)
def test_invalid_toml_is_reported(tmp_path, text):
    path = write(tmp_path, text)
    message = str(load_error(path))
    assert str(path) in message
    assert "TOML" in message


def test_file_that_is_not_utf8_is_reported_as_invalid_toml(tmp_path):
    path = tmp_path / "tools.toml"
    path.write_bytes(b'[tool.calc]\ntool_name = "caf\xe9"\n')
    message = str(load_error(path))
    assert str(path) in message
    assert "TOML" in message


def test_missing_file_is_reported(tmp_path):
    path = tmp_path / "nowhere" / "tools.toml"
    message = str(load_error(path))
    assert str(path) in message
    assert re.search(r"no such file|not found|does not exist|missing", message, re.IGNORECASE)


# --------------------------------------------------------------------------------------------------
# Every problem at once

SEVERAL_PROBLEMS = f"""\
[tool.alpha]
tool_name = "alpha"
restart_frequency = -3
function_signatures = ["eval(f(<int>), <int>)"]

[tool.beta]
tool_name = "beta"
host_name = "localhost"
kind = "java"
function_signatures = ["eval(f(<int>)"]

[tool.gamma]
tool_name = "{FIXTURES}.text_tools:NoSuchClass"
host_name = "ToolBus"
function_signatures = ["eval(g(<int>), <int>)", "do(g(<str>))"]

[tool.delta]
tool_name = "delta"
host_name = "localhost"
function_signatures = ["do(fine)"]
"""


def test_every_problem_in_every_tool_is_reported_at_once(tmp_path):
    path = write(tmp_path, SEVERAL_PROBLEMS)
    error = load_error(path)
    assert len(error.problems) == 6, error.problems
    the_problem(error, path, "alpha", "host_name", r"missing|required")
    the_problem(error, path, "alpha", "restart_frequency", r"negative|-3|positive")
    the_problem(error, path, "beta", "kind", r"unknown|removed")
    the_problem(error, path, "beta", "function_signatures", re.escape("eval(f(<int>)"))
    the_problem(error, path, "gamma", "function_signatures", r"same|duplicate|twice|already")
    the_problem(error, path, "gamma", "tool_name", r"NoSuchClass")
    assert "delta" not in " ".join(p.replace(str(path), "") for p in error.problems)


def test_every_problem_of_one_tool_is_reported_at_once(tmp_path):
    path = one_tool(
        tmp_path,
        """\
        tool_name = 7
        host_name = "localhost"
        restart_frequency = "often"
        internal = false
        function_signatures = ["do(f)", "do(f(X?))"]
        """,
    )
    error = load_error(path)
    assert len(error.problems) == 4, error.problems
    the_problem(error, path, "mytool", "tool_name", r"string")
    the_problem(error, path, "mytool", "restart_frequency", r"int")
    the_problem(error, path, "mytool", "internal", r"unknown|removed")
    the_problem(error, path, "mytool", "function_signatures", re.escape("do(f(X?))"))
