"""Spec docs/toolbus.md §1.2: canonical printing."""

from __future__ import annotations

import math

import pytest

from toolbus.aterm import MAX_INT_DIGITS, make, parse, term


def test_canonical_text_has_no_whitespace():
    assert str(parse(' f ( 1 , "a" , [ x , 2.5 ] ) ')) == 'f(1,"a",[x,2.5])'
    assert str(parse("f ( a , b )  { [1,2] }")) == "f(a,b){[1,2]}"


def test_zero_arity_unquoted_application_prints_bare():
    assert str(parse("f")) == "f"
    assert str(parse("f()")) == "f"
    assert str(parse("f(g())")) == "f(g)"


def test_zero_arity_quoted_application_prints_with_quotes():
    assert str(parse('"f"')) == '"f"'
    assert str(parse('"f"()')) == '"f"'
    assert str(parse('""')) == '""'


def test_quoted_application_with_arguments():
    assert str(parse('"f" ( a )')) == '"f"(a)'


def test_tuples_print_with_empty_name():
    assert str(parse("( )")) == "()"
    assert str(parse("( 1 )")) == "(1)"
    assert str(parse("(1 , ())")) == "(1,())"


def test_lists_placeholders_and_variables():
    assert str(parse("[ ]")) == "[]"
    assert str(parse("[ 1 , [ ] ]")) == "[1,[]]"
    assert str(parse("< f ( < int > ) >")) == "<f(<int>)>"
    assert str(parse("value( N? )")) == "value(N?)"


def test_ints_print_as_decimal():
    assert str(parse("42L")) == "42"
    assert str(parse("-7")) == "-7"
    assert str(parse("007")) == "7"
    assert str(term(2**200)) == str(2**200)
    assert str(term(-(2**200))) == "-" + str(2**200)


def test_int_at_the_digit_limit_prints_all_its_digits():
    t = term(10**MAX_INT_DIGITS - 1)
    assert str(t) == "9" * MAX_INT_DIGITS and parse(str(t)) == t


def test_int_beyond_the_digit_limit_cannot_be_built():
    # ATerm ints stop where Python's linear-time int/str conversion does (README: choices)
    with pytest.raises(ValueError, match="at most 4300 digits"):
        term(10**MAX_INT_DIGITS)


@pytest.mark.parametrize(
    ("char", "escape"),
    [('"', '\\"'), ("\\", "\\\\"), ("\n", "\\n"), ("\t", "\\t"), ("\r", "\\r"), ("\b", "\\b"), ("\f", "\\f")],
)
def test_quoted_name_escapes_quote_backslash_and_named_controls(char, escape):
    assert str(term(f"a{char}b")) == f'"a{escape}b"'


@pytest.mark.parametrize("code", [c for c in range(32) if chr(c) not in "\n\t\r\b\f"] + [127])
def test_other_control_characters_and_delete_print_as_three_digit_octal(code):
    assert str(term(f"a{chr(code)}b")) == f'"a\\{code:03o}b"'


def test_octal_escape_examples():
    assert str(term("\x00")) == '"\\000"'
    assert str(term("\x1b[0m")) == '"\\033[0m"'
    assert str(term("\x7f")) == '"\\177"'


@pytest.mark.parametrize(
    "char", ["'", " ", "é", "€", "😀", "\x80", "\x9f", "\xa0", "\u2028", "\ufeff", "#", "?"]
)
def test_every_other_character_prints_as_itself(char):
    assert str(term(f"a{char}b")) == f'"a{char}b"'


def test_escaping_applies_to_quoted_function_names_with_arguments():
    assert str(make("<str(<int>)>", 'say "hi"\n', 1)) == '"say \\"hi\\"\\n"(1)'


def test_printed_utf8_text_encodes_as_utf8():
    assert str(term("日本語")).encode("utf-8") == '"日本語"'.encode()


@pytest.mark.parametrize(
    "value",
    [
        0.0,
        -0.0,
        1.0,
        -2.5,
        0.1,
        1 / 3,
        100.0,
        1e16,
        1e22,
        1e-7,
        123456789.123,
        5e-324,
        2.2250738585072014e-308,
        1.7976931348623157e308,
        -1.7976931348623157e308,
    ],
)
def test_real_reparses_as_a_real_with_the_same_float(value):
    text = str(term(value))
    assert "." in text or "e" in text or "E" in text
    again = parse(text)
    assert again.match("<real>") is not None
    assert again.value == value
    assert math.copysign(1.0, again.value) == math.copysign(1.0, value)


def test_integral_real_does_not_print_as_an_int():
    assert parse(str(term(3.0))).match("<real>") == [3.0]
    assert parse(str(term(3.0))) != parse("3")


def test_annotations_print_in_braces_after_the_term():
    assert str(parse("f(x) { a , b }")) == "f(x){a,b}"
    assert str(parse("1{a}")) == "1{a}"
    assert str(parse("2.5{a}")) == "2.5{a}"
    assert str(parse('"s"{a}')) == '"s"{a}'
    assert str(parse("[1]{a}")) == "[1]{a}"
    assert str(parse("<int>{a}")) == "<int>{a}"
    assert str(parse("(){a}")) == "(){a}"
    assert str(parse("f{a}")) == "f{a}"


def test_nested_annotations_print_at_every_depth():
    assert str(parse("f(a{b{c}}){d,[e{f}]}")) == "f(a{b{c}}){d,[e{f}]}"


def test_empty_annotations_do_not_print():
    assert str(parse("abc{}")) == "abc"


@pytest.mark.parametrize(
    "text",
    [
        'f(1,"a",[x,2.5])',
        "f(a{b}){c,d}",
        '"\\000\\n\\"\\\\"(1)',
        "<f(<int>,<list>)>",
        "[X?,value(N?)]",
        "(){a}",
        "(1,(2))",
        "[[],[[]]]",
        "-1.5e-10",
        "12345678901234567890123",
    ],
)
def test_parse_of_printed_text_gives_the_same_term(text):
    t = parse(text)
    assert parse(str(t)) == t
    assert str(parse(str(t))) == str(t)


@pytest.mark.parametrize(
    ("pattern", "name"),
    [("<appl>", "a b"), ("<fun>", "1a"), ("<id>", ""), ("<appl>", "é"), ("<fun>", "f(x)"), ("<id>", "X?")],
)
def test_make_with_a_non_identifier_unquoted_name_is_a_value_error(pattern, name):
    with pytest.raises(ValueError):
        make(pattern, name)


def test_make_with_a_non_identifier_name_of_an_application_is_a_value_error():
    with pytest.raises(ValueError):
        make("<appl(<int>)>", "a b", 1)


def test_make_with_any_quoted_name_is_fine():
    assert str(make("<str>", "a b")) == '"a b"'
