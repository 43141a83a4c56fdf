"""Spec docs/toolbus.md §2: function signatures — reading them, the types, the bus's checks and the Python conversions."""

from __future__ import annotations

import re

import pytest

from toolbus.aterm import parse
from toolbus.errors import SignatureError
from toolbus.signatures import Signatures, conforms, from_python, parse_signature, to_python

# --------------------------------------------------------------------------------------------------
# Helpers

CALC = [
    "eval(compute(<str>), <int>)",
    "do(store(<str>, <int>))",
    "event(show-time(<str>), <term>)",
    "event(alarm(<str>), <int>)",
]


def calc() -> Signatures:
    return Signatures.from_texts("calc", CALC)


def names_signature(message: str, text: str) -> bool:
    """A signature is named by its text as declared, or by its canonical ATerm text."""
    return text in message or str(parse(text)) in message


def signature_error(check, *args) -> str:
    with pytest.raises(SignatureError) as info:
        check(*args)
    return str(info.value)


# --------------------------------------------------------------------------------------------------
# parse_signature: eval, do, event


def test_eval_signature_has_a_call_pattern_and_a_result_type():
    sig = parse_signature("eval(compute(<str>), <int>)")
    assert sig.kind == "eval"
    assert sig.pattern == parse("compute(<str>)")
    assert sig.result == parse("<int>")
    assert (sig.name, sig.arity) == ("compute", 1)


def test_do_signature_has_a_call_pattern_and_no_result():
    sig = parse_signature("do(store(<str>, <int>))")
    assert sig.kind == "do"
    assert sig.pattern == parse("store(<str>,<int>)")
    assert sig.result is None
    assert (sig.name, sig.arity) == ("store", 2)


def test_event_signature_has_an_event_pattern_and_an_ack_type():
    sig = parse_signature("event(show-time(<str>), <term>)")
    assert sig.kind == "event"
    assert sig.pattern == parse("show-time(<str>)")
    assert sig.result == parse("<term>")
    assert (sig.name, sig.arity) == ("show-time", 1)


def test_event_ack_type_may_be_any_type():
    sig = parse_signature("event(alarm(<str>), <list(<int>)>)")
    assert sig.result == parse("<list(<int>)>")


def test_call_pattern_may_have_no_arguments():
    sig = parse_signature("eval(now, <str>)")
    assert (sig.name, sig.arity) == ("now", 0)


def test_call_pattern_may_mix_types_and_literal_terms():
    sig = parse_signature('do(set(mode, 1, "x", [a], <int>))')
    assert sig.pattern == parse('set(mode,1,"x",[a],<int>)')


def test_signature_may_use_list_of_type_and_user_types():
    sig = parse_signature("eval(plan(<list(<list(<int>)>)>, <time>), <date>)")
    assert sig.pattern == parse("plan(<list(<list(<int>)>)>,<time>)")
    assert sig.result == parse("<date>")


def test_signature_text_may_contain_whitespace():
    sig = parse_signature("  eval ( compute ( <str> ) ,  <int> )  ")
    assert sig.pattern == parse("compute(<str>)")
    assert sig.result == parse("<int>")


# --------------------------------------------------------------------------------------------------
# parse_signature: what is not a signature


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        # not an application of eval/do/event
        ("42", r"eval|do|event"),
        ("[eval(f, <int>)]", r"eval|do|event"),
        ('"eval"', r"eval|do|event"),
        ("compute(<str>)", r"eval|do|event"),
        # an unknown kind
        ("call(f)", r"eval|do|event"),
        ("evaluate(f, <int>)", r"eval|do|event"),
        ('"eval"(f, <int>)', r"eval|do|event"),
    ],
)
def test_signature_must_be_eval_do_or_event(text, reason):
    with pytest.raises(ValueError) as info:
        parse_signature(text)
    message = str(info.value)
    assert text in message
    assert re.search(reason, message)


@pytest.mark.parametrize(
    "text",
    [
        "eval(f)",
        "eval(f(<int>), <int>, <int>)",
        "do(f, <int>)",
        "do()",
        "event(e(<int>), <term>, <term>)",
    ],
)
def test_signature_with_wrong_arity_is_rejected(text):
    kind = text.split("(")[0]
    with pytest.raises(ValueError) as info:
        parse_signature(text)
    message = str(info.value)
    assert text in message
    assert f"{kind}(" in message  # says which form was expected


@pytest.mark.parametrize("text", ['eval("f"(<int>), <int>)', 'do("store")', 'event("e"(<str>), <term>)'])
def test_quoted_pattern_is_rejected(text):
    with pytest.raises(ValueError) as info:
        parse_signature(text)
    assert text in str(info.value)
    assert "unquoted" in str(info.value)


@pytest.mark.parametrize("text", ["eval(1, <int>)", "do([f])", "do(<int>)", "event(X?, <term>)"])
def test_pattern_that_is_not_an_application_is_rejected(text):
    with pytest.raises(ValueError) as info:
        parse_signature(text)
    assert text in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "eval(f(X?), <int>)",
        "eval(f(<int>), R?)",
        "do(f(g(X?)))",
        "do(f([1, X?]))",
        "event(e(<str>), A?)",
    ],
)
def test_variables_in_signatures_are_rejected(text):
    with pytest.raises(ValueError) as info:
        parse_signature(text)
    assert text in str(info.value)
    assert "variable" in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "eval(f(<f(a,b)>), <int>)",
        "eval(f(<int(1)>), <int>)",
        "eval(f(<list(<int>,<int>)>), <int>)",
        'eval(f(<"x">), <int>)',
        "eval(f(<1>), <int>)",
        "eval(f(<[int]>), <int>)",
        "eval(f, <g(1)>)",
        "event(e, <list(<f(a)>)>)",
    ],
)
def test_placeholder_that_is_not_a_type_is_rejected(text):
    with pytest.raises(ValueError) as info:
        parse_signature(text)
    assert text in str(info.value)
    assert "type" in str(info.value)


@pytest.mark.parametrize(
    "text",
    ["", "eval(f(<int>), <int>", "eval(f(<int>) <int>)", "eval(f(<int>), <int>) junk", "do(f(<int))"],
)
def test_unparsable_signature_is_a_value_error(text):
    with pytest.raises(ValueError) as info:
        parse_signature(text)
    assert repr(text) in str(info.value) or (text and text in str(info.value))


# --------------------------------------------------------------------------------------------------
# conforms: the built-in types


@pytest.mark.parametrize(
    ("value", "ty", "expected"),
    [
        ("1", "<int>", True),
        ("-5", "<int>", True),
        ("1.0", "<int>", False),
        ('"1"', "<int>", False),
        ("one", "<int>", False),
        ("1.5", "<real>", True),
        ("1e3", "<real>", True),
        ("-0.5", "<real>", True),
        ("1", "<real>", False),
        ('"1.5"', "<real>", False),
        ('"abc"', "<str>", True),
        ('""', "<str>", True),
        ("abc", "<str>", False),
        ('"f"(1)', "<str>", False),
        ("1", "<str>", False),
        ("true", "<bool>", True),
        ("false", "<bool>", True),
        ('"true"', "<bool>", False),
        ("true(1)", "<bool>", False),
        ("yes", "<bool>", False),
        ("1", "<bool>", False),
        ("1", "<term>", True),
        ("2.5", "<term>", True),
        ('"s"', "<term>", True),
        ("f(x, [1])", "<term>", True),
        ("[]", "<term>", True),
        ("<int>", "<term>", True),
        ("[]", "<list>", True),
        ('[1, a, "s"]', "<list>", True),
        ("f", "<list>", False),
        ('"[]"', "<list>", False),
        ("1", "<list>", False),
    ],
)
def test_builtin_types(value, ty, expected):
    assert conforms(parse(value), parse(ty)) is expected


@pytest.mark.parametrize(
    ("value", "ty"),
    [
        ("1{a}", "<int>"),
        ("2.5{a}", "<real>"),
        ('"s"{a}', "<str>"),
        ("true{a}", "<bool>"),
        ("[1]{a}", "<list>"),
    ],
)
def test_types_ignore_annotations(value, ty):
    assert conforms(parse(value), parse(ty))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("[]", True),
        ("[1]", True),
        ("[1, 2, 3]", True),
        ('[1, "2"]', False),
        ("[1, 2.0]", False),
        ("1", False),
    ],
)
def test_list_of_type_needs_every_element_of_that_type(value, expected):
    assert conforms(parse(value), parse("<list(<int>)>")) is expected


def test_list_of_type_is_not_an_application():
    assert not conforms(parse("f(1, 2)"), parse("<list(<int>)>"))
    assert not conforms(parse("list(1)"), parse("<list(<int>)>"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("[]", True),
        ("[[]]", True),
        ("[[1], [], [2, 3]]", True),
        ("[[1], [a]]", False),
        ("[1]", False),
        ("[[[1]]]", False),
    ],
)
def test_nested_list_of_list_of_int(value, expected):
    assert conforms(parse(value), parse("<list(<list(<int>)>)>")) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [('["a", "b"]', True), ('["a", b]', False)],
)
def test_list_of_str(value, expected):
    assert conforms(parse(value), parse("<list(<str>)>")) is expected


# --------------------------------------------------------------------------------------------------
# conforms: user types


@pytest.mark.parametrize("value", ["time(12, 30)", "time", "time(1)", "time(a, b, c)", "time(12,30){x}"])
def test_user_type_matches_an_unquoted_application_of_that_name_of_any_arity(value):
    assert conforms(parse(value), parse("<time>"))


@pytest.mark.parametrize("value", ['"time"', '"time"(12, 30)', "date(1)", "times(1)", "[time]", "1"])
def test_user_type_matches_nothing_else(value):
    assert not conforms(parse(value), parse("<time>"))


# --------------------------------------------------------------------------------------------------
# conforms: literal parts of a pattern


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('f(a, 1, "s", [b], 7)', True),
        ('f(b, 1, "s", [b], 7)', False),
        ('f(a, 2, "s", [b], 7)', False),
        ('f(a, 1, "t", [b], 7)', False),
        ('f(a, 1, "s", [c], 7)', False),
        ('f(a, 1, "s", [b], x)', False),
        ('f(a, 1, "s", [b])', False),
        ('f(a, 1, "s", [b], 7, 8)', False),
        ('g(a, 1, "s", [b], 7)', False),
        ('"f"(a, 1, "s", [b], 7)', False),
    ],
)
def test_literal_arguments_must_be_equal(value, expected):
    assert conforms(parse(value), parse('f(a, 1, "s", [b], <int>)')) is expected


def test_literal_in_a_list_must_be_equal():
    assert conforms(parse("[a, 3]"), parse("[a, <int>]"))
    assert not conforms(parse("[b, 3]"), parse("[a, <int>]"))
    assert not conforms(parse("[a]"), parse("[a, <int>]"))


def test_literals_ignore_annotations_of_the_value():
    assert conforms(parse("f(a{x}, 1{y}, g(b{z}){w}){v}"), parse("f(a, 1, g(b))"))


def test_literals_ignore_annotations_of_the_pattern():
    assert conforms(parse("f(a, 1, g(b))"), parse("f(a{x}, 1{y}, g(b{z}){w}){v}"))


# --------------------------------------------------------------------------------------------------
# Signatures: the checks the bus makes


def test_check_eval_accepts_a_call_that_fits_and_gives_its_signature():
    sig = calc().check_eval(parse('compute("1+2")'))
    assert sig.text == "eval(compute(<str>), <int>)"


@pytest.mark.parametrize(
    "call", ["compute(1)", "compute", 'compute("1", "2")', 'computer("1")', 'store("x", 1)']
)
def test_check_eval_rejects_a_call_that_fits_no_eval(call):
    with pytest.raises(SignatureError):
        calc().check_eval(parse(call))


def test_check_do_accepts_a_call_that_fits_and_gives_its_signature():
    sig = calc().check_do(parse('store("x", 1)'))
    assert sig.text == "do(store(<str>, <int>))"


@pytest.mark.parametrize(
    "call", ['store("x", "1")', 'store("x")', "store(x, 1)", 'compute("1")', 'stor("x", 1)']
)
def test_check_do_rejects_a_call_that_fits_no_do(call):
    with pytest.raises(SignatureError):
        calc().check_do(parse(call))


def test_check_event_accepts_an_event_that_fits_and_gives_its_signature():
    assert calc().check_event(parse('show-time("12:30")')).text == "event(show-time(<str>), <term>)"
    assert calc().check_event(parse('alarm("wake")')).text == "event(alarm(<str>), <int>)"


@pytest.mark.parametrize(
    "event", ["show-time(1230)", "show-time", "other-event", 'compute("1")', 'store("x", 1)']
)
def test_check_event_rejects_an_event_that_fits_no_event_signature(event):
    with pytest.raises(SignatureError):
        calc().check_event(parse(event))


def test_check_value_accepts_a_value_of_the_result_type():
    sigs = calc()
    sig = sigs.check_eval(parse('compute("1+2")'))
    sigs.check_value(sig, parse("3"))


@pytest.mark.parametrize("value", ['"3"', "3.0", "three", "[3]"])
def test_check_value_rejects_a_value_of_another_type(value):
    sigs = calc()
    sig = sigs.check_eval(parse('compute("1+2")'))
    with pytest.raises(SignatureError):
        sigs.check_value(sig, parse(value))


def test_check_ack_accepts_an_ack_of_the_ack_type():
    sigs = calc()
    sigs.check_ack(sigs.check_event(parse('alarm("wake")')), parse("1"))
    sigs.check_ack(sigs.check_event(parse('show-time("12:30")')), parse("f(anything, [1])"))


@pytest.mark.parametrize("ack", ['"1"', "1.0", "ok"])
def test_check_ack_rejects_an_ack_of_another_type(ack):
    sigs = calc()
    sig = sigs.check_event(parse('alarm("wake")'))
    with pytest.raises(SignatureError):
        sigs.check_ack(sig, parse(ack))


def test_checks_use_user_types_and_lists_of_types():
    sigs = Signatures.from_texts("planner", ["eval(plan(<list(<time>)>), <list(<list(<int>)>)>)"])
    sig = sigs.check_eval(parse("plan([time(9, 0), time])"))
    sigs.check_value(sig, parse("[[1], []]"))
    with pytest.raises(SignatureError):
        sigs.check_eval(parse("plan([time(9, 0), date(1)])"))
    with pytest.raises(SignatureError):
        sigs.check_value(sig, parse("[1]"))


# --------------------------------------------------------------------------------------------------
# Signatures: several signatures with one name


SHARED_NAME = ["eval(f(<int>), <int>)", "eval(f(<int>, <int>), <str>)", "do(f(<str>, <str>, <str>))"]


def test_signatures_sharing_a_name_with_different_arities_are_each_found():
    sigs = Signatures.from_texts("multi", SHARED_NAME)
    assert sigs.check_eval(parse("f(1)")).text == SHARED_NAME[0]
    assert sigs.check_eval(parse("f(1, 2)")).text == SHARED_NAME[1]
    assert sigs.check_do(parse('f("a", "b", "c")')).text == SHARED_NAME[2]


def test_each_signature_sharing_a_name_checks_its_own_result_type():
    sigs = Signatures.from_texts("multi", SHARED_NAME)
    sigs.check_value(sigs.check_eval(parse("f(1)")), parse("1"))
    sigs.check_value(sigs.check_eval(parse("f(1, 2)")), parse('"x"'))
    with pytest.raises(SignatureError):
        sigs.check_value(sigs.check_eval(parse("f(1, 2)")), parse("1"))


def test_signatures_sharing_a_name_reject_an_arity_none_declares():
    sigs = Signatures.from_texts("multi", SHARED_NAME)
    with pytest.raises(SignatureError):
        sigs.check_eval(parse("f"))
    with pytest.raises(SignatureError):
        sigs.check_eval(parse("f(1, 2, 3)"))


# --------------------------------------------------------------------------------------------------
# SignatureError: names the tool, the term and the closest signature


def test_rejected_eval_names_the_tool_the_call_and_the_signature():
    message = signature_error(calc().check_eval, parse("compute(42)"))
    assert "calc" in message
    assert "compute(42)" in message
    assert names_signature(message, "eval(compute(<str>), <int>)")


def test_rejected_do_names_the_tool_the_call_and_the_signature():
    message = signature_error(calc().check_do, parse('store("x", "y")'))
    assert "calc" in message
    assert 'store("x","y")' in message
    assert names_signature(message, "do(store(<str>, <int>))")


def test_rejected_event_names_the_tool_the_event_and_the_signature():
    message = signature_error(calc().check_event, parse("alarm(7)"))
    assert "calc" in message
    assert "alarm(7)" in message
    assert names_signature(message, "event(alarm(<str>), <int>)")


def test_rejected_value_names_the_tool_the_value_and_the_signature():
    sigs = calc()
    sig = sigs.check_eval(parse('compute("1")'))
    message = signature_error(sigs.check_value, sig, parse('"not a number"'))
    assert "calc" in message
    assert '"not a number"' in message
    assert names_signature(message, "eval(compute(<str>), <int>)")


def test_rejected_ack_names_the_tool_the_ack_and_the_signature():
    sigs = calc()
    sig = sigs.check_event(parse('alarm("wake")'))
    message = signature_error(sigs.check_ack, sig, parse("not-an-int"))
    assert "calc" in message
    assert "not-an-int" in message
    assert names_signature(message, "event(alarm(<str>), <int>)")


def test_closest_signature_is_the_one_with_the_same_name_even_if_declared_second():
    first, second = "eval(compute(<str>), <int>)", "eval(compare(<int>, <int>), <bool>)"
    sigs = Signatures.from_texts("calc", [first, second])
    message = signature_error(sigs.check_eval, parse('compare("a", "b")'))
    assert names_signature(message, second)
    assert not names_signature(message, first)


def test_closest_signature_has_the_same_name_even_with_another_arity():
    first, second = "eval(compute(<str>), <int>)", "eval(convert(<str>), <int>)"
    sigs = Signatures.from_texts("calc", [first, second])
    message = signature_error(sigs.check_eval, parse('convert("a", "b")'))
    assert names_signature(message, second)
    assert not names_signature(message, first)


def test_closest_do_signature_is_the_one_with_the_same_name_even_if_declared_second():
    first, second = "do(store(<str>, <int>))", "do(stop(<int>))"
    sigs = Signatures.from_texts("calc", [first, second])
    message = signature_error(sigs.check_do, parse('stop("now")'))
    assert names_signature(message, second)
    assert not names_signature(message, first)


def test_closest_event_signature_is_the_one_with_the_same_name_even_if_declared_second():
    first, second = "event(show-time(<str>), <term>)", "event(show(<int>), <term>)"
    sigs = Signatures.from_texts("clock", [first, second])
    message = signature_error(sigs.check_event, parse("show(a, b)"))
    assert names_signature(message, second)
    assert not names_signature(message, first)


@pytest.mark.parametrize(
    ("check", "call", "same_name"),
    [
        ("check_eval", 'store("x", 1)', "do(store(<str>, <int>))"),
        ("check_do", 'compute("1")', "eval(compute(<str>), <int>)"),
    ],
)
def test_closest_signature_with_the_same_name_may_be_of_another_kind(check, call, same_name):
    message = signature_error(getattr(calc(), check), parse(call))
    assert names_signature(message, same_name)


# --------------------------------------------------------------------------------------------------
# Open terms are never sent to a tool

OPEN = ["eval(show(<term>), <term>)", "do(put(<term>))", "event(e(<term>), <term>)"]


def test_open_eval_call_is_rejected():
    message = signature_error(Signatures.from_texts("viewer", OPEN).check_eval, parse("show(X?)"))
    assert "viewer" in message


def test_open_do_call_is_rejected():
    message = signature_error(Signatures.from_texts("viewer", OPEN).check_do, parse("put(f([1, X?]))"))
    assert "viewer" in message


def test_open_ack_is_rejected():
    sigs = Signatures.from_texts("viewer", OPEN)
    sig = sigs.check_event(parse("e(1)"))
    message = signature_error(sigs.check_ack, sig, parse("ack(R?)"))
    assert "viewer" in message


def test_closed_terms_with_a_term_type_are_accepted():
    sigs = Signatures.from_texts("viewer", OPEN)
    sigs.check_eval(parse("show(f(x))"))
    sigs.check_do(parse("put([1, 2])"))
    sigs.check_ack(sigs.check_event(parse("e(1)")), parse("ack(2)"))


# --------------------------------------------------------------------------------------------------
# to_python / from_python


@pytest.mark.parametrize(
    ("text", "ty", "expected"),
    [
        ("42", "<int>", 42),
        ("-7", "<int>", -7),
        ("2.5", "<real>", 2.5),
        ('"abc"', "<str>", "abc"),
        ('""', "<str>", ""),
        ("true", "<bool>", True),
        ("false", "<bool>", False),
        ("[1, 2, 3]", "<list(<int>)>", [1, 2, 3]),
        ("[]", "<list(<int>)>", []),
        ('[["a"], [], ["b", "c"]]', "<list(<list(<str>)>)>", [["a"], [], ["b", "c"]]),
        ("[true, false]", "<list(<bool>)>", [True, False]),
    ],
)
def test_to_python_converts_by_type(text, ty, expected):
    value = to_python(parse(text), parse(ty))
    assert value == expected
    assert type(value) is type(expected)


def test_to_python_of_a_list_of_reals_gives_floats():
    value = to_python(parse("[1.5, 2.0]"), parse("<list(<real>)>"))
    assert value == [1.5, 2.0]
    assert all(type(v) is float for v in value)


@pytest.mark.parametrize(
    ("text", "ty"),
    [
        ("f(x, [1])", "<term>"),
        ("1", "<term>"),
        ('"s"', "<term>"),
        ("[1, a]", "<list>"),
        ("time(12, 30)", "<time>"),
        ("time", "<time>"),
    ],
)
def test_to_python_of_term_list_and_user_types_is_the_aterm_itself(text, ty):
    t = parse(text)
    assert to_python(t, parse(ty)) == t


def test_to_python_of_a_list_of_terms_gives_the_element_aterms():
    assert to_python(parse("[a, f(1)]"), parse("<list(<term>)>")) == [parse("a"), parse("f(1)")]


@pytest.mark.parametrize(
    ("value", "ty", "expected"),
    [
        (42, "<int>", "42"),
        (2.5, "<real>", "2.5"),
        ("abc", "<str>", '"abc"'),
        (True, "<bool>", "true"),
        (False, "<bool>", "false"),
        ([1, 2], "<list(<int>)>", "[1,2]"),
        ([], "<list(<int>)>", "[]"),
        ([["a"], []], "<list(<list(<str>)>)>", '[["a"],[]]'),
    ],
)
def test_from_python_converts_by_type(value, ty, expected):
    t = from_python(value, parse(ty))
    assert t == parse(expected)
    assert conforms(t, parse(ty))


def test_from_python_of_an_int_for_a_real_result_gives_a_real():
    t = from_python(3, parse("<real>"))
    assert t == parse("3.0")
    assert conforms(t, parse("<real>"))


def test_from_python_of_ints_for_a_list_of_reals_gives_reals():
    t = from_python([1, 2], parse("<list(<real>)>"))
    assert t == parse("[1.0,2.0]")
    assert conforms(t, parse("<list(<real>)>"))


@pytest.mark.parametrize(
    ("text", "ty"), [("f(x)", "<term>"), ("[1, a]", "<list>"), ("time(12, 30)", "<time>")]
)
def test_from_python_of_an_aterm_is_the_aterm_itself(text, ty):
    t = parse(text)
    assert from_python(t, parse(ty)) == t


@pytest.mark.parametrize(
    ("text", "ty"),
    [
        ("42", "<int>"),
        ("2.5", "<real>"),
        ('"abc"', "<str>"),
        ("true", "<bool>"),
        ("[[1], [2, 3]]", "<list(<list(<int>)>)>"),
        ("f(x)", "<term>"),
        ("time(1, 2)", "<time>"),
    ],
)
def test_to_python_and_from_python_round_trip(text, ty):
    t = parse(text)
    assert from_python(to_python(t, parse(ty)), parse(ty)) == t
