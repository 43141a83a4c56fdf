"""The LTI platform's domain on each database (SQLite and PostgreSQL): platform keys, scores and the
attempts they finish, members.

The HTTP side is in test_lti_services.py; here the rules are met directly: the private key at rest,
rotation and its overlap, the late and superseded rules of a score, which attempt a score finishes,
and two scores with one timestamp at once.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
from helpers import HAPPY_LOG
from portal_support import add_user
from sqlalchemy import select, update

from webapp import lifecycle
from webapp.lifecycle import Status
from webapp.lti import grades, keys, members
from webapp.lti.access import ServiceError
from webapp.lti.models import LineItem, LtiRegistration, PlatformKey, Result, Score
from webapp.lti.vocabulary import INSTRUCTOR, LEARNER
from webapp.models import Client, Exam, ToolCall, ToolCallResult, User

CONFIG = {"SECRET_KEY": "the key of the day", "SECRET_KEY_FALLBACKS": [], "TOOLCALL_LTI_KEY_OVERLAP_DAYS": 7}


# ---- rows -----------------------------------------------------------------------------------------------


def add_tool(session) -> tuple[LtiRegistration, Exam]:
    client = Client(
        name="quizzer", receive_start_token_url="https://t.example/login", receive_result_token_url=""
    )
    registration = LtiRegistration(client=client, lti_client_id="cid", deployment_id="did",
                                   login_url="https://t.example/login", launch_url="https://t.example/launch",
                                   redirect_uris='["https://t.example/launch"]',
                                   deep_linking_url="https://t.example/launch", public_key="-")  # fmt: skip
    exam = Exam(client=client, slug="algebra", name="Algebra")
    session.add_all([registration, exam])
    session.flush()
    return registration, exam


def launched(session, exam, user, launched_too: bool = True) -> ToolCall:
    toolcall = lifecycle.create(session, exam, user)
    steps = [(Status.START_TK_SENT, "start token issued")]
    if launched_too:
        steps.append((Status.START_DATA_SENT, "LTI launch: id_token posted"))
    lifecycle.advance(session, toolcall, *steps)
    return toolcall


def body(sub: str, given: float = 7, at: datetime | None = None, grading: str = "FullyGraded") -> bytes:
    return json.dumps(
        {"userId": sub, "scoreGiven": given, "scoreMaximum": 10, "activityProgress": "Completed",
         "gradingProgress": grading, "timestamp": (at or datetime.now(UTC)).isoformat()}
    ).encode()  # fmt: skip


@pytest.fixture(name="rows")
def rows_fixture(database):
    with database.session() as session:
        registration, exam = add_tool(session)
        user = add_user(session, "cand")
        item = grades.set_default(session, exam, score_maximum=10)
        return registration.id, exam.id, user.id, item.id


def loaded(session, rows):
    registration_id, exam_id, user_id, item_id = rows
    registration = session.get(LtiRegistration, registration_id)
    return (
        registration,
        session.get(Exam, exam_id),
        session.get(User, user_id),
        session.get(LineItem, item_id),
    )


def log_of(session, toolcall_id: int) -> list[str]:
    session.expire_all()
    return [entry.status for entry in session.get(ToolCall, toolcall_id).log]


# ---- keys -----------------------------------------------------------------------------------------------


def test_the_private_key_is_stored_encrypted_and_only_the_public_half_is_published(database):
    with database.session() as session:
        key = keys.current(session, CONFIG)
        published = keys.key_set(session, CONFIG)["keys"]
    assert "PRIVATE KEY" not in key.private_key and "BEGIN" not in key.private_key
    assert [k["kid"] for k in published] == [key.kid]
    assert set(published[0]) == {"kty", "kid", "alg", "use", "n", "e"}
    with database.session() as session:
        assert keys.sign(session, CONFIG, {"sub": "x"})
        assert keys.current(session, CONFIG).kid == key.kid  # one key, made once


def test_a_key_still_signs_after_the_secret_key_moves_to_the_fallbacks_and_not_without_it(database):
    with database.session() as session:
        keys.current(session, CONFIG)
    moved = {**CONFIG, "SECRET_KEY": "the new key", "SECRET_KEY_FALLBACKS": [CONFIG["SECRET_KEY"]]}
    with database.session() as session:
        assert keys.sign(session, moved, {"sub": "x"})
        with pytest.raises(keys.KeyUnavailable, match="SECRET_KEY_FALLBACKS"):
            keys.sign(session, {**CONFIG, "SECRET_KEY": "the new key"}, {"sub": "x"})


def test_a_rotated_key_stays_published_for_the_overlap_and_then_leaves(database):
    with database.session() as session:
        old = keys.current(session, CONFIG).kid
        new = keys.rotate(session, CONFIG).kid
        assert keys.current(session, CONFIG).kid == new
        assert {k["kid"] for k in keys.key_set(session, CONFIG)["keys"]} == {old, new}
        session.execute(
            update(PlatformKey)
            .where(PlatformKey.kid == old)
            .values(retired=datetime.now(UTC) - timedelta(days=8))
        )
        assert {k["kid"] for k in keys.key_set(session, CONFIG)["keys"]} == {new}


# ---- scores and attempts ------------------------------------------------------------------------------------


def test_a_fully_graded_score_finishes_the_launched_attempt_with_the_score_verbatim(database, rows):
    with database.session() as session:
        registration, exam, user, item = loaded(session, rows)
        toolcall = launched(session, exam, user)
        sent = body(user.persnr, 8)
        grades.publish(session, registration, item, sent)
        assert log_of(session, toolcall.id) == HAPPY_LOG
        [result] = session.scalars(select(ToolCallResult)).all()
        assert (result.data, result.score, result.passed, result.late) == (sent.decode(), 8, True, False)


def test_a_score_for_a_superseded_attempt_is_stored_late_and_finishes_it(database, rows):
    with database.session() as session:
        registration, exam, user, item = loaded(session, rows)
        first = launched(session, exam, user)
        lifecycle.advance(session, first, (Status.FINISHED_ERR, "superseded by attempt 2"))
        launched(session, exam, user, launched_too=False)  # pressed Start again, not launched yet
        grades.publish(session, registration, item, body(user.persnr, 3))
        assert log_of(session, first.id)[-5:] == ["finished-err", *HAPPY_LOG[3:]]
        [result] = session.scalars(select(ToolCallResult)).all()
        assert (result.toolcall_id, result.late, result.passed) == (first.id, True, False)


def test_a_score_for_an_attempt_that_timed_out_is_late(database, rows):
    with database.session() as session:
        registration, exam, user, item = loaded(session, rows)
        toolcall = launched(session, exam, user)
        lifecycle.advance(session, toolcall, (Status.TOOL_TIMEOUT_ERR, "no result within 240 minutes"))
        grades.publish(session, registration, item, body(user.persnr))
        assert log_of(session, toolcall.id)[-1] == "finished-ok"
        assert session.scalar(select(ToolCallResult.late)) is True


def test_a_score_on_another_line_item_finishes_nothing(database, rows):
    with database.session() as session:
        registration, exam, user, item = loaded(session, rows)
        toolcall = launched(session, exam, user)
        other = grades.save_line_item(session, exam, b'{"label": "Bonus", "scoreMaximum": 5}')
        grades.publish(session, registration, other, body(user.persnr))
        assert log_of(session, toolcall.id) == HAPPY_LOG[:3]
        assert session.scalar(select(Score.toolcall_id)) is None


def test_of_two_scores_with_one_timestamp_at_once_exactly_one_is_kept(database, rows):
    with database.session() as session:
        registration, exam, user, item = loaded(session, rows)
        launched(session, exam, user, launched_too=False)
        persnr = user.persnr
    sent = body(persnr, 5, datetime.now(UTC))
    outcomes: list[object] = []
    barrier = threading.Barrier(2)

    def publish():
        with database.session() as session:
            registration, _, _, item = loaded(session, rows)
            barrier.wait()
            try:
                grades.publish(session, registration, item, sent)
                outcomes.append("kept")
            except ServiceError as e:
                outcomes.append(e.status)

    threads = [threading.Thread(target=publish) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes, key=str) == [409, "kept"]
    with database.session() as session:
        assert len(session.scalars(select(Score)).all()) == 1
        assert len(session.scalars(select(Result)).all()) == 1


# ---- members --------------------------------------------------------------------------------------------


def test_the_members_are_the_candidates_with_an_attempt_and_the_admins(database, rows):
    with database.session() as session:
        _, exam, user, _ = loaded(session, rows)
        launched(session, exam, user, launched_too=False)
        admin = add_user(session, "admin")
        admin.is_admin = True
        add_user(session, "bystander")
        session.flush()
        found = {u.username: members.role_of(u) for u in members.members(session, exam)}
        assert found == {"cand": LEARNER, "admin": INSTRUCTOR}
        assert [u.username for u in members.members(session, exam, role="Learner")] == ["cand"]
        assert [u.username for u in members.members(session, exam, role=INSTRUCTOR)] == ["admin"]


# ---- text a database cannot keep ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "document",
    [{"comment": "a\u0000b"}, {"userId": "N\u00001"}, {"extra": {"deep": ["\u0000"]}}],
    ids=["comment", "user", "nested"],
)
def test_a_score_with_a_nul_character_is_400_on_every_database(database, rows, document):
    with database.session() as session:
        registration, exam, user, item = loaded(session, rows)
        launched(session, exam, user)
        sent = json.dumps({**json.loads(body(user.persnr)), **document}).encode()
        with pytest.raises(ServiceError) as refused:
            grades.publish(session, registration, item, sent)
        assert refused.value.status == 400 and "NUL" in refused.value.description


def test_a_line_item_with_a_nul_character_is_400_on_every_database(database, rows):
    with database.session() as session:
        _, exam, _, _ = loaded(session, rows)
        with pytest.raises(ServiceError) as refused:
            grades.save_line_item(session, exam, b'{"label": "x", "scoreMaximum": 1, "tag": "a\\u0000"}')
        assert refused.value.status == 400
