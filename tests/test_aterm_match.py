"""Spec docs/toolbus.md §1.3 (term.match, make) and docs/toolbus.md §1.4 (Environment: result variables)."""

from __future__ import annotations

import pytest

from toolbus.aterm import Environment, make, parse, term

P = parse

# --------------------------------------------------------------------------------------------------
# docs/toolbus.md §1.3 examples, verbatim


def test_spec_api_example():
    t = parse('f(1, "a", [x, 2.5])')
    assert str(t) == 'f(1,"a",[x,2.5])'
    assert t == parse(str(t))
    hash(t)
    assert t.match("f(<int>,<str>,<term>)") == [1, "a", parse("[x,2.5]")]
    assert make("f(<int>,<term>)", 3, parse("a")) == parse("f(3,a)")


def test_spec_example_trailing_list_takes_the_rest():
    assert parse("[1,2,3]").match("[<int>,<list>]") == [1, parse("[2,3]")]


def test_spec_example_trailing_list_takes_an_empty_rest():
    assert parse("[1]").match("[<int>,<list>]") == [1, parse("[]")]


def test_spec_example_fun_with_trailing_list():
    assert parse("f(1,2,3)").match("<fun(<int>,<list>)>") == ["f", 1, parse("[2,3]")]


def test_spec_example_literal_application_arity_differs():
    assert parse("f(1,2,3)").match("f(<int>,<list>)") is None


def test_spec_example_fun_with_term():
    assert parse("f(a)").match("<fun(<term>)>") == ["f", parse("a")]


def test_spec_example_empty_list_against_trailing_list():
    assert parse("[]").match("[<list>]") == [parse("[]")]


# --------------------------------------------------------------------------------------------------
# literal patterns


def test_pattern_may_be_a_term_or_its_text():
    t = P("f(1,a)")
    assert t.match("f(<int>,a)") == [1]
    assert t.match(P("f(<int>,a)")) == [1]


def test_equal_literal_matches_with_nothing_extracted():
    assert P('f(a,[1,2.5],"s")').match('f(a,[1,2.5],"s")') == []


@pytest.mark.parametrize(
    ("subject", "pattern"),
    [
        ("f(a)", "g(a)"),
        ("f(a)", '"f"(a)'),
        ('"f"(a)', "f(a)"),
        ("f(a)", "f(a,a)"),
        ("f(a,a)", "f(a)"),
        ("f", "f(<term>)"),
        ("[1,2]", "[1]"),
        ("[1]", "[1,2]"),
        ("1", "1.0"),
        ("1", "2"),
        ("a", "[a]"),
        ("f(a)", "f(b)"),
    ],
)
def test_literal_parts_must_be_equal(subject, pattern):
    assert P(subject).match(pattern) is None


def test_extractions_come_left_to_right_at_every_depth():
    t = P('f(1,g("a",[2.5,true]),<x>,h)')
    assert t.match("f(<int>,g(<str>,[<real>,<bool>]),<placeholder>,<fun>)") == [
        1,
        "a",
        2.5,
        True,
        P("<x>"),
        "h",
    ]


def test_failed_match_returns_none_not_a_partial_list():
    assert P("f(1,b)").match("f(<int>,a)") is None


# --------------------------------------------------------------------------------------------------
# annotations are ignored at every depth


@pytest.mark.parametrize(
    ("subject", "pattern"),
    [
        ("f(a){x}", "f(a)"),
        ("f(a)", "f(a){x}"),
        ("f(a){x}", "f(a){y}"),
        ("f(a{x})", "f(a)"),
        ("f(a)", "f(a{x})"),
        ("f(g(h(a{x}){y}){z})", "f(g(h(a{p}){q}))"),
        ("[1{x},[2{y}]{z}]", "[1,[2]]"),
        ("<f(a{x})>{y}", "<f(a)>"),
        ("<f(a)>", "<f(a{x})>{y}"),
        ("2.5{x}", "2.5"),
        ('"s"{x}', '"s"'),
    ],
)
def test_annotations_ignored_in_literal_parts(subject, pattern):
    assert P(subject).match(pattern) == []


def test_annotations_do_not_make_unequal_literals_match():
    assert P("f(a{x})").match("f(b{x})") is None


@pytest.mark.parametrize(
    ("subject", "pattern", "result"),
    [
        ("1{x}", "<int>", [1]),
        ("1", "<int>{x}", [1]),
        ("f(1{x}){y}", "f(<int>)", [1]),
        ("f(1)", "f(<int>{x})", [1]),
        ("2.5{x}", "<real>", [2.5]),
        ("true{x}", "<bool>", [True]),
        ('"s"{x}', "<str>", ["s"]),
        ("g{x}", "<fun>", ["g"]),
        ('"f"(1{x}){y}', "<str(<int>)>", ["f", 1]),
        ("f(1{x}){y}", "<fun(<int>{z})>{w}", ["f", 1]),
        ("[1{x},2]{y}", "[<int>,<list>]", [1, P("[2]")]),
        ("<abc>{x}", "<abc>", []),
        ("<abc{x}>", "<abc>", []),
    ],
)
def test_annotations_ignored_by_placeholders(subject, pattern, result):
    assert P(subject).match(pattern) == result


def test_term_placeholder_keeps_annotations_of_what_it_extracts():
    [t] = P("f(a{b}){c}").match("<term>")
    assert t == P("f(a{b}){c}")
    assert t.annotations == (P("c"),)
    [u] = P("g(a{b})").match("g(<term>)")
    assert u == P("a{b}")


def test_list_placeholder_extracts_the_list_term():
    [t] = P("[1,a]{c}").match("<list>")
    assert t.elements == (P("1"), P("a"))


# --------------------------------------------------------------------------------------------------
# the placeholder table, row by row


@pytest.mark.parametrize("pattern", ["<int>", "<long>"])
def test_int_and_long_match_an_int(pattern):
    assert P("42").match(pattern) == [42]
    assert P("-7L").match(pattern) == [-7]
    assert P(str(2**100)).match(pattern) == [2**100]
    [value] = P("1").match(pattern)
    assert type(value) is int


@pytest.mark.parametrize("pattern", ["<int>", "<long>"])
@pytest.mark.parametrize("subject", ["1.0", "a", '"1"', "[1]", "<int>", "f(1)", "X?"])
def test_int_and_long_match_nothing_else(pattern, subject):
    assert P(subject).match(pattern) is None


def test_real_matches_a_real():
    assert P("2.5").match("<real>") == [2.5]
    [value] = P("1e3").match("<real>")
    assert type(value) is float and value == 1000.0


@pytest.mark.parametrize("subject", ["1", "a", '"2.5"', "[2.5]", "<real>"])
def test_real_matches_nothing_else(subject):
    assert P(subject).match("<real>") is None


def test_bool_matches_true_and_false():
    assert P("true").match("<bool>") == [True]
    assert P("false").match("<bool>") == [False]
    assert type(P("true").match("<bool>")[0]) is bool


@pytest.mark.parametrize("subject", ['"true"', '"false"', "true(1)", "yes", "1", "0", "True", "[true]"])
def test_bool_matches_nothing_else(subject):
    assert P(subject).match("<bool>") is None


def test_str_matches_a_quoted_application_without_arguments():
    assert P('"abc"').match("<str>") == ["abc"]
    assert P('""').match("<str>") == [""]
    assert P('"a\\nb"').match("<str>") == ["a\nb"]


@pytest.mark.parametrize("subject", ["abc", '"f"(a)', "1", "[]", "()", "<str>"])
def test_str_matches_nothing_else(subject):
    assert P(subject).match("<str>") is None


def test_str_with_arguments_matches_a_quoted_application():
    assert P('"f"(1,a)').match("<str(<int>,<term>)>") == ["f", 1, P("a")]
    assert P('"f"(1,2,3)').match("<str(<int>,<list>)>") == ["f", 1, P("[2,3]")]


@pytest.mark.parametrize(
    ("subject", "pattern"),
    [
        ("f(1)", "<str(<int>)>"),
        ('"f"', "<str(<list>)>"),
        ('"f"(1)', "<str(<int>,<int>)>"),
        ('"f"(1,2)', "<str(<int>)>"),
        ('"f"(a)', "<str(<int>)>"),
        ('"f"', "<str(<term>)>"),
        ("[1]", "<str(<int>)>"),
    ],
)
def test_str_with_arguments_negative(subject, pattern):
    assert P(subject).match(pattern) is None


@pytest.mark.parametrize("pattern", ["<fun>", "<appl>", "<id>"])
def test_fun_appl_id_match_an_unquoted_application_without_arguments(pattern):
    assert P("abc").match(pattern) == ["abc"]
    assert P("true").match(pattern) == ["true"]


@pytest.mark.parametrize("pattern", ["<fun>", "<appl>", "<id>"])
@pytest.mark.parametrize("subject", ['"abc"', "f(a)", "1", "[]", "<fun>", "X?"])
def test_fun_appl_id_match_nothing_else(pattern, subject):
    assert P(subject).match(pattern) is None


@pytest.mark.parametrize("head", ["fun", "appl"])
def test_fun_and_appl_with_arguments_match_an_unquoted_application(head):
    assert P("f(1,a)").match(f"<{head}(<int>,<term>)>") == ["f", 1, P("a")]
    assert P("g(h(2))").match(f"<{head}(<{head}(<int>)>)>") == ["g", "h", 2]


@pytest.mark.parametrize("head", ["fun", "appl"])
@pytest.mark.parametrize(
    ("subject", "args"),
    [
        ('"f"(1)', "<int>"),
        ("f", "<term>"),
        ("f", "<list>"),
        ("f(1,2)", "<int>"),
        ("f(1)", "<int>,<int>"),
        ("f(a)", "<int>"),
        ("[1]", "<int>"),
        ("1", "<int>"),
    ],
)
def test_fun_and_appl_with_arguments_negative(head, subject, args):
    assert P(subject).match(f"<{head}({args})>") is None


def test_term_matches_anything():
    for text in ["1", "2.5", "a", '"s"', "f(a)", "[]", "<int>", "X?", "f(a){b}"]:
        assert P(text).match("<term>") == [P(text)]


def test_list_matches_a_list():
    assert P("[]").match("<list>") == [P("[]")]
    assert P("[1,a]").match("<list>") == [P("[1,a]")]
    assert P("f([1])").match("f(<list>)") == [P("[1]")]


@pytest.mark.parametrize("subject", ["a", "()", "(1)", '"[]"', "<list>", "1"])
def test_list_matches_nothing_else(subject):
    assert P(subject).match("<list>") is None


def test_trailing_list_in_a_list_pattern_takes_the_remaining_elements():
    assert P("[1,2,3]").match("[<list>]") == [P("[1,2,3]")]
    assert P("[1,2,3]").match("[<int>,<int>,<list>]") == [1, 2, P("[3]")]
    assert P("[1,2]").match("[<int>,<int>,<list>]") == [1, 2, P("[]")]
    assert P("[a,b,c]").match("[a,<list>]") == [P("[b,c]")]


def test_trailing_list_in_a_list_pattern_needs_the_fixed_elements():
    assert P("[1]").match("[<int>,<int>,<list>]") is None
    assert P("[]").match("[<int>,<list>]") is None
    assert P("[b,c]").match("[a,<list>]") is None


def test_list_placeholder_not_last_matches_one_list_element():
    assert P("[[1],2]").match("[<list>,<int>]") == [P("[1]"), 2]
    assert P("[1,2]").match("[<list>,<int>]") is None


def test_trailing_list_extraction_follows_the_elements_before_it():
    assert P("[[1,2,3],4]").match("[[<int>,<list>],<int>]") == [1, P("[2,3]"), 4]


def test_trailing_list_in_fun_needs_at_least_one_remaining_argument():
    assert P("f(1,2)").match("<fun(<int>,<list>)>") == ["f", 1, P("[2]")]
    assert P("f(1)").match("<fun(<int>,<list>)>") is None
    assert P("f(1)").match("<appl(<list>)>") == ["f", P("[1]")]
    assert P('"g"(1,2)').match("<str(<list>)>") == ["g", P("[1,2]")]


def test_list_in_a_literal_application_is_one_list_argument():
    assert P("f(1,[2,3])").match("f(<int>,<list>)") == [1, P("[2,3]")]
    assert P("f(1,2)").match("f(<int>,<list>)") is None


def test_placeholder_matches_a_placeholder():
    assert P("<int>").match("<placeholder>") == [P("<int>")]
    assert P("<f(a)>").match("f(<placeholder>)") is None
    assert P("f(<f(a)>)").match("f(<placeholder>)") == [P("<f(a)>")]


@pytest.mark.parametrize("subject", ["int", "1", "[]", '"<int>"', "placeholder"])
def test_placeholder_matches_nothing_else(subject):
    assert P(subject).match("<placeholder>") is None


@pytest.mark.parametrize("pattern", ["<abc>", "<f(a)>", "<1>", '<"x">', "<[a]>", "<int(1)>", "<<int>>"])
def test_other_placeholder_matches_only_an_equal_placeholder(pattern):
    assert P(pattern).match(pattern) == []


@pytest.mark.parametrize(
    ("subject", "pattern"),
    [
        ("<abd>", "<abc>"),
        ("abc", "<abc>"),
        ('"abc"', "<abc>"),
        ("abc(1)", "<abc>"),
        ("<f(b)>", "<f(a)>"),
        ("1", "<1>"),
        ("int(1)", "<int(1)>"),
        ("<int>", "<<int>>"),
    ],
)
def test_other_placeholder_matches_nothing_else(subject, pattern):
    assert P(subject).match(pattern) is None


def test_placeholders_in_the_subject_are_not_wildcards():
    assert P("<int>").match("<int>") is None
    assert P("f(<term>)").match("f(a)") is None


# --------------------------------------------------------------------------------------------------
# make


@pytest.mark.parametrize(
    ("pattern", "value", "result"),
    [
        ("<int>", 3, "3"),
        ("<int>", -(2**70), str(-(2**70))),
        ("<long>", 2**70, str(2**70)),
        ("<real>", 2.5, "2.5"),
        ("<real>", -1e-300, "-1e-300"),
        ("<bool>", True, "true"),
        ("<bool>", False, "false"),
        ("<str>", "a b", '"a b"'),
        ("<str>", "", '""'),
        ("<str>", 'q"\n', '"q\\"\\n"'),
        ("<fun>", "abc", "abc"),
        ("<appl>", "abc", "abc"),
        ("<id>", "x_-+*$9", "x_-+*$9"),
        ("<placeholder>", P("int"), "<int>"),
        ("<placeholder>", P("f(<int>)"), "<f(<int>)>"),
    ],
)
def test_make_fills_each_placeholder(pattern, value, result):
    assert make(pattern, value) == P(result)


@pytest.mark.parametrize(
    ("value", "result"),
    [
        (P("f(a){b}"), "f(a){b}"),
        (7, "7"),
        (2.5, "2.5"),
        (True, "true"),
        (False, "false"),
        ("s", '"s"'),
        ([1, "a", [2.5, False]], '[1,"a",[2.5,false]]'),
        ([], "[]"),
    ],
)
def test_make_term_takes_an_aterm_or_a_plain_value(value, result):
    assert make("f(<term>)", value) == P(f"f({result})")


def test_make_term_of_an_aterm_keeps_it_as_it_is():
    t = P("g(x{y})")
    assert make("<term>", t) == t


def test_make_str_with_arguments():
    assert make("<str(<int>,<term>)>", "f", 1, "x") == P('"f"(1,"x")')


@pytest.mark.parametrize("head", ["fun", "appl"])
def test_make_fun_and_appl_with_arguments(head):
    assert make(f"<{head}(<int>,<term>)>", "g", 1, P("a")) == P("g(1,a)")
    assert make(f"<{head}(<{head}(<real>)>)>", "g", "h", 2.5) == P("g(h(2.5))")


def test_make_fills_placeholders_left_to_right_at_every_depth():
    t = make(
        "f(<int>,g(<str>,[<real>,<bool>]),<fun(<term>)>,<placeholder>)", 1, "a", 2.5, True, "h", [], P("x")
    )
    assert t == P('f(1,g("a",[2.5,true]),h([]),<x>)')


def test_make_list_takes_an_aterm_list_or_a_python_list():
    assert make("f(<list>)", P("[1,a]")) == P("f([1,a])")
    assert make("f(<list>)", [1, "a"]) == P('f([1,"a"])')
    assert make("<list>", []) == P("[]")


def test_make_trailing_list_in_a_list_pattern_is_spliced():
    assert make("[1,<list>]", [2, 3]) == P("[1,2,3]")
    assert make("[1,<list>]", P("[2,3]")) == P("[1,2,3]")
    assert make("[<int>,<list>]", 1, []) == P("[1]")
    assert make("[<list>]", []) == P("[]")
    assert make("[<list>]", [1]) == P("[1]")


def test_make_list_not_last_in_a_list_is_one_element():
    assert make("[<list>,1]", [2]) == P("[[2],1]")


def test_make_list_outside_a_list_pattern_is_one_list_argument():
    assert make("f(<list>)", [2, 3]) == P("f([2,3])")
    assert make("f(1,<list>)", [2, 3]) == P("f(1,[2,3])")
    assert make("<appl(<int>,<list>)>", "f", 1, [2, 3]) == P("f(1,[2,3])")
    assert make("<list>", [2, 3]) == P("[2,3]")


def test_make_keeps_the_patterns_annotations():
    assert make("f(<int>){a}", 1) == P("f(1){a}")
    assert make("f(<int>{x})", 1) == P("f(1{x})")
    assert make("<int>{a}", 1) == P("1{a}")
    assert make("<str>{a}", "s") == P('"s"{a}')
    assert make("<appl(<int>)>{a}", "g", 1) == P("g(1){a}")
    assert make("[1,<list>]{a}", [2]) == P("[1,2]{a}")
    assert make("g{a}") == P("g{a}")


def test_make_without_placeholders_returns_the_pattern():
    assert make("f(a,[1])") == P("f(a,[1])")


def test_make_pattern_may_be_a_term():
    assert make(P("f(<int>)"), 1) == P("f(1)")


@pytest.mark.parametrize(
    ("pattern", "args"),
    [
        ("<int>", ()),
        ("f(<int>,<int>)", (1,)),
        ("<str(<int>)>", ("f",)),
        ("<int>", (1, 2)),
        ("f", (1,)),
        ("[<list>]", ([], [])),
    ],
)
def test_make_with_the_wrong_number_of_arguments_is_a_type_error(pattern, args):
    with pytest.raises(TypeError):
        make(pattern, *args)


@pytest.mark.parametrize(
    ("pattern", "value"),
    [
        ("<int>", "1"),
        ("<int>", 1.5),
        ("<int>", True),
        ("<long>", None),
        ("<real>", "2.5"),
        ("<real>", None),
        ("<real>", True),
        ("<bool>", 1),
        ("<bool>", "true"),
        ("<str>", 1),
        ("<str>", b"s"),
        ("<str>", P('"s"')),
        ("<fun>", 1),
        ("<appl>", P("f")),
        ("<id>", None),
        ("<list>", 3),
        ("<list>", "abc"),
        ("<list>", P("f")),
        ("<placeholder>", "int"),
        ("<term>", object()),
        ("<term>", None),
        ("<term>", {"a": 1}),
    ],
)
def test_make_with_an_argument_of_the_wrong_type_is_a_type_error(pattern, value):
    with pytest.raises(TypeError, match="."):
        make(pattern, value)


def test_make_str_name_of_the_wrong_type_is_a_type_error():
    with pytest.raises(TypeError):
        make("<str(<int>)>", 1, 1)
    with pytest.raises(TypeError):
        make("<appl(<int>)>", P("f"), 1)


@pytest.mark.parametrize(
    ("pattern", "args"),
    [
        ("<abc>", (1,)),
        ("<abc>", ()),
        ("<f(<int>)>", (1,)),
        ("<1>", (1,)),
        ('<"int">', (1,)),
        ("<int(1)>", (1,)),
    ],
)
def test_make_with_an_unknown_placeholder_is_a_type_error(pattern, args):
    with pytest.raises(TypeError):
        make(pattern, *args)


def test_make_type_error_names_the_placeholder():
    with pytest.raises(TypeError, match="<bool>"):
        make("f(<int>,<bool>)", 1, 2)
    with pytest.raises(TypeError, match="abc"):
        make("<abc>", 1)


def test_make_then_match_gives_back_the_arguments():
    pattern = "f(<int>,<real>,<bool>,<str>,<fun>,<term>,<list>,<placeholder>)"
    args = [1, 2.5, False, "s t", "g", P("h(x)"), P("[1]"), P("int")]
    assert P(str(make(pattern, *args))).match(pattern) == [*args[:-1], P("<int>")]


# --------------------------------------------------------------------------------------------------
# docs/toolbus.md §1.4 Environment


def test_spec_environment_example():
    env = Environment()
    assert env.match("value(N?)", parse("value(42)")) is True
    assert env["N"] == parse("42")
    assert env.match("value(N?)", parse("other(1)")) is False
    assert dict(env) == {"N": parse("42")}
    assert env.substitute("store(N?, 1)") == parse("store(42,1)")


def test_failed_match_leaves_an_empty_environment_empty():
    env = Environment()
    assert env.match("value(N?)", P("other(1)")) is False
    assert len(env) == 0
    assert "N" not in env


def test_variable_matches_any_subterm():
    for text in ["1", "2.5", "a", '"s"', "f(a,b)", "[]", "<int>", "()"]:
        env = Environment()
        assert env.match("x(V?)", P(f"x({text})")) is True
        assert env["V"] == P(text)


def test_variable_binds_the_subterm_as_it_is_with_annotations():
    env = Environment()
    assert env.match("f(X?)", P("f(a{b}){c}")) is True
    assert env["X"] == P("a{b}")
    assert env["X"].annotations == (P("b"),)


def test_variable_at_the_top_binds_the_whole_subject():
    env = Environment()
    assert env.match("X?", P("f(a){b}"))
    assert env["X"] == P("f(a){b}")


def test_several_variables_bind_at_once():
    env = Environment()
    assert env.match("f(X?,[Y?,2],Z?)", P('f(1,[a,2],"s")'))
    assert dict(env) == {"X": P("1"), "Y": P("a"), "Z": P('"s"')}


def test_later_match_overwrites_an_earlier_binding():
    env = Environment()
    assert env.match("value(N?)", P("value(1)"))
    assert env.match("value(N?)", P("value(2)"))
    assert env["N"] == P("2")


def test_match_overwrites_a_binding_of_another_kind():
    env = Environment()
    assert env.match("value(N?)", P("value(1)"))
    assert env.match("value(N?)", P("value([a])"))
    assert env["N"] == P("[a]")


def test_same_variable_twice_must_bind_equal_terms():
    env = Environment()
    assert env.match("f(X?,X?)", P("f(g(a),g(a))")) is True
    assert env["X"] == P("g(a)")
    assert env.match("f(X?,X?)", P("f(1,2)")) is False
    assert env["X"] == P("g(a)")


def test_same_variable_twice_with_an_earlier_binding_still_rebinds():
    env = Environment()
    assert env.match("X?", P("1"))
    assert env.match("f(X?,X?)", P("f(2,2)")) is True
    assert env["X"] == P("2")


def test_bindings_are_committed_only_when_the_whole_match_succeeds():
    env = Environment()
    assert env.match("N?", P("1"))
    assert env.match("f(N?,M?,b)", P("f(2,3,c)")) is False
    assert dict(env) == {"N": P("1")}
    assert env.match("f(N?,M?,X?,X?)", P("f(2,3,4,5)")) is False
    assert dict(env) == {"N": P("1")}


def test_environment_match_needs_same_symbol_and_arity():
    env = Environment()
    assert env.match("f(X?)", P("f(1,2)")) is False
    assert env.match("f(X?)", P('"f"(1)')) is False
    assert env.match("f(X?)", P("g(1)")) is False
    assert env.match("[X?]", P("[1,2]")) is False
    assert len(env) == 0


def test_environment_match_ignores_annotations_at_every_depth():
    env = Environment()
    assert env.match("f(a{p},g(X?){q}){r}", P("f(a{x},g(1){y}){z}")) is True
    assert env["X"] == P("1")


def test_environment_match_placeholders_match_without_binding():
    env = Environment()
    assert env.match("f(<int>,<str>,X?)", P('f(1,"s",b)')) is True
    assert dict(env) == {"X": P("b")}
    assert env.match("f(<int>)", P("f(a)")) is False


def test_environment_match_trailing_list_in_a_list_pattern():
    env = Environment()
    assert env.match("[<int>,<list>]", P("[1,2,3]")) is True
    assert env.match("[X?,<list>]", P("[1]")) is True
    assert dict(env) == {"X": P("1")}
    assert env.match("[<int>,<list>]", P("[]")) is False


def test_environment_match_trailing_list_in_fun():
    env = Environment()
    assert env.match("f(X?,<fun(<int>,<list>)>)", P("f(a,g(1,2))")) is True
    assert env["X"] == P("a")
    assert env.match("<fun(<int>,<list>)>", P("g(1)")) is False


def test_environment_is_a_mapping_of_names_to_terms():
    env = Environment()
    env.match("f(A?,B?)", P("f(1,b)"))
    assert sorted(env) == ["A", "B"]
    assert len(env) == 2
    with pytest.raises(KeyError):
        env["C"]


def test_substitute_replaces_bound_variables():
    env = Environment()
    env.match("v(N?,S?)", P('v(42,"s"{a})'))
    assert env.substitute("store(N?,[S?,N?],1)") == P('store(42,["s"{a},42],1)')


def test_substitute_leaves_unbound_variables():
    env = Environment()
    env.match("v(N?)", P("v(42)"))
    assert env.substitute("f(N?,M?)") == P("f(42,M?)")


def test_substitute_keeps_the_patterns_annotations_and_placeholders():
    env = Environment()
    env.match("v(N?)", P("v(1)"))
    assert env.substitute("f(N?,<int>){a}") == P("f(1,<int>){a}")


def test_substitute_accepts_a_term():
    env = Environment()
    env.match("v(N?)", P("v(1)"))
    assert env.substitute(P("f(N?)")) == P("f(1)")


def test_substitute_of_a_closed_pattern_is_the_pattern():
    assert Environment().substitute("f(a,[1])") == P("f(a,[1])")


def test_environment_bindings_are_terms():
    env = Environment()
    env.match("v(N?)", P("v(1)"))
    assert env["N"] == term(1)
