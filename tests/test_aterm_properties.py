"""Properties of docs/toolbus.md §1.1-docs/toolbus.md §1.5 over arbitrary ATerms and arbitrary text (hypothesis)."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from toolbus.aterm import (
    ATerm,
    ATermAppl,
    ATermInt,
    ATermList,
    ATermPlaceholder,
    ATermReal,
    ATermVar,
    ParseError,
    parse,
    read_taf,
    term,
    write_taf,
)

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# --------------------------------------------------------------------------------------------------
# A strategy for arbitrary ATerms

identifiers = st.from_regex(r"[A-Za-z][A-Za-z0-9_\-+*$]{0,6}", fullmatch=True)

# Names of quoted symbols: any unicode, with a good share of the characters printing treats specially.
special_chars = st.sampled_from(list("\"\\\n\t\r\b\f'\x00\x01\x1b\x1f\x7f\x80 é€😀\u2028#{}[]()<>,?!"))
quoted_names = st.text(alphabet=st.one_of(st.characters(), special_chars), max_size=8)

ints = st.one_of(
    st.integers(min_value=-1000, max_value=1000),
    st.integers(min_value=-(2**200), max_value=2**200),
)
reals = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, 1e16, 0.1]),
)


def appl(name: str, args=(), quoted: bool = False) -> ATerm:
    if name == "" and not quoted and not args:
        return parse("()")
    return ATermAppl(name, args, quoted)


leaves = st.one_of(
    ints.map(ATermInt),
    reals.map(ATermReal),
    identifiers.map(appl),
    quoted_names.map(lambda n: appl(n, (), True)),
    identifiers.map(ATermVar),
    st.just(ATermList(())),
    st.just(parse("()")),
)


def annotate(t: ATerm, annotations: list[ATerm]) -> ATerm:
    if isinstance(t, ATermVar):
        return t  # variables carry no annotations
    return t.with_annotations(annotations)


def extend(children):
    args = st.lists(children, min_size=1, max_size=4)
    return st.one_of(
        st.builds(lambda n, a: appl(n, a), identifiers, args),
        st.builds(lambda n, a: appl(n, a, True), quoted_names, args),
        args.map(lambda a: appl("", a)),  # tuple
        st.lists(children, max_size=4).map(ATermList),
        children.map(ATermPlaceholder),
        st.builds(annotate, children, st.lists(children, min_size=1, max_size=3)),
    )


aterms = st.recursive(leaves, extend, max_leaves=25)


def has_placeholder(t: ATerm) -> bool:
    stack = [t]
    while stack:
        x = stack.pop()
        if isinstance(x, ATermPlaceholder):
            return True
        if isinstance(x, ATermAppl):
            stack.extend(x.args)
        elif isinstance(x, ATermList):
            stack.extend(x.elements)
        stack.extend(x.annotations)
    return False


# --------------------------------------------------------------------------------------------------
# Printing and parsing


@SETTINGS
@given(aterms)
@example(term(-0.0))
@example(term("\x00\x7f\n\"\\'é😀"))
@example(parse('"a"(1.5e-300,-12345678901234567890,X?){<int>,[]}'))
def test_parse_of_str_is_the_term(t):
    assert parse(str(t)) == t


@SETTINGS
@given(aterms)
def test_str_of_parse_of_str_is_the_same_text(t):
    text = str(t)
    assert str(parse(text)) == text


@SETTINGS
@given(aterms)
def test_canonical_text_has_no_whitespace_outside_quoted_names(t):
    text = str(t)
    outside, inside, escaped = [], False, False
    for c in text:
        if inside:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                inside = False
        elif c == '"':
            inside = True
        else:
            outside.append(c)
    assert not any(c in " \t\r\n" for c in outside)
    assert not any(c in "\t\r\n" for c in text)  # inside quotes these are escaped


# --------------------------------------------------------------------------------------------------
# TAF


@SETTINGS
@given(aterms)
@example(term("a b"))
@example(term(-0.0))
@example(parse("f(g(a,b),g(a,b))"))
@example(parse("f(1{a},2.5{b})"))
def test_read_taf_of_write_taf_is_the_term(t):
    assert read_taf(write_taf(t)) == t


@SETTINGS
@given(aterms)
@example(term("a b"))
def test_write_taf_starts_with_bang_and_has_whitespace_only_inside_quotes(t):
    text = write_taf(t)
    assert text.startswith("!")
    assert not any(c in "\t\r\n" for c in text)
    assert " " not in re.sub(r'"(?:[^"\\]|\\.)*"', "", text)


@SETTINGS
@given(aterms)
def test_write_taf_of_a_term_with_its_copy_shares_it(t):
    doubled = ATermList([t, t])
    text = write_taf(doubled)
    assert read_taf(text) == doubled
    # "[", ",", "]" and then the second copy: a reference, or a text no longer than one
    assert len(text) <= len(write_taf(t)) + 3 + 4


# --------------------------------------------------------------------------------------------------
# Parsing arbitrary text


def check_parse(text: str) -> None:
    try:
        t = parse(text)
    except ParseError as e:
        assert isinstance(e, ValueError)
        assert 0 <= e.position <= len(text)
        return
    assert parse(str(t)) == t


aterm_chars = st.text(
    alphabet=st.sampled_from(list('()[]{}<>,"\\ 0123456789abcxyzLl.eE-+?#_*$\t\n\r\x00é²٣')),
    max_size=40,
)


@SETTINGS
@given(st.text())
@example("¹")
@example("\u0663")
def test_parse_of_any_text_is_a_term_or_a_parse_error(text):
    check_parse(text)


@SETTINGS
@given(aterm_chars)
@example("²")
@example('"\\')
@example("[[[[")
@example("f(a){")
def test_parse_of_aterm_like_text_is_a_term_or_a_parse_error(text):
    check_parse(text)


@SETTINGS
@given(aterms, st.integers(min_value=0, max_value=1000), st.sampled_from(list(')]}>,"\\{[(<#? x')))
def test_parse_of_damaged_term_text_is_a_term_or_a_parse_error(t, at, junk):
    text = str(t)
    at %= len(text) + 1
    check_parse(text[:at] + junk + text[at:])
    check_parse(text[:at])


@SETTINGS
@given(aterms)
def test_read_taf_of_damaged_taf_is_a_term_or_a_parse_error(t):
    text = write_taf(t)
    for cut in {1, len(text) // 2, len(text) - 1}:
        try:
            read_taf(text[:cut])
        except ParseError:
            pass


# --------------------------------------------------------------------------------------------------
# Matching and hashing


@SETTINGS
@given(aterms.filter(lambda t: not has_placeholder(t)))
def test_placeholder_free_term_matches_itself_with_nothing_extracted(t):
    assert t.match(t) == []
    assert t.match(str(t)) == []


@SETTINGS
@given(aterms)
def test_term_matches_term_placeholder(t):
    assert t.match("<term>") == [t]


@SETTINGS
@given(aterms)
def test_annotations_do_not_change_what_matches(t):
    if not isinstance(t, ATermVar):
        annotated = t.with_annotations([parse("x")])
        assert annotated.match("<term>") == [annotated]
        if not has_placeholder(t):
            assert annotated.match(t) == []


@SETTINGS
@given(aterms)
def test_equal_terms_have_equal_hashes(t):
    again = parse(str(t))
    assert again == t
    assert hash(again) == hash(t)


small_aterms = st.recursive(
    st.sampled_from([parse(x) for x in ["a", "b", "1", "1.0", '"a"', "[]", "X?", "<a>"]]),
    lambda c: st.one_of(
        st.builds(lambda a: appl("f", a), st.lists(c, min_size=1, max_size=2)),
        st.lists(c, max_size=2).map(ATermList),
        st.builds(annotate, c, st.lists(c, min_size=1, max_size=1)),
    ),
    max_leaves=4,
)


@SETTINGS
@given(small_aterms, small_aterms)
def test_hash_is_consistent_with_equality(a, b):
    if a == b:
        assert hash(a) == hash(b)
        assert str(a) == str(b)
    else:
        assert str(a) != str(b)
    assert (a == b) == (b == a)
    assert (a != b) == (not a == b)
