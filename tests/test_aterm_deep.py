"""Spec docs/toolbus.md §1.3: deep nesting never hits Python's recursion limit -- a 100,000-deep term everywhere."""

from __future__ import annotations

import pickle

import pytest

from toolbus.aterm import Environment, make, parse, read_taf, write_taf

N = 100_000


def nest(open_: str, inner: str, close: str, n: int = N) -> str:
    return open_ * n + inner + close * n


@pytest.fixture(scope="module")
def text() -> str:
    return nest("f(", "a", ")")


@pytest.fixture(scope="module")
def deep(text):
    return parse(text)


# --------------------------------------------------------------------------------------------------
# parse and print


def test_parse_deep_application(deep):
    t = deep
    for _ in range(N):
        assert t.name == "f"
        (t,) = t.args
    assert t == parse("a")


@pytest.mark.parametrize(
    ("open_", "inner", "close"),
    [
        ("f(", "a", ")"),
        ("[", "", "]"),
        ("[1,", "2", "]"),
        ("<", "a", ">"),
        ("a{", "b", "}"),
        ('"q"(', '"s"', ")"),
        ("(", "1", ")"),
        ("g(x,", "2.5", ",y)"),
    ],
)
def test_str_of_parse_of_deep_text_is_the_text(open_, inner, close):
    text = nest(open_, inner, close)
    assert str(parse(text)) == text


def test_parse_deep_text_with_whitespace(deep):
    assert parse(nest(" f ( ", " a ", " ) ")) == deep


def test_repr_of_deep_term(deep):
    assert repr(deep).startswith("parse(")


# --------------------------------------------------------------------------------------------------
# equality and hashing


def test_equal_deep_terms(text, deep):
    assert parse(text) == deep


def test_deep_terms_differing_at_the_bottom(deep):
    assert parse(nest("f(", "b", ")")) != deep
    assert parse(nest("f(", "a{b}", ")")) != deep


def test_hash_of_deep_terms(text, deep):
    assert hash(parse(text)) == hash(deep)
    assert {deep: 1}[parse(text)] == 1


def test_deep_annotations_compare_and_hash():
    a = parse(nest("a{", "b", "}"))
    b = parse(nest("a{", "b", "}"))
    assert a == b
    assert hash(a) == hash(b)
    assert a != parse(nest("a{", "c", "}"))


def test_pickle_deep_term(deep):
    assert pickle.loads(pickle.dumps(deep)) == deep


# --------------------------------------------------------------------------------------------------
# matching and make


def test_deep_term_matches_itself(deep):
    assert deep.match(deep) == []


def test_match_deep_placeholder():
    subject = parse(nest("f(", "1", ")"))
    assert subject.match(nest("f(", "<int>", ")")) == [1]
    assert subject.match(nest("f(", "<real>", ")")) is None


def test_match_deep_term_ignoring_annotations():
    subject = parse(nest("f(", "1", "){x}"))
    assert subject.match(nest("f(", "<int>", ")")) == [1]


def test_match_deep_fun_placeholders():
    pattern = nest("<fun(", "<term>", ")>")
    result = parse(nest("f(", "a", ")")).match(pattern)
    assert result is not None
    assert len(result) == N + 1
    assert result[-1] == parse("a")


def test_match_deep_list_with_trailing_list():
    subject = parse(nest("[1,", "2", "]"))
    result = subject.match(nest("[<int>,", "<list>", "]"))
    assert result is not None
    assert result[:-1] == [1] * N
    assert result[-1] == parse("[2]")


def test_environment_match_deep(deep):
    env = Environment()
    assert env.match(nest("f(", "X?", ")"), deep) is True
    assert env["X"] == parse("a")


def test_environment_binds_a_deep_subterm(deep):
    env = Environment()
    assert env.match("f(X?)", deep) is True
    assert env["X"] == deep.args[0]


def test_environment_substitute_deep():
    env = Environment()
    env["X"] = parse("a")
    assert env.substitute(nest("g(", "X?", ")")) == parse(nest("g(", "a", ")"))


def test_environment_substitute_a_deep_value(deep):
    env = Environment()
    env["X"] = deep
    assert env.substitute("h(X?)") == parse("h(" + str(deep) + ")")


def test_make_deep_pattern():
    assert make(nest("f(", "<int>", ")"), 7) == parse(nest("f(", "7", ")"))


def test_make_deep_list_pattern_with_splicing():
    assert make(nest("[", "<list>", "]"), [1]) == parse(nest("[", "1", "]"))


def test_make_with_a_deep_argument(deep):
    assert make("g(<term>)", deep) == parse("g(" + str(deep) + ")")


# --------------------------------------------------------------------------------------------------
# TAF


def test_taf_round_trip_deep(deep):
    text = write_taf(deep)
    assert text == "!" + str(deep)
    assert read_taf(text) == deep


@pytest.mark.parametrize(("open_", "inner", "close"), [("[", "", "]"), ("<", "a", ">"), ("a{", "b", "}")])
def test_taf_round_trip_deep_other_kinds(open_, inner, close):
    t = parse(nest(open_, inner, close))
    assert read_taf(write_taf(t)) == t


def test_taf_round_trip_deep_with_sharing():
    t = parse(nest("f(g(abc),", "a", ")"))
    text = write_taf(t)
    assert len(text) < len(str(t))
    assert read_taf(text) == t
