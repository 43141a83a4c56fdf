"""The ToolCall lifecycle (docs/api.md §6): one transition table, checked on every change, logged, safe
under concurrency. The database tests run on SQLite and on PostgreSQL."""

from __future__ import annotations

import re
import threading

import pytest
from helpers import HAPPY_LOG
from portal_support import (
    add_client,
    add_tool,
    add_user,
)
from sqlalchemy import func, select

from webapp.lifecycle import (
    ConcurrentTransition,
    IllegalTransition,
    Status,
    advance,
    advance_many,
    check,
    compact_counts,
    counts,
    create,
)
from webapp.models import StatusCount, ToolCall, ToolCallLog

#: The statuses, with the original's names (docs/api.md §6).
STATUSES = [
    "initial",
    "start-tk-sent",
    "start-data-sent",
    "start-tk-err",
    "result-tk-received",
    "tool-timeout-err",
    "result-received-ok",
    "result-received-err",
    "result-saved",
    "finished-ok",
    "finished-err",
]

#: The docs/api.md §6 table, row by row (not taken from the code's table).
ALLOWED = {
    ("initial", "start-tk-sent"),
    ("start-tk-sent", "start-data-sent"),
    ("start-tk-sent", "start-tk-err"),
    ("start-data-sent", "result-tk-received"),
    ("start-data-sent", "tool-timeout-err"),
    ("result-tk-received", "result-received-ok"),
    ("result-tk-received", "result-received-err"),
    ("result-received-ok", "result-saved"),
    ("result-saved", "finished-ok"),
    # superseded: the three open states
    ("initial", "finished-err"),
    ("start-tk-sent", "finished-err"),
    ("start-data-sent", "finished-err"),
    # the error states end at once
    ("start-tk-err", "finished-err"),
    ("tool-timeout-err", "finished-err"),
    ("result-received-err", "finished-err"),
    # a late result, or a failed one fetched again
    ("finished-err", "result-tk-received"),
}

PAIRS = [(current, new) for current in STATUSES for new in STATUSES]


def statuses_in(message: str) -> set[str]:
    return set(re.findall(r"[a-z]+(?:-[a-z]+)*", message))


def start(database, username: str = "candidate", slug: str = "excel") -> int:
    """A committed attempt in ``initial``; its id."""
    with database.session() as session:
        tool = add_tool(session, add_client(session, f"vendor-{slug}"), slug)
        return create(session, tool, add_user(session, username)).id


def walk(database, toolcall_id: int, *statuses: str) -> None:
    """Advance a ToolCall through ``statuses``, committed."""
    with database.session() as session:
        toolcall = session.get(ToolCall, toolcall_id)
        for status in statuses:
            advance(session, toolcall, (status, f"to {status}"))


def logged(database, toolcall_id: int) -> list[tuple[str, str]]:
    """(status, details) of the ToolCall's log rows, in order."""
    with database.session() as session:
        rows = session.scalars(
            select(ToolCallLog).where(ToolCallLog.toolcall_id == toolcall_id).order_by(ToolCallLog.id)
        )
        return [(row.status, row.details) for row in rows]


def read(database, toolcall_id: int) -> ToolCall:
    with database.session() as session:
        return session.get(ToolCall, toolcall_id)


# ---- the table --------------------------------------------------------------------------------------


def test_the_statuses_keep_the_original_names():
    assert sorted(Status) == sorted(STATUSES)


@pytest.mark.parametrize(("current", "new"), PAIRS, ids=[f"{c}->{n}" for c, n in PAIRS])
def test_check_accepts_exactly_the_transitions_of_the_spec_table(current, new):
    if (current, new) in ALLOWED:
        check(current, new)
        return
    with pytest.raises(IllegalTransition) as raised:
        check(current, new)
    assert isinstance(raised.value, ValueError)
    allowed_here = {n for c, n in ALLOWED if c == current}
    named = statuses_in(str(raised.value))
    assert {current, new} <= named, f"the message names neither or one of {current}, {new}: {raised.value}"
    assert allowed_here <= named, (
        f"the message does not name the allowed moves {allowed_here}: {raised.value}"
    )


def test_check_says_when_a_status_may_not_move_at_all():
    with pytest.raises(IllegalTransition, match="nothing"):
        check("finished-ok", "finished-err")


@pytest.mark.parametrize(("current", "new"), [("initial", "done"), ("started", "initial")])
def test_check_refuses_an_unknown_status_by_name(current, new):
    with pytest.raises(IllegalTransition, match="started|done") as raised:
        check(current, new)
    assert "start-tk-sent" in str(raised.value), "the message lists the statuses there are"


# ---- create -----------------------------------------------------------------------------------------


def test_create_starts_in_initial_with_an_initial_log_row(database):
    toolcall_id = start(database)
    toolcall = read(database, toolcall_id)
    assert toolcall.status == "initial"
    assert toolcall.ended is None
    assert [status for status, _ in logged(database, toolcall_id)] == ["initial"]


def test_create_numbers_the_attempts_per_user_and_tool(database):
    with database.session() as session:
        client = add_client(session)
        excel, word = add_tool(session, client, "excel"), add_tool(session, client, "word")
        ada, bob = add_user(session, "ada"), add_user(session, "bob")
        attempts = [
            create(session, excel, ada).attempt,
            create(session, excel, ada).attempt,
            create(session, excel, bob).attempt,
            create(session, word, ada).attempt,
            create(session, excel, ada).attempt,
        ]
    assert attempts == [1, 2, 1, 1, 3]


# ---- advance ----------------------------------------------------------------------------------------


def test_advance_writes_one_log_row_with_its_details(database):
    toolcall_id = start(database)
    with database.session() as session:
        advance(session, session.get(ToolCall, toolcall_id), (Status.START_TK_SENT, "token issued"))
    assert logged(database, toolcall_id)[1:] == [("start-tk-sent", "token issued")]
    assert read(database, toolcall_id).status == "start-tk-sent"


def test_the_happy_path_logs_exactly_the_seven_statuses(database):
    toolcall_id = start(database)
    walk(database, toolcall_id, *HAPPY_LOG[1:])
    assert [status for status, _ in logged(database, toolcall_id)] == HAPPY_LOG
    assert read(database, toolcall_id).status == "finished-ok"


def test_ended_is_set_only_when_finished_ok(database):
    toolcall_id = start(database)
    walk(database, toolcall_id, *HAPPY_LOG[1:-1])
    assert read(database, toolcall_id).ended is None
    walk(database, toolcall_id, "finished-ok")
    assert read(database, toolcall_id).ended is not None


@pytest.mark.parametrize("open_status", ["initial", "start-tk-sent", "start-data-sent"])
def test_a_superseded_attempt_is_finished_err_with_ended_set(database, open_status):
    toolcall_id = start(database)
    walk(database, toolcall_id, *HAPPY_LOG[1 : HAPPY_LOG.index(open_status) + 1])
    walk(database, toolcall_id, "finished-err")
    toolcall = read(database, toolcall_id)
    assert (toolcall.status, toolcall.ended is not None) == ("finished-err", True)
    assert logged(database, toolcall_id)[-1] == ("finished-err", "to finished-err")


@pytest.mark.parametrize(
    ("error", "before"),
    [
        ("start-tk-err", ["start-tk-sent"]),
        ("tool-timeout-err", ["start-tk-sent", "start-data-sent"]),
        ("result-received-err", ["start-tk-sent", "start-data-sent", "result-tk-received"]),
    ],
)
def test_an_error_state_moves_on_to_finished_err_at_once(database, error, before):
    toolcall_id = start(database)
    walk(database, toolcall_id, *before)
    with database.session() as session:
        advance(session, session.get(ToolCall, toolcall_id), (error, "the reason"))
    toolcall = read(database, toolcall_id)
    assert (toolcall.status, toolcall.ended is not None) == ("finished-err", True)
    assert logged(database, toolcall_id)[len(before) + 1 :] == [
        (error, "the reason"),
        ("finished-err", "the reason"),
    ]


def test_an_illegal_advance_raises_and_changes_nothing(database):
    toolcall_id = start(database)
    with database.session() as session:
        toolcall = session.get(ToolCall, toolcall_id)
        with pytest.raises(IllegalTransition):
            advance(session, toolcall, (Status.RESULT_SAVED, "skipping ahead"))
    toolcall = read(database, toolcall_id)
    assert (toolcall.status, toolcall.ended) == ("initial", None)
    assert [status for status, _ in logged(database, toolcall_id)] == ["initial"]


def test_a_late_result_reopens_a_finished_err_attempt(database):
    toolcall_id = start(database)
    walk(database, toolcall_id, "start-tk-sent", "start-data-sent", "finished-err")
    walk(database, toolcall_id, "result-tk-received")
    assert read(database, toolcall_id).status == "result-tk-received"
    assert [status for status, _ in logged(database, toolcall_id)][-2:] == [
        "finished-err",
        "result-tk-received",
    ]


# ---- concurrency ------------------------------------------------------------------------------------


def test_of_two_sessions_moving_the_same_toolcall_only_the_first_succeeds(database):
    toolcall_id = start(database)
    walk(database, toolcall_id, "start-tk-sent", "start-data-sent")
    with database.sessions() as first, database.sessions() as second:
        # Both read the attempt in start-data-sent, each on its own connection ...
        mine, theirs = first.get(ToolCall, toolcall_id), second.get(ToolCall, toolcall_id)
        assert mine.status == theirs.status == "start-data-sent"
        assert (
            first.connection().connection.dbapi_connection
            is not second.connection().connection.dbapi_connection
        )
        # ... a result is attributed in one, the sweep times the attempt out in the other.
        advance(first, mine, (Status.RESULT_TK_RECEIVED, "result attributed"))
        first.commit()
        with pytest.raises(ConcurrentTransition):
            advance(second, theirs, (Status.TOOL_TIMEOUT_ERR, "deadline passed"))
        second.commit()  # whatever the loser had pending would be written now: nothing
    assert read(database, toolcall_id).status == "result-tk-received"
    assert [status for status, _ in logged(database, toolcall_id)] == [
        "initial",
        "start-tk-sent",
        "start-data-sent",
        "result-tk-received",
    ]


def test_the_loser_of_a_race_reads_the_winners_status_afterwards(database):
    toolcall_id = start(database)
    walk(database, toolcall_id, "start-tk-sent")
    with database.sessions() as first, database.sessions() as second:
        mine, theirs = first.get(ToolCall, toolcall_id), second.get(ToolCall, toolcall_id)
        advance(first, mine, (Status.START_DATA_SENT, "start data fetched"))
        first.commit()
        with pytest.raises(ConcurrentTransition):
            advance(second, theirs, (Status.START_TK_ERR, "token expired"))
        assert theirs.status == "start-data-sent"


def test_of_two_threads_racing_to_move_the_same_toolcall_exactly_one_wins(database):
    toolcall_id = start(database)
    walk(database, toolcall_id, "start-tk-sent", "start-data-sent")
    targets = [Status.RESULT_TK_RECEIVED, Status.TOOL_TIMEOUT_ERR]
    barrier = threading.Barrier(len(targets))
    outcomes: dict[Status, str] = {}

    def move(target: Status) -> None:
        with database.sessions() as session:
            toolcall = session.get(ToolCall, toolcall_id)
            assert toolcall.status == "start-data-sent"
            barrier.wait(timeout=10)
            try:
                advance(session, toolcall, (target, "racing"))
                session.commit()
                outcomes[target] = "won"
            except ConcurrentTransition:
                session.rollback()
                outcomes[target] = "lost"

    threads = [threading.Thread(target=move, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=40)
    assert sorted(outcomes.values()) == ["lost", "won"]
    winner = next(target for target, outcome in outcomes.items() if outcome == "won")
    expected = {
        Status.RESULT_TK_RECEIVED: ["result-tk-received"],
        Status.TOOL_TIMEOUT_ERR: ["tool-timeout-err", "finished-err"],
    }
    assert [status for status, _ in logged(database, toolcall_id)][3:] == expected[winner]


# ---- many at once -----------------------------------------------------------------------------------


def started(database, n: int, *statuses: str) -> list[int]:
    """``n`` attempts of one user each, moved through ``statuses``; their ids."""
    ids = [start(database, f"user-{i}", f"exam-{i}") for i in range(n)]
    for toolcall_id in ids:
        walk(database, toolcall_id, *statuses)
    return ids


def test_advance_many_moves_each_toolcall_and_logs_each_step_for_each(database):
    ids = started(database, 3, "start-tk-sent")
    with database.begin() as connection:
        moved = advance_many(connection, ids, Status.START_TK_SENT, (Status.START_TK_ERR, "expired"))
    assert moved == sorted(ids)
    for toolcall_id in ids:
        assert logged(database, toolcall_id)[-2:] == [
            ("start-tk-err", "expired"),
            ("finished-err", "expired"),
        ]
        assert read(database, toolcall_id).status == "finished-err"
        assert read(database, toolcall_id).ended is not None


def test_advance_many_leaves_a_toolcall_another_process_moved_and_says_which_it_moved(database):
    ids = started(database, 3, "start-tk-sent")
    walk(database, ids[1], "start-data-sent")  # the vendor fetched its start data meanwhile
    with database.begin() as connection:
        moved = advance_many(connection, ids, Status.START_TK_SENT, (Status.START_TK_ERR, "expired"))
    assert moved == [ids[0], ids[2]]
    assert read(database, ids[1]).status == "start-data-sent"
    assert [status for status, _ in logged(database, ids[1])] == [
        "initial",
        "start-tk-sent",
        "start-data-sent",
    ]


def test_advance_many_refuses_a_step_the_table_does_not_allow_and_changes_nothing(database):
    ids = started(database, 2, "start-tk-sent")
    with pytest.raises(IllegalTransition), database.begin() as connection:
        advance_many(connection, ids, Status.START_TK_SENT, (Status.FINISHED_OK, "no"))
    assert {read(database, i).status for i in ids} == {"start-tk-sent"}


# ---- counts by status -------------------------------------------------------------------------------


def grouped(database) -> dict[str, int]:
    """The ToolCalls by status, counted the slow way."""
    with database.session() as session:
        return dict(session.execute(select(ToolCall.status, func.count()).group_by(ToolCall.status)).all())


def counted(database) -> dict[str, int]:
    with database.session() as session:
        return counts(session)


def test_the_counts_follow_every_kind_of_change(database):
    ids = started(database, 4, "start-tk-sent")
    walk(database, ids[0], "start-data-sent", "result-tk-received", "result-received-ok", "result-saved",
         "finished-ok")  # fmt: skip
    walk(database, ids[1], "start-tk-err")  # ends in finished-err at once
    walk(database, ids[2], "finished-err", "result-tk-received")  # a late result
    with database.begin() as connection:
        advance_many(connection, [ids[3]], Status.START_TK_SENT, (Status.FINISHED_ERR, "superseded"))
    assert (
        counted(database)
        == grouped(database)
        == {"finished-ok": 1, "finished-err": 2, "result-tk-received": 1}
    )


def test_compacting_the_counts_keeps_them_and_leaves_one_row_per_status(database):
    started(database, 5, "start-tk-sent", "start-data-sent")
    before = counted(database)
    with database.begin() as connection:
        compact_counts(connection)
    with database.session() as session:
        rows = session.execute(
            select(StatusCount.status, StatusCount.delta).order_by(StatusCount.status)
        ).all()
    assert counted(database) == before == grouped(database) == {"start-data-sent": 5}
    assert [tuple(r) for r in rows] == [("start-data-sent", 5)]


def test_a_rolled_back_change_is_not_counted(database):
    toolcall_id = start(database)
    with database.session() as session:
        advance(session, session.get(ToolCall, toolcall_id), (Status.START_TK_SENT, "issued"))
        session.rollback()
    assert counted(database) == grouped(database) == {"initial": 1}


def test_counts_stay_exact_under_concurrent_changes_and_compactions(database):
    ids = started(database, 24, "start-tk-sent")
    errors: list[BaseException] = []
    stop = threading.Event()

    def move(mine: list[int]) -> None:
        try:
            for toolcall_id in mine:
                walk(database, toolcall_id, "start-data-sent")
                walk(database, toolcall_id, "tool-timeout-err")
        except BaseException as e:  # reported below
            errors.append(e)

    def compact() -> None:
        try:
            while not stop.is_set():
                with database.begin() as connection:
                    compact_counts(connection)
        except BaseException as e:
            errors.append(e)

    movers = [threading.Thread(target=move, args=(ids[k::3],)) for k in range(3)]
    compactor = threading.Thread(target=compact)
    compactor.start()
    for thread in movers:
        thread.start()
    for thread in movers:
        thread.join(timeout=120)
    stop.set()
    compactor.join(timeout=60)
    assert errors == []
    assert counted(database) == grouped(database) == {"finished-err": 24}
