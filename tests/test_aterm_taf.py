"""Spec docs/toolbus.md §1.5: the shared textual format (TAF)."""

from __future__ import annotations

import re

import pytest

from toolbus.aterm import ParseError, make, parse, read_taf, term, write_taf

P = parse
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def names(n: int) -> list[str]:
    """n distinct identifiers, each 4 characters long."""
    return [f"n{i:03d}" for i in range(n)]


# --------------------------------------------------------------------------------------------------
# writing


def test_spec_example():
    assert write_taf(P("f(g(a,b),g(a,b))")) == "!f(g(a,b),#A)"


def test_starts_with_bang_and_has_no_whitespace():
    text = write_taf(P(' f ( "x" , [ 1 , 2.5 ] , < int > ) { a } '))
    assert text.startswith("!")
    assert not any(c in text for c in " \t\r\n")


def test_term_without_repeats_is_its_text_after_the_bang():
    assert write_taf(P('f(1,"s",[a,2.5],<int>,X?){c}')) == '!f(1,"s",[a,2.5],<int>,X?){c}'


def test_subterm_as_short_as_a_reference_is_not_numbered():
    # 'ab' is 2 characters; a reference is never shorter than 2, so 'ab' gets no number
    assert write_taf(P("f(ab,ab)")) == "!f(ab,ab)"
    assert write_taf(P("f(1,1)")) == "!f(1,1)"
    assert write_taf(P("f(12,12)")) == "!f(12,12)"


def test_subterm_longer_than_a_reference_is_numbered():
    assert write_taf(P("f(abc,abc)")) == "!f(abc,#A)"
    assert write_taf(P('f("a","a")')) == '!f("a",#A)'
    assert write_taf(P("f(2.5,2.5)")) == "!f(2.5,#A)"


def test_short_subterms_do_not_use_up_numbers():
    assert write_taf(P("f(ab,abc,ab,abc)")) == "!f(ab,abc,ab,#A)"


def test_children_are_numbered_before_the_term_that_holds_them():
    # abc is #A, g(abc) -- written g(#A) -- is #B
    assert write_taf(P("[abc,g(abc),g(abc)]")) == "![abc,g(#A),#B]"


def test_subterm_text_has_references_already_substituted():
    # h(abc,abc) is written h(abc,#A): 9 characters, numbered #B
    assert write_taf(P("f(h(abc,abc),h(abc,abc))")) == "!f(h(abc,#A),#B)"


def test_whole_term_is_a_subterm_too():
    # g(abc,abc) completes before f; f's own number is never referenced, but g gets #B
    assert write_taf(P("f(g(abc,abc),g(abc,abc),abc)")) == "!f(g(abc,#A),#B,#A)"


def test_list_elements_annotations_and_placeholder_insides_are_subterms():
    assert write_taf(P("f([abc],abc)")) == "!f([abc],#A)"
    assert write_taf(P("f(a{abc},abc)")) == "!f(a{abc},#A)"
    assert write_taf(P("f(<abc>,abc)")) == "!f(<abc>,#A)"


def test_list_tail_is_not_a_subterm():
    assert write_taf(P("f([x,yy,zz],[yy,zz])")) == "!f([x,yy,zz],[yy,zz])"


def test_annotation_list_as_a_whole_is_not_a_subterm():
    assert write_taf(P("f(a{bb,cc},[bb,cc])")) == "!f(a{bb,cc},[bb,cc])"


def test_shared_subterm_equality_includes_annotations():
    assert write_taf(P("f(g(a){x},g(a))")) == "!f(g(a){x},g(a))"
    assert write_taf(P("f(g(a),g(a){x})")) == "!f(g(a),g(a){x})"
    assert write_taf(P("f(g(a){x},g(a){y})")) == "!f(g(a){x},g(a){y})"
    assert write_taf(P("f(g(a){x},g(a){x})")) == "!f(g(a){x},#A)"


def test_annotated_subterm_text_includes_its_annotations():
    # a{b} is 4 characters: numbered, though a alone would not be
    assert write_taf(P("f(a{b},a{b})")) == "!f(a{b},#A)"


def test_annotations_of_ints_and_reals_are_written_once():
    assert write_taf(P("f(1{a},2.5{b})")) == "!f(1{a},2.5{b})"
    assert write_taf(P("f(1{[]},1{[]})")) == "!f(1{[]},#A)"


def test_quoted_and_unquoted_symbols_are_not_shared():
    assert write_taf(P('f(abc,"abc",abc)')) == '!f(abc,"abc",#A)'


def test_int_and_real_are_not_shared():
    assert write_taf(P("f(100,100.0,100)")) == "!f(100,100.0,#A)"


@pytest.mark.parametrize(
    ("number", "digits"),
    [
        (0, "A"),
        (1, "B"),
        (25, "Z"),
        (26, "a"),
        (51, "z"),
        (52, "0"),
        (61, "9"),
        (62, "+"),
        (63, "/"),
        (64, "BA"),
        (65, "BB"),
        (99, "Bj"),
        (127, "B/"),
        (128, "CA"),
    ],
)
def test_reference_numbers_are_base_64(number, digits):
    ns = names(130)
    t = P("[" + ",".join([*ns, ns[number]]) + "]")
    assert write_taf(t) == "![" + ",".join(ns) + f",#{digits}]"


def test_number_4096_needs_three_digits():
    ns = [f"m{i:04d}" for i in range(4097)]
    t = P("[" + ",".join([*ns, ns[4096], ns[4095]]) + "]")
    assert write_taf(t) == "![" + ",".join(ns) + ",#BAA,#//]"


def test_once_references_take_three_characters_three_character_subterms_are_not_numbered():
    ns = names(64)  # numbers 0..63: the next reference, #BA, is 3 characters
    t = P("[" + ",".join([*ns, "abc", "abc", "abcd", "abcd"]) + "]")
    assert write_taf(t) == "![" + ",".join(ns) + ",abc,abc,abcd,#BA]"


def test_before_number_64_three_character_subterms_are_numbered():
    ns = names(63)  # numbers 0..62: the next reference, #/, is 2 characters
    t = P("[" + ",".join([*ns, "abc", "abc"]) + "]")
    assert write_taf(t) == "![" + ",".join(ns) + ",abc,#/]"


def test_quoted_names_are_escaped_as_in_canonical_text():
    t = make("f(<str>,<str>)", 'a"\\\n\x01', 'a"\\\n\x01')
    assert write_taf(t) == '!f("a\\"\\\\\\n\\001",#A)'


def test_spaces_inside_a_quoted_name_stay_spaces_as_the_java_library_writes_them():
    t = P('f("a long quoted string","a long quoted string",g)')
    assert write_taf(t) == '!f("a long quoted string",#A,g)'
    # other whitespace is escaped as in the text form, so only the spaces are written as they are
    assert write_taf(term("a b\tc")) == '!"a b\\tc"'


def test_quoted_name_with_spaces_round_trips():
    t = P('f("hello world","hello world")')
    assert read_taf(write_taf(t)) == t


# --------------------------------------------------------------------------------------------------
# reading


def test_read_spec_example():
    assert read_taf("!f(g(a,b),#A)") == P("f(g(a,b),g(a,b))")


def test_reading_numbers_subterms_by_the_same_rule():
    assert read_taf("![abc,g(#A),#B]") == P("[abc,g(abc),g(abc)]")
    assert read_taf("!f(ab,abc,ab,#A)") == P("f(ab,abc,ab,abc)")
    assert read_taf("!f(h(abc,#A),#B)") == P("f(h(abc,abc),h(abc,abc))")
    assert read_taf("!f(a{abc},#A)") == P("f(a{abc},abc)")
    assert read_taf("!f(g(a){x},#A)") == P("f(g(a){x},g(a){x})")


def test_reading_base_64_numbers():
    ns = names(130)
    for number, digits in [(0, "A"), (63, "/"), (64, "BA"), (99, "Bj"), (128, "CA")]:
        text = "![" + ",".join(ns) + f",#{digits}]"
        assert read_taf(text) == P("[" + ",".join([*ns, ns[number]]) + "]")


def test_reading_three_character_subterms_after_number_64():
    ns = names(64)
    text = "![" + ",".join(ns) + ",abc,abc,abcd,#BA]"
    assert read_taf(text) == P("[" + ",".join([*ns, "abc", "abc", "abcd", "abcd"]) + "]")


def test_reading_taf_written_by_the_java_library_keeps_the_spaces_of_quoted_names():
    t = P('f("a long quoted string","a long quoted string","a long quoted string")')
    assert read_taf('!f("a long quoted string",#A,#A)') == t


def test_reading_accepts_whitespace_between_tokens_and_numbers_subterms_as_without_it():
    text = "![abc,g(abc),g(#A),#B]"
    spaced = "! [ abc ,\n g ( abc ) ,\tg( #A ) , #B ]\r\n"
    assert read_taf(spaced) == read_taf(text) == P("[abc,g(abc),g(abc),abc]")


def test_reading_a_reference_to_a_short_subterm_is_a_parse_error():
    # 'ab' got no number, so #A does not exist yet
    with pytest.raises(ParseError):
        read_taf("!f(ab,#A)")


@pytest.mark.parametrize(
    ("text", "value"),
    [("!1.0E10", 1e10), ("!2.5E-3", 0.0025), ("!-1.5E+2", -150.0), ("!1E3", 1000.0), ("!0.0", 0.0)],
)
def test_reading_java_style_reals(text, value):
    t = read_taf(text)
    assert t.match("<real>") == [value]


def test_reading_java_style_reals_inside_a_term():
    assert read_taf("!f(1.0E10,[1.0E10])") == P("f(10000000000.0,[10000000000.0])")


def test_reading_escaped_apostrophe():
    assert read_taf('!"it\\\'s"') == term("it's")
    assert read_taf('!f("\\\'",#A)') == P('f("\'","\'")')


def test_reading_every_escape():
    assert read_taf('!"\\n\\t\\b\\r\\f\\\\\\\'\\"\\101"') == term("\n\t\b\r\f\\'\"A")


def test_reading_a_term_without_references():
    assert read_taf('!f(1,"s",[a,2.5],<int>,X?,()){c}') == P('f(1,"s",[a,2.5],<int>,X?,()){c}')


# --------------------------------------------------------------------------------------------------
# round trip and size


@pytest.mark.parametrize(
    "text",
    [
        "f(g(a,b),g(a,b))",
        "f(a{b},a{b},a)",
        "f(1{a},1{a},2.5{b},2.5{b},-3{[]})",
        "[[1,2],[1,2],[[1,2],[1,2]]]",
        "<f(<int>,<int>)>{<int>}",
        '"\\000\\n é€😀"("\\000\\n é€😀")'.replace(" ", "_"),
        "f(1.5e300,1.5e300,-0.0,5e-324)",
        "f(X?,X?,value(N?),value(N?))",
        "((),(),(1),(1))",
        "f(" + ",".join(f"g{i % 70}(h{i % 90})" for i in range(300)) + ")",
        "f(" + str(2**100) + "," + str(2**100) + ")",
    ],
)
def test_round_trip(text):
    t = P(text)
    assert read_taf(write_taf(t)) == t


def test_round_trip_of_many_numbered_subterms():
    t = P("[" + ",".join(f"g(x{i},x{i})" for i in range(5000)) + "]")
    text = write_taf(t)
    assert read_taf(text) == t
    assert re.search(r"#[A-Za-z0-9+/]{3}\)", text)  # numbers beyond 4095 take three digits


def test_taf_of_a_term_with_much_sharing_is_far_smaller_than_its_text():
    t = P("leaf(abc)")
    for _ in range(18):
        t = make("node(<term>,<term>)", t, t)
    text = str(t)
    taf = write_taf(t)
    assert len(text) > 4_000_000
    assert len(taf) < 500
    assert read_taf(taf) == t


# --------------------------------------------------------------------------------------------------
# bad TAF


@pytest.mark.parametrize(
    ("text", "position"),
    [
        ("", 0),
        ("f(a)", 0),
        ("!", 1),
        ("!f(", 3),
        ("!#A", 1),
        ("!f(abc,#B)", 7),
        ("!f(a)x", 5),
        ("!@", 1),
        ("!f(abc, #B)", 8),
        ("!f(a)!", 5),
        ("!!f", 1),
        ('!"abc', 1),
        ("!f(#)", 3),
    ],
)
def test_bad_taf_is_a_parse_error(text, position):
    with pytest.raises(ParseError) as info:
        read_taf(text)
    assert isinstance(info.value, ValueError)
    assert info.value.position == position


def test_parse_error_for_missing_bang_names_it():
    with pytest.raises(ParseError, match="!"):
        read_taf("f(a)")
