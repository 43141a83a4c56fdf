"""Spec docs/toolbus.md §1.3: terms are structurally equal (annotations included), hashable and immutable."""

from __future__ import annotations

import copy
import pickle

import pytest

from toolbus.aterm import ATerm, as_term, parse, term

SAMPLES = [
    "42",
    "-7",
    str(2**100),
    "2.5",
    "-0.0",
    "1e-300",
    "f",
    "f(a,1)",
    '"s"',
    '"f"(a)',
    '"\\000\\n é€😀"',
    "()",
    "(1,2)",
    "[]",
    "[1,[a],b{c}]",
    "<int>",
    "<f(<list>)>",
    "X?",
    "value(N?)",
    "f(a{b}){c,d{e}}",
    "[1]{a}",
    "<int>{a}",
]


# --------------------------------------------------------------------------------------------------
# equality


def test_equality_is_structural():
    assert parse("f(a,[1,2.5])") == parse(" f ( a , [ 1 , 2.5 ] ) ")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("f(a)", "f(b)"),
        ("f(a)", "g(a)"),
        ("[1,2]", "[2,1]"),
        ("[1]", "[1,1]"),
        ("<int>", "<real>"),
        ("X?", "Y?"),
        ("1", "2"),
        ("2.5", "2.25"),
        ('"a"', '"b"'),
        ("[]", "()"),
        ("f", "f?"),
    ],
)
def test_different_terms_are_not_equal(a, b):
    assert parse(a) != parse(b)
    assert not parse(a) == parse(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("a{b}", "a"),
        ("a{b}", "a{c}"),
        ("a{b,c}", "a{c,b}"),
        ("a{b}", "a{b,b}"),
        ("f(a{b})", "f(a)"),
        ("[1{x}]", "[1]"),
        ("<int{x}>", "<int>"),
        ("a{b{c}}", "a{b}"),
    ],
)
def test_equality_includes_annotations(a, b):
    assert parse(a) != parse(b)


def test_equal_annotations_make_equal_terms():
    assert parse("f(a{b}){c,d}") == parse("f( a { b } ) { c , d }")


def test_int_and_real_are_distinct():
    assert parse("1") != parse("1.0")
    assert parse("0") != parse("0.0")
    assert len({parse("1"), parse("1.0")}) == 2


def test_string_and_identifier_are_distinct():
    assert parse('"abc"') != parse("abc")


def test_variable_and_application_are_distinct():
    assert parse("X?") != parse("X")


# --------------------------------------------------------------------------------------------------
# symbol identity: (name, arity, quoted)


def test_symbol_identity_includes_quoted():
    assert parse('"f"(1)') != parse("f(1)")
    assert parse('"f"') != parse("f")


def test_symbol_identity_includes_arity():
    assert parse("f(1)") != parse("f(1,1)")
    assert parse("f") != parse("f(f)")


def test_symbol_identity_includes_name():
    assert parse("f(1)") != parse("g(1)")
    assert parse("f(1)") != parse("F(1)")


def test_empty_name_tuple_and_empty_string_are_distinct_symbols():
    assert parse("()") != parse('""')
    assert parse("(1)") != parse('""(1)')


def test_symbol_attributes():
    t = parse('"f"(1,2)')
    assert (t.name, t.arity, t.quoted) == ("f", 2, True)
    u = parse("g")
    assert (u.name, u.arity, u.quoted) == ("g", 0, False)


# --------------------------------------------------------------------------------------------------
# hashing


@pytest.mark.parametrize("text", SAMPLES)
def test_equal_terms_hash_equal(text):
    a, b = parse(text), parse(text)
    assert a == b
    assert hash(a) == hash(b)
    assert hash(a) == hash(parse(str(a)))


def test_terms_work_as_dict_keys_and_set_members():
    terms = [parse(t) for t in SAMPLES]
    again = [parse(t) for t in SAMPLES]
    table = {t: i for i, t in enumerate(terms)}
    assert [table[t] for t in again] == list(range(len(SAMPLES)))
    assert len(set(terms) | set(again)) == len(SAMPLES)


def test_hash_is_stable():
    t = parse("f(a{b},[1,2.5])")
    assert hash(t) == hash(t)


# --------------------------------------------------------------------------------------------------
# immutability


@pytest.mark.parametrize(
    ("text", "attribute"),
    [
        ("f(a)", "name"),
        ("f(a)", "args"),
        ("f(a)", "quoted"),
        ("f(a)", "annotations"),
        ("f(a)", "arity"),
        ("1", "value"),
        ("1", "annotations"),
        ("2.5", "value"),
        ("[1]", "elements"),
        ("[1]", "annotations"),
        ("<int>", "type"),
        ("<int>", "annotations"),
        ("X?", "name"),
    ],
)
def test_assigning_a_public_attribute_raises_attribute_error(text, attribute):
    t = parse(text)
    before = getattr(t, attribute)
    with pytest.raises(AttributeError):
        setattr(t, attribute, before)
    with pytest.raises(AttributeError):
        delattr(t, attribute)
    assert getattr(t, attribute) == before


@pytest.mark.parametrize("text", ["f(a)", "1", "2.5", "[1]", "<int>", "X?"])
def test_adding_a_new_attribute_raises_attribute_error(text):
    t = parse(text)
    with pytest.raises(AttributeError):
        t.extra = 1


def test_children_cannot_be_changed_in_place():
    t = parse("f(a,b){c}")
    for seq in (t.args, t.annotations, parse("[1,2]").elements):
        with pytest.raises((TypeError, AttributeError)):
            seq[0] = parse("z")
    assert t == parse("f(a,b){c}")


# --------------------------------------------------------------------------------------------------
# term(): plain Python values


def test_term_of_int_is_an_int():
    assert term(3) == parse("3")
    assert term(-(2**80)) == parse(str(-(2**80)))


def test_term_of_float_is_a_real():
    assert term(2.5) == parse("2.5")
    assert term(3.0) == parse("3.0")
    assert term(3.0) != term(3)


def test_term_of_bool_is_true_or_false():
    assert term(True) == parse("true")
    assert term(False) == parse("false")
    assert term(True) != term(1)


def test_term_of_str_is_a_quoted_string():
    assert term("a b") == parse('"a b"')
    assert term("") == parse('""')
    assert term("abc") != parse("abc")


def test_term_of_list_is_a_list():
    assert term([]) == parse("[]")
    assert term([1, "a", [2.5, True]]) == parse('[1,"a",[2.5,true]]')


def test_term_of_an_aterm_is_itself():
    t = parse("f(a)")
    assert term(t) is t


def test_term_result_is_an_aterm():
    for value in (1, 2.5, True, "s", [1]):
        assert isinstance(term(value), ATerm)


def test_as_term_reads_text_and_converts_python_values():
    assert as_term("f(1, [a])") == parse("f(1,[a])")
    assert as_term(parse("a")) == parse("a")
    assert as_term(3) == parse("3")
    assert as_term(["x", True]) == parse('["x",true]')


# --------------------------------------------------------------------------------------------------
# pickling


@pytest.mark.parametrize("text", SAMPLES)
@pytest.mark.parametrize("protocol", [0, pickle.HIGHEST_PROTOCOL])
def test_pickle_round_trip(text, protocol):
    t = parse(text)
    again = pickle.loads(pickle.dumps(t, protocol=protocol))
    assert again == t
    assert str(again) == str(t)
    assert hash(again) == hash(t)


def test_pickle_round_trip_of_a_container_of_terms():
    value = {"terms": [parse(t) for t in SAMPLES]}
    assert pickle.loads(pickle.dumps(value)) == value


def test_copy_and_deepcopy_give_equal_terms():
    t = parse("f(a{b},[1,2.5],<int>)")
    assert copy.copy(t) == t
    assert copy.deepcopy(t) == t
