"""Fuzzing (hypothesis) of everything that reads what others send: ATerm text, the shared textual
format (TAF), the wire protocol's framing, and the vendor API.

What test_aterm_properties.py already covers is not repeated: round trips, arbitrary short text
and one inserted character or one cut. Here the inputs are *mutated* valid terms (several edits of
many kinds), *amplified* ones (a fragment repeated thousands of times -- the shape of every input
that makes a tokenizer backtrack), and TAF with its references; each must come back as a term or a
``ParseError`` -- never another exception -- and in time linear in its length. The long inputs are
read in a child process (``Reader``): a regular expression that backtracks holds the interpreter in
C code, where no timeout of this process can interrupt it, so a hang is killed there and reported.
(Before the tokenizer was fixed, 20,000 trailing blanks, or '"' and 20,000 '\\"', hung here.)

The wire protocol's sans-IO side gets arbitrary bytes in arbitrary chunks and valid frames of
arbitrary messages cut anywhere: only ``ProtocolError`` (toolbus.errors) may come out, and how the
bytes are chunked must not change what comes out. A call whose text has no UTF-8 form (a lone
surrogate) is a ``SignatureError`` that leaves the connection -- and a real tool -- ready.

The vendor API gets arbitrary query strings, tokens, client names and headers through Flask's test
client, on SQLite and on PostgreSQL: never a 5xx, every error in the envelope (or, for a browser, a
page), and every answer one that webapp/openapi.json documents for that path.
"""

from __future__ import annotations

import hashlib
import hmac
import multiprocessing
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import REPO, script_command, write_tools
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from openapi_support import DOCUMENT, documented, response_schema, validate
from portal_support import (
    PORTAL_ENVIRONMENT,
    REDIS_URL,
    add_client,
    add_tool,
    add_user,
    redis_client,
    unavailable,
)
from sqlalchemy import create_engine, select
from sqlalchemy.engine import make_url
from test_aterm_properties import aterms

from toolbus import load_tools, start_tool
from toolbus.aterm import ParseError, make, parse, read_taf, write_taf
from toolbus.errors import ProtocolError, SignatureError
from toolbus.wire import (
    HEADER_LENGTH,
    BusSide,
    Connect,
    Disconnect,
    Emission,
    Eval,
    FrameReader,
    Interface,
    ToolSide,
    ToolState,
    Value,
    Void,
    frame,
    to_term,
)
from webapp import create_app, lifecycle
from webapp.lifecycle import Status
from webapp.models import Exam, User

FUZZ = settings(
    max_examples=300,
    deadline=None,  # time is asserted per parse instead, with a budget that grows with the input
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: A parse may take this long per character, plus a constant: generous for a loaded machine, and
#: still far below what a quadratic (or worse) tokenizer needs for the amplified inputs below.
SECONDS_PER_CHAR = 20e-6
SECONDS_BASE = 1.0

#: How long past its budget a parse in the child process may run before the child is killed.
HANG_SLACK = 10.0

ATERM_CHARS = list('()[]{}<>,"\\ \t\r\n0123456789abcxyzAZLl.eE-+?#_*$!/@é²٣\x00\x7f')


def parse_or_parse_error(read, text: str):
    """``read(text)``: a term, or a ParseError that says where; nothing else, and in time."""
    started = time.perf_counter()
    try:
        result = read(text)
    except ParseError as e:
        result = e
        assert 0 <= e.position <= len(text), (e.position, len(text))
        assert e.expected and str(e)
    elapsed = time.perf_counter() - started
    assert elapsed < SECONDS_BASE + SECONDS_PER_CHAR * len(text), (
        f"{elapsed:.2f} s for {len(text)} characters: {text[:60]!r}..."
    )
    return result


# ---- ATerm text: mutations --------------------------------------------------------------------------

edits = st.lists(
    st.tuples(
        st.sampled_from(["insert", "delete", "duplicate", "swap", "replace", "repeat"]),
        st.integers(min_value=0, max_value=10_000),
        st.integers(min_value=0, max_value=40),
        st.text(alphabet=ATERM_CHARS, min_size=1, max_size=6),
    ),
    min_size=1,
    max_size=6,
)


def mutate(text: str, steps) -> str:
    """``text`` after a sequence of edits, each at a position taken modulo the current length."""
    for kind, at, span, junk in steps:
        at %= len(text) + 1
        end = min(len(text), at + span)
        if kind == "insert":
            text = text[:at] + junk + text[at:]
        elif kind == "delete":
            text = text[:at] + text[end:]
        elif kind == "duplicate":
            text = text[:end] + text[at:end] + text[end:]
        elif kind == "swap" and at + 1 < len(text):
            text = text[:at] + text[at + 1] + text[at] + text[at + 2 :]
        elif kind == "replace" and at < len(text):
            text = text[:at] + junk[0] + text[at + 1 :]
        elif kind == "repeat":
            text = text[:at] + text[at:end] * min(span, 20) + text[end:]
    return text


@FUZZ
@given(aterms, edits)
def test_a_mutated_term_parses_or_is_a_parse_error(term, steps):
    result = parse_or_parse_error(parse, mutate(str(term), steps))
    if not isinstance(result, ParseError):
        assert parse(str(result)) == result


@FUZZ
@given(aterms, edits)
def test_a_mutated_shared_text_reads_or_is_a_parse_error(term, steps):
    result = parse_or_parse_error(read_taf, mutate(write_taf(term), steps))
    if not isinstance(result, ParseError):
        assert read_taf(write_taf(result)) == result


@FUZZ
@given(st.text(alphabet=st.sampled_from([*ATERM_CHARS, *"#ABCDEFGH+/"]), max_size=80))
@example("!#A")
@example("!f(#A)")
@example("![a,#B]")
@example("!#" + "/" * 40)
def test_any_text_read_as_taf_is_a_term_or_a_parse_error(text):
    parse_or_parse_error(read_taf, text)
    parse_or_parse_error(read_taf, "!" + text)


# ---- ATerm text: amplification (no hang) ----------------------------------------------------------------


def _read_in_child(reader: str, text: str) -> tuple:
    """Runs in the child process: what reading ``text`` came to, and how long it took."""
    read = {"parse": parse, "read_taf": read_taf}[reader]
    started = time.perf_counter()
    try:
        term = read(text)
    except ParseError as e:
        outcome: tuple = ("parse-error", e.position, e.expected)
    except BaseException as e:  # noqa: BLE001 -- any other exception is what the test looks for
        outcome = ("other", f"{type(e).__name__}: {e}"[:300])
    else:
        outcome = ("term", str(term) == str(read(str(term) if reader == "parse" else write_taf(term))))
    return outcome, time.perf_counter() - started


class Reader:
    """Parses in a child process, so that a parse that hangs -- inside a regular expression, where
    no timeout in this process can interrupt it -- is killed and reported instead of stalling the run."""

    def __init__(self) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._pool = self._context.Pool(1)

    def read(self, reader: str, text: str) -> None:
        budget = SECONDS_BASE + SECONDS_PER_CHAR * len(text)
        pending = self._pool.apply_async(_read_in_child, (reader, text))
        try:
            (kind, *details), elapsed = pending.get(timeout=budget + HANG_SLACK)
        except multiprocessing.TimeoutError:
            self._pool.terminate()
            self._pool = self._context.Pool(1)
            raise AssertionError(f"{reader} did not finish {len(text)} characters in {budget + HANG_SLACK:.0f} s: "
                                 f"{text[:60]!r}...") from None  # fmt: skip
        assert kind in ("term", "parse-error"), details
        if kind == "parse-error":
            position, expected = details
            assert 0 <= position <= len(text) and expected
        else:
            assert details == [True], "the term read back differently"
        assert elapsed < budget, f"{elapsed:.2f} s for {len(text)} characters: {text[:60]!r}..."

    def close(self) -> None:
        self._pool.terminate()
        self._pool.join()


@pytest.fixture(scope="module", name="reader")
def reader_fixture() -> Iterator[Reader]:
    reader = Reader()
    yield reader
    reader.close()


@settings(FUZZ, max_examples=150)
@given(
    prefix=st.text(alphabet=ATERM_CHARS, max_size=8),
    fragment=st.text(alphabet=ATERM_CHARS, min_size=1, max_size=4),
    times=st.integers(min_value=1_000, max_value=20_000),
    suffix=st.text(alphabet=ATERM_CHARS, max_size=8),
)
@example(prefix="a", fragment=" ", times=20_000, suffix="")  # trailing blanks: cubic before the fix
@example(prefix="f(a,", fragment=" \n", times=10_000, suffix="")
@example(prefix='"', fragment='\\"', times=20_000, suffix="")  # an open quote: quadratic before the fix
@example(prefix="", fragment='"', times=20_000, suffix="")
@example(prefix="", fragment="[", times=20_000, suffix="")
@example(prefix="", fragment="f(", times=10_000, suffix="")
@example(prefix="[", fragment="1,", times=20_000, suffix="]")
@example(prefix="", fragment="a{", times=10_000, suffix="")
@example(prefix="", fragment="<", times=20_000, suffix="")
@example(prefix="", fragment="9", times=20_000, suffix="")
@example(prefix="", fragment="1e", times=10_000, suffix="")
def test_a_fragment_repeated_thousands_of_times_is_read_in_linear_time(
    reader, prefix, fragment, times, suffix
):
    text = prefix + fragment * times + suffix
    reader.read("parse", text)
    reader.read("read_taf", "!" + text)


@pytest.mark.parametrize(
    "text",
    [
        "a" + " " * 1_000_000,
        '"' + '\\"' * 500_000,
        "f(" + "x," * 300_000 + "x" + " " * 300_000,
        "[" * 500_000,
        '"' * 1_000_001,
        ",\t" * 500_000,
    ],
    ids=[
        "trailing-blanks",
        "open-quote-escapes",
        "long-args-then-blanks",
        "open-brackets",
        "quotes",
        "commas",
    ],
)
def test_a_megabyte_of_hostile_text_is_refused_in_about_a_second(reader, text):
    reader.read("parse", text)


# ---- wire framing ---------------------------------------------------------------------------------------

chunks = st.lists(st.binary(max_size=40), max_size=12)
digits_then_junk = st.builds(
    lambda n, rest: b"%011d:" % n + rest,
    st.integers(min_value=0, max_value=10**11 - 1),
    st.binary(max_size=60),
)


def drain(read_next) -> list:
    """Every message ``read_next`` gives until it has none; a ProtocolError ends it (kept last)."""
    out: list = []
    while True:
        try:
            message = read_next()
        except ProtocolError as e:
            return [*out, ("error", str(e))]
        if message is None:
            return out
        out.append(message)
        if isinstance(message, Disconnect):
            return out


def refused(read: list) -> bool:
    return bool(read) and isinstance(read[-1], tuple)


@FUZZ
@given(st.one_of(chunks, st.lists(digits_then_junk, max_size=4)))
def test_any_bytes_in_any_chunks_give_terms_or_a_protocol_error(parts):
    reader = FrameReader(max_message=1 << 16)
    for part in parts:
        reader.feed(part)
        if refused(drain(reader.next_term)):
            return


@FUZZ
@given(st.lists(st.one_of(st.binary(max_size=40), digits_then_junk), max_size=8), st.booleans())
def test_the_bus_side_takes_any_bytes_with_only_protocol_errors(parts, closed):
    bus = BusSide("fuzzed")
    for part in [*parts, *([b""] if closed else [])]:
        bus.receive_data(part)
        if refused(drain(bus.next_message)):
            return


@FUZZ
@given(st.lists(st.one_of(st.binary(max_size=40), digits_then_junk), max_size=8))
def test_the_tool_side_takes_any_bytes_with_only_protocol_errors(parts):
    tool = ToolSide()
    for part in parts:
        tool.receive_data(part)
        if refused(drain(tool.next_message)):
            return


def has_utf8_text(term) -> bool:
    try:
        str(term).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


sendable = aterms.filter(has_utf8_text)  # a tool cannot send the others (see the next test but one)
tool_messages = st.one_of(
    sendable.map(Value),
    sendable.map(Emission),
    st.just(Void()),
    st.just(Disconnect()),
    st.builds(Connect, st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True), st.integers(0, 10**6)),
)


@FUZZ
@given(st.lists(tool_messages, max_size=6), st.lists(st.integers(min_value=1, max_value=64), max_size=20))
def test_how_the_bytes_are_chunked_does_not_change_what_the_bus_reads(messages, cuts):
    """Valid frames of any tool messages, in any order: delivered at once or cut anywhere, the bus
    reads the same messages and refuses at the same point with the same error."""
    data = b"".join(frame(to_term(m)) for m in messages)
    whole = BusSide("fuzzed")
    if data:  # b"" would mean the connection closed
        whole.receive_data(data)
    expected = drain(whole.next_message)
    pieces, at = [], 0
    for cut in cuts:
        pieces.append(data[at : at + cut])
        at += cut
    pieces.append(data[at:])
    chunked = BusSide("fuzzed")
    got: list = []
    for piece in pieces:
        if piece:
            chunked.receive_data(piece)
            got += drain(chunked.next_message)
            if refused(got) or (got and isinstance(got[-1], Disconnect)):
                break
    assert got == expected


@FUZZ
@given(st.text(min_size=1, max_size=5), st.sampled_from(["\ud800", "\udfff", "\udbff\udc00"]))
def test_a_call_without_utf8_text_is_refused_and_the_connection_stays_ready(text, surrogate):
    """A quoted name may hold a lone surrogate (JSON carries them) but UTF-8 cannot: sending such a
    call is a SignatureError and changes nothing, so the next call goes out as usual."""
    bus = BusSide("fuzzed")
    bus.receive_data(frame(to_term(Connect("fuzzed", 1))))
    assert drain(bus.next_message) == [Connect("fuzzed", 1)]
    bus.send(Interface((), ()))
    bus.receive_data(frame(to_term(Void())))
    assert drain(bus.next_message) == [Void()]
    call = Eval(make("f(<str>)", text[:2] + surrogate + text[2:]))
    with pytest.raises(SignatureError, match="cannot be sent to a tool: its text is not UTF-8"):
        bus.send(call)
    assert bus.state is ToolState.READY
    assert bus.send(Eval(parse("f(1)"))) == frame(parse("rec-eval(f(1))"))
    assert bus.state is ToolState.BLOCKED_EVAL


def test_a_call_without_utf8_text_fails_alone_and_the_external_tool_serves_the_next(tmp_path, monkeypatch):
    """End to end, with a real tool process: before the fix the call raised UnicodeEncodeError
    after the bus had counted it as sent, and every later call timed out "before it was sent"."""
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    )
    path = write_tools(tmp_path, {"probe": {"tool_name": script_command("probe.py"), "host_name": "localhost",
                                            "function_signatures": ["eval(stamp, <list(<int>)>)", "eval(fail(<str>), <int>)"]}})  # fmt: skip
    tool = start_tool(load_tools(path)["probe"])
    try:
        with pytest.raises(SignatureError, match="cannot be sent to a tool"):
            tool.eval(make("fail(<str>)", "lone \ud800"), timeout=10)
        pid, served = tool.eval("stamp", timeout=10).match("[<int>,<int>]")
        assert (pid, served) == (tool.pid, 1)  # the same process; the refused call never reached it
    finally:
        tool.terminate("t", "end of test")


def test_a_header_announcing_a_huge_message_is_refused_before_its_body_arrives():
    reader = FrameReader()
    reader.feed(b"99999999999:")
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        reader.next_term()
    assert reader.pending == HEADER_LENGTH  # nothing was allocated for the announced body


# ---- the vendor API -----------------------------------------------------------------------------------

API_PATHS = ["/fetch-token/", "/result/", "/.api/toolcall/v2/"]
SECRET = "a fuzzed client's secret"
ACCEPTS = [
    None, "*/*", "application/json", "text/html", "text/html,application/xhtml+xml,*/*;q=0.8",
    "application/json;q=0.1, text/html;q=0.2", "text/*", "image/png", "", ";;;", "text/html;q=abc",
]  # fmt: skip

texts = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="ascii"), max_size=300),
    st.sampled_from(
        ["", " ", "\x00", "vendor", "secured", "nobody", "R1", "A" * 43, "é", "\u202e", "%00", "Token"]
    ),
)


@st.composite
def api_requests(draw, tokens):
    """(path, query pairs, headers): mostly plausible, often broken, sometimes absurd."""
    path = draw(st.sampled_from(API_PATHS))
    query = draw(
        st.lists(
            st.tuples(st.sampled_from(["access_token", "client", "_method", "_scheme", "x"]), texts),
            max_size=4,
        )
    )
    token_kind = draw(st.sampled_from(["none", "text", "start-token", "secured-start-token"]))
    token = {"none": None, "text": draw(texts), "start-token": None, "secured-start-token": None}[token_kind]
    if token_kind.endswith("start-token"):
        token = tokens(secured=token_kind.startswith("secured"))
    where = draw(st.sampled_from(["query", "x-access-token", "authorization", "authorization-token"]))
    headers: dict[str, str] = {}
    if token is not None:
        if where == "query":
            query.insert(0, ("access_token", token))
        elif where == "x-access-token":
            headers["X-Access-Token"] = token
        else:
            headers["Authorization"] = (
                f'Token token="{token}"' if where == "authorization-token" else f"Token {token}"
            )
    if draw(st.booleans()):
        query.append(("client", draw(st.sampled_from(["vendor", "secured"]) | texts)))
    accept = draw(st.sampled_from(ACCEPTS))
    if accept is not None:
        headers["Accept"] = accept
    auth = draw(
        st.one_of(
            st.none(),
            texts,
            st.builds(
                lambda name, skew, signature: f"{name} {int(time.time()) + skew} {signature}",
                st.sampled_from(["secured", "vendor", "", "é"]) | texts,
                st.integers(min_value=-400, max_value=400),
                st.one_of(st.text(max_size=70), st.from_regex(r"[0-9a-fA-F]{64}", fullmatch=True)),
            ),
        )
    )
    if auth is not None:
        headers["X-Toolcall-Auth"] = auth
    # Header values travel as latin-1: what cannot be written so is not a request anyone can send.
    headers = {k: v for k, v in headers.items() if _latin1(v) and "\n" not in v and "\r" not in v}
    return path, query, headers


def _latin1(value: str) -> bool:
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


@pytest.fixture(scope="module", params=["sqlite", "postgresql"], name="api")
def api_fixture(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A portal on each database in turn, with a client without a secret and one with one."""
    directory = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    admin = None
    if request.param == "sqlite":
        url = f"sqlite:///{directory / 'portal.sqlite3'}"
    else:
        server = request.getfixturevalue("postgres_url")
        schema = f"t_{secrets.token_hex(6)}"
        admin = create_engine(server, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        url = (
            make_url(server)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    broker = redis_client()
    try:
        broker.ping()
    except Exception as e:  # noqa: BLE001 -- whatever keeps Redis away
        unavailable(f"Redis is not reachable at {REDIS_URL}: {e}")
    broker.flushdb()
    with pytest.MonkeyPatch.context() as environment:
        for variable in PORTAL_ENVIRONMENT:
            environment.delenv(variable, raising=False)
        app = create_app(
            {"INSTANCE_PATH": Path(directory) / "instance", "DATABASE_URL": url, "REDIS_URL": REDIS_URL,
             "SECRET_KEY": "a fuzzing key", "TOOLCALL_RATELIMIT": False}
        )  # fmt: skip
    app.extensions["db"].upgrade()
    with app.extensions["db"].session() as session:
        vendor = add_client(session, "vendor")
        add_tool(session, vendor, "excel")
        secured = add_client(session, "secured")
        secured.secret = SECRET
        add_tool(session, secured, "word")
        add_user(session, "candidate")
    try:
        yield app
    finally:
        app.extensions["db"].dispose()
        app.extensions["celery"].close()
        broker.flushdb()
        broker.close()
        if admin is not None:
            admin.dispose()


def issue(app):
    """A function making a fresh start token (for the client with a secret, or the one without)."""

    def make(secured: bool) -> str:
        with app.extensions["db"].session() as session:
            tool = session.scalar(select(Exam).where(Exam.slug == ("word" if secured else "excel")))
            toolcall = lifecycle.create(session, tool, session.scalar(select(User)))
            lifecycle.advance(session, toolcall, (Status.START_TK_SENT, "token issued"))
            toolcall_id = toolcall.id
        return app.extensions["start_tokens"].issue(toolcall_id)

    return make


def check_documented(path: str, response) -> None:
    status = response.status_code
    assert status < 500, response.data[:500]
    if response.mimetype == "application/json":
        body = response.get_json()
        code = body["data"]["error"] if isinstance(body, dict) and body.get("type") == "error" else None
        if status >= 400:
            assert code is not None, body
        assert documented(path, status, "application/json", code) == []
        assert validate(body, response_schema(path, status)) == [], body
    else:
        assert response.mimetype == "text/html", response.mimetype
        assert status != 200 or path == "/result/", "only /result/ has a page for a success"
        assert documented(path, status, "text/html") == []


@settings(FUZZ, max_examples=200)
@given(data=st.data())
def test_the_vendor_api_answers_anything_with_a_documented_answer(api, data):
    path, query, headers = data.draw(api_requests(issue(api)))
    response = api.test_client().get(path, query_string=query, headers=headers)
    check_documented(path, response)
    if headers.get("Accept") == "application/json" or "Accept" not in headers:
        assert response.mimetype == "application/json"  # a program asking for JSON never gets a page


def test_client_auth_with_any_characters_in_its_signature_is_a_401_not_a_500(api):
    target_token = issue(api)(secured=True)
    for signature in ["é" * 64, "\x00" * 64, "ＡＢ" * 32, "0" * 64 + "é", "é"]:
        header = f"secured {int(time.time())} {signature}"
        response = api.test_client().get(
            f"/fetch-token/?access_token={target_token}", headers={"X-Toolcall-Auth": header}
        )
        assert response.status_code == 401 and response.json["data"]["error"] == "client-auth-failed"
    # And the token survived every try: the right signature still gets the start data.
    target = f"/fetch-token/?access_token={target_token}"
    stamp = int(time.time())
    digest = hmac.new(SECRET.encode(), f"{stamp}\nGET\n{target}".encode(), hashlib.sha256).hexdigest()
    response = api.test_client().get(target, headers={"X-Toolcall-Auth": f"secured {stamp} {digest}"})
    assert response.status_code == 200


@pytest.mark.parametrize("name", ["\x00", "vendor\x00", "\x00" * 300])
def test_a_client_name_with_a_nul_character_is_an_unknown_client(api, name):
    response = api.test_client().get("/result/", query_string={"access_token": "R1", "client": name})
    assert response.status_code == 404 and response.json["data"]["error"] == "unknown-client"


@pytest.mark.parametrize(
    "extra", ["_method=POST", "_scheme=javascript", "_external=1&_scheme=javascript", "_anchor=x"]
)
def test_url_building_words_in_the_query_do_not_reach_the_result_page(api, extra):
    response = api.test_client().get(
        f"/result/?access_token=R1&client=vendor&{extra}", headers={"Accept": "text/html"}
    )
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert b"javascript" not in response.data and b"#x" not in response.data


def test_the_documented_paths_are_the_fuzzed_ones():
    assert set(API_PATHS) <= set(DOCUMENT["paths"])
