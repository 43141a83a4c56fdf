"""Spec docs/toolbus.md §1.1: the text syntax of ATerms, and the ParseError of docs/toolbus.md §1.3 for everything outside it."""

from __future__ import annotations

import pytest

from toolbus.aterm import ParseError, make, parse, term

# --------------------------------------------------------------------------------------------------
# Helpers


def kind(t) -> str:
    """The kind of a term, found out through the public match API only."""
    for k in ("int", "real", "list", "placeholder"):
        if t.match(f"<{k}>") is not None:
            return k
    if t.match("<str>") is not None or t.match("<str(<list>)>") is not None:
        return "quoted"
    if t.match("<appl>") is not None or t.match("<appl(<list>)>") is not None:
        return "appl"
    return "other"


def parse_error(text: str) -> ParseError:
    with pytest.raises(ParseError) as info:
        parse(text)
    return info.value


# --------------------------------------------------------------------------------------------------
# int


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("42", 42), ("-7", -7), ("007", 7), ("-0", 0), ("9" * 60, int("9" * 60))],
)
def test_int_is_optional_minus_then_digits(text, value):
    t = parse(text)
    assert kind(t) == "int"
    assert t.value == value
    assert type(t.value) is int


@pytest.mark.parametrize(("text", "value"), [("42L", 42), ("42l", 42), ("-3L", -3), ("0L", 0)])
def test_int_accepts_long_suffix_and_value_is_python_int(text, value):
    t = parse(text)
    assert t == parse(str(value))
    assert t.value == value
    assert type(t.value) is int


def test_int_of_more_than_4300_digits_is_a_parse_error():
    # Python's int/str conversion limit, kept so that parsing stays linear (README: choices)
    with pytest.raises(ParseError, match="at most 4300 digits"):
        parse("1" + "0" * 5000)


@pytest.mark.parametrize("text", ["²", "٣", "１", "f(١٢)", "[٣]"])
def test_non_ascii_digits_are_a_parse_error(text):
    parse_error(text)


# --------------------------------------------------------------------------------------------------
# real


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2.5", 2.5),
        ("-2.5", -2.5),
        ("0.0", 0.0),
        ("1e3", 1000.0),
        ("1E3", 1000.0),
        ("1e+3", 1000.0),
        ("1e-3", 0.001),
        ("1.5e10", 1.5e10),
        ("-1.5E-10", -1.5e-10),
        ("1.0E10", 1e10),
        ("5e-324", 5e-324),
        ("1.7976931348623157e308", 1.7976931348623157e308),
    ],
)
def test_real_needs_a_dot_or_an_exponent(text, value):
    t = parse(text)
    assert kind(t) == "real"
    assert t.value == value
    assert type(t.value) is float


@pytest.mark.parametrize(
    "text", ["1.", ".5", "1e", "1e+", "1.e5", "1.5L", "--1", "+1", "-", "1.5.5", "1e5.0"]
)
def test_malformed_number_is_a_parse_error(text):
    parse_error(text)


def test_real_overflowing_to_infinity_is_a_parse_error():
    e = parse_error("1e999")
    assert e.position == 0
    assert "real" in str(e)


def test_real_overflow_inside_a_term_points_at_the_number():
    e = parse_error("f(a, -1e999)")
    assert e.position == 5


# --------------------------------------------------------------------------------------------------
# appl, identifiers, quoted symbols


@pytest.mark.parametrize("name", ["a", "abc", "Abc", "a1", "a_b", "a-b", "a+b", "a*b", "a$b", "x_-+*$9"])
def test_identifier_is_letter_then_letters_digits_and_specials(name):
    t = parse(name)
    assert kind(t) == "appl"
    assert (t.name, t.arity, t.quoted) == (name, 0, False)


@pytest.mark.parametrize("text", ["_a", "1a", "é", "aé", "a.b", "$a"])
def test_non_identifier_is_a_parse_error(text):
    parse_error(text)


def test_appl_with_arguments():
    t = parse("f(1,a,[b])")
    assert (t.name, t.arity, t.quoted) == ("f", 3, False)
    assert t.args == (parse("1"), parse("a"), parse("[b]"))


def test_empty_parentheses_are_the_same_term_as_the_bare_name():
    assert parse("f()") == parse("f")
    assert parse("f ( )") == parse("f")
    assert parse('"f"()') == parse('"f"')


def test_quoted_symbol_without_arguments_is_a_string():
    t = parse('"abc"')
    assert kind(t) == "quoted"
    assert (t.name, t.arity, t.quoted) == ("abc", 0, True)
    assert t == term("abc")


def test_quoted_application():
    t = parse('"f"(a)')
    assert (t.name, t.arity, t.quoted) == ("f", 1, True)


def test_quoted_symbol_may_hold_any_character_but_quote_and_backslash_raw():
    assert parse('"a b,c(d)[e]{f}<g>#?"').name == "a b,c(d)[e]{f}<g>#?"
    assert parse('"line\nbreak\ttab"').name == "line\nbreak\ttab"
    assert parse('"é€😀\x00\x7f"').name == "é€😀\x00\x7f"
    assert parse('""').name == ""


@pytest.mark.parametrize(
    ("escape", "char"),
    [
        ("\\n", "\n"),
        ("\\t", "\t"),
        ("\\b", "\b"),
        ("\\r", "\r"),
        ("\\f", "\f"),
        ("\\\\", "\\"),
        ("\\'", "'"),
        ('\\"', '"'),
    ],
)
def test_quoted_symbol_escape(escape, char):
    assert parse(f'"a{escape}b"').name == f"a{char}b"


@pytest.mark.parametrize(
    ("escape", "char"),
    [
        ("\\000", "\x00"),
        ("\\001", "\x01"),
        ("\\101", "A"),
        ("\\177", "\x7f"),
        ("\\377", "\xff"),
        ("\\777", chr(511)),
    ],
)
def test_quoted_symbol_three_digit_octal_escape(escape, char):
    # the character 64*o1 + 8*o2 + o3
    assert parse(f'"{escape}"').name == char


def test_octal_escape_takes_exactly_three_digits():
    assert parse('"\\1012"').name == "A2"


@pytest.mark.parametrize(
    "text", ['"\\q"', '"\\x41"', '"\\u0041"', '"\\7"', '"\\07"', '"\\08"', '"\\ "', '"\\\n"']
)
def test_unknown_escape_is_a_parse_error(text):
    e = parse_error(text)
    assert e.position == 1  # the backslash
    assert "escape" in str(e)


def test_quoted_symbols_with_same_name_are_equal_however_escaped():
    assert parse('"\\101\\n"') == parse('"A\\012"') == parse('"A\n"')


# --------------------------------------------------------------------------------------------------
# tuples, lists, placeholders, variables, annotations


def test_empty_tuple_is_the_empty_named_application():
    t = parse("()")
    assert (t.name, t.arity, t.quoted) == ("", 0, False)
    assert t != parse('""')


def test_tuple_with_one_and_more_elements():
    assert (parse("(1)").name, parse("(1)").args) == ("", (parse("1"),))
    t = parse("(1,a,[])")
    assert (t.name, t.arity, t.quoted) == ("", 3, False)


def test_list():
    assert parse("[]").elements == ()
    assert parse("[1,a,[b]]").elements == (parse("1"), parse("a"), parse("[b]"))
    assert kind(parse("[]")) == "list"


@pytest.mark.parametrize("inner", ["int", "f(<int>,1)", "1", "[a]", "<a>", '"s"', "X?", "()"])
def test_placeholder_holds_any_term(inner):
    t = parse(f"<{inner}>")
    assert kind(t) == "placeholder"
    assert t.type == parse(inner)


def test_variable_is_identifier_then_question_mark():
    t = parse("X?")
    assert t.name == "X"
    assert t != parse("X")
    assert parse("value(N?)").args == (parse("N?"),)
    assert parse("[X?, long_name-1?]").elements == (parse("X?"), parse("long_name-1?"))


@pytest.mark.parametrize("text", ["X ?", '"X"?', "1?", "X??", "?", "X?(a)", "X?()"])
def test_malformed_variable_is_a_parse_error(text):
    parse_error(text)


@pytest.mark.parametrize(
    "text", ["1{a}", "2.5{a}", "f{a}", "f(x){a}", '"s"{a}', "[1]{a}", "<int>{a}", "(){a}", "(1){a}"]
)
def test_every_kind_but_variable_takes_annotations(text):
    t = parse(text)
    assert t.annotations == (parse("a"),)
    assert t != parse(text[: text.index("{")])


def test_annotations_are_a_list_of_terms():
    t = parse("f(x){a,g(1),[2],b{c}}")
    assert t.annotations == (parse("a"), parse("g(1)"), parse("[2]"), parse("b{c}"))
    assert t.annotations[3].annotations == (parse("c"),)


def test_empty_annotations_are_no_annotations():
    assert parse("abc{}") == parse("abc")
    assert parse("abc{}").annotations == ()
    assert parse("f(a){}") == parse("f(a)")
    assert parse("[1]{ }") == parse("[1]")


def test_nested_annotations():
    t = parse("f(a{b}){c{d}}")
    assert t.args[0].annotations == (parse("b"),)
    assert t.annotations == (parse("c{d}"),)


def test_annotations_on_a_variable_are_a_parse_error():
    e = parse_error("X?{a}")
    assert e.position == 2
    e = parse_error("f(X?{a})")
    assert e.position == 4


def test_second_annotation_block_is_a_parse_error():
    e = parse_error("a{b}{c}")
    assert e.position == 4


# --------------------------------------------------------------------------------------------------
# whitespace


def test_whitespace_between_every_two_tokens():
    assert parse("f ( a , b )  { [1,2] }") == parse("f(a,b){[1,2]}")
    spaced = ' \t\r\n f \n( \t1 \r, "s" ( x ) , [ 2.5 , X? ] , < int > { a } , ( ) , ( 1 ) ) { } \n'
    assert parse(spaced) == parse('f(1,"s"(x),[2.5,X?],<int>{a},(),(1))')


@pytest.mark.parametrize("ws", [" ", "\t", "\r", "\n", " \t\r\n "])
def test_each_whitespace_character_may_surround_the_term(ws):
    assert parse(f"{ws}f({ws}a{ws},{ws}b{ws}){ws}") == parse("f(a,b)")
    assert parse(f"{ws}[{ws}]{ws}") == parse("[]")
    assert parse(f"{ws}({ws}){ws}") == parse("()")


@pytest.mark.parametrize("text", ["1 2", "- 1", "1 .5", "1. 5", "1 e5", "1 L", "ab c", "a b", "X ?"])
def test_no_whitespace_inside_a_number_identifier_or_variable(text):
    parse_error(text)


def test_space_inside_a_quoted_symbol_is_part_of_its_name():
    assert parse('" a b "').name == " a b "


@pytest.mark.parametrize("ws", ["\x0b", "\x0c", "\xa0", "\u2003", "\u3000"])
def test_other_unicode_whitespace_is_not_whitespace(ws):
    parse_error(f"{ws}a")
    parse_error(f"f(a,{ws}b)")


# --------------------------------------------------------------------------------------------------
# ParseError: a ValueError with a position and what was expected


def test_parse_error_is_a_value_error():
    assert issubclass(ParseError, ValueError)
    with pytest.raises(ValueError):
        parse("f(")


def test_unterminated_quote():
    e = parse_error('f("abc')
    assert e.position in (2, 6)  # at the opening quote, or at the end where '"' was expected
    assert '"' in str(e)


def test_unterminated_quote_ending_in_escaped_quote():
    e = parse_error('"a\\"')
    assert e.position in (0, 4)
    assert '"' in str(e)


def test_junk_character():
    e = parse_error("@")
    assert e.position == 0
    assert "term" in str(e)
    e = parse_error("f(a @ b)")
    assert e.position == 4
    assert ")" in str(e)


def test_missing_closing_parenthesis():
    e = parse_error("f(a")
    assert e.position == 3
    assert ")" in str(e)


def test_missing_closing_bracket():
    e = parse_error("[1,2")
    assert e.position == 4
    assert "]" in str(e)


def test_missing_closing_angle_bracket():
    e = parse_error("<int")
    assert e.position == 4
    assert ">" in str(e)


def test_mismatched_closing_bracket():
    e = parse_error("[a)")
    assert e.position == 2
    assert "]" in str(e)


def test_missing_closing_brace():
    e = parse_error("a{b")
    assert e.position == 3
    assert "}" in str(e)


@pytest.mark.parametrize(
    ("text", "position"), [(")", 0), ("]", 0), ("}", 0), (">", 0), ("{a}", 0), ("f(a))", 4)]
)
def test_unbalanced_closing_bracket(text, position):
    assert parse_error(text).position == position


@pytest.mark.parametrize(
    ("text", "position"), [("f(a,,b)", 4), ("f(,a)", 2), ("f(a,)", 4), ("[,]", 1), ("a{,b}", 2), ("<a,b>", 2)]
)
def test_misplaced_comma(text, position):
    assert parse_error(text).position == position


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_input_expects_a_term(text):
    e = parse_error(text)
    assert e.position in (0, len(text))
    assert "term" in str(e)


def test_empty_placeholder_is_a_parse_error():
    assert parse_error("<>").position == 1


@pytest.mark.parametrize(
    ("text", "position"),
    [("f(a) x", 5), ("a,", 1), ("1 2", 2), ("f(a)(b)", 4), ("[]]", 2), ('"a"b', 3), ("a\n  b", 4)],
)
def test_trailing_garbage(text, position):
    e = parse_error(text)
    assert e.position == position
    assert "end of input" in str(e)


def test_parse_error_message_names_the_position():
    e = parse_error("f(a @ b)")
    assert "4" in str(e)


def test_ten_megabytes_of_open_brackets_is_a_parse_error():
    text = "[" * 10_000_000
    e = parse_error(text)
    assert 0 <= e.position <= len(text)


def test_ten_megabytes_of_open_parentheses_is_a_parse_error():
    text = "f(" * 5_000_000
    e = parse_error(text)
    assert 0 <= e.position <= len(text)


def test_parse_rejects_taf_references():
    parse_error("f(abc,#A)")


def test_make_pattern_text_with_bad_syntax_is_a_parse_error():
    with pytest.raises(ParseError):
        make("f(<int>", 1)
