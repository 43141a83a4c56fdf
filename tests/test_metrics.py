"""``/metrics`` (webapp/metrics.py): who may read it, and what it says -- parsed with
prometheus-client's own parser, so the text format is checked as Prometheus reads it.

The portal runs on a SQLite file with the portal tests' Redis database as broker and records; no
worker runs, so the messages sent to a queue stay there to be counted. What the workers record
(tool starts, failed calls, fetch times, their state) is written through ``worker.records``, the
API the workers themselves write through.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from portal_support import REDIS_URL, add_client, add_tool, add_user, logged_in
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from webapp import create_app, lifecycle
from webapp.lifecycle import Status
from webapp.models import Client, Exam, ResultFetch, User, utcnow
from worker.records import Records, WorkerState, connect, failure

TOKEN = "scrape-token-0123456789"
OPERATOR = ("operator", "ops-password")


def metrics_app(tmp_path, portal_environment, **config):
    app = create_app(
        {
            "TESTING": True,
            "INSTANCE_PATH": tmp_path / "instance",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'portal.sqlite3'}",
            "REDIS_URL": REDIS_URL,
            "CELERY_BROKER_URL": REDIS_URL,
            "CELERY_RESULT_BACKEND": REDIS_URL,
            "SECRET_KEY": "a test key",
            "TOOLCALL_METRICS_TOKEN": TOKEN,
            "TOOLCALL_RATELIMIT": False,
            **config,
        }
    )
    app.extensions["db"].upgrade()
    with app.extensions["db"].session() as session:
        add_tool(session, add_client(session, "vendor"), "excel")
        add_user(session, OPERATOR[0], password=OPERATOR[1]).is_admin = True
        add_user(session, "candidate", password="secret")
    return app


@pytest.fixture(name="portal")
def portal_fixture(tmp_path, portal_environment, redis_db):
    app = metrics_app(tmp_path, portal_environment)
    yield app
    app.extensions["db"].dispose()
    app.extensions["celery"].close()


def scrape(app, token: str = TOKEN) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one scrape with the token."""
    response = app.test_client().get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.data
    assert response.mimetype == "text/plain" and "version=" in response.content_type
    samples = {}
    for family in text_string_to_metric_families(response.data.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def new_toolcall(app, *statuses: str) -> int:
    with app.extensions["db"].session() as session:
        tool = session.scalar(select(Exam).where(Exam.slug == "excel"))
        user = session.scalar(select(User).where(User.username == "candidate"))
        toolcall = lifecycle.create(session, tool, user)
        for status in statuses:
            lifecycle.advance(session, toolcall, (status, f"to {status}"))
        return toolcall.id


def new_fetch(app, token: str, state: str, **values) -> None:
    with app.extensions["db"].session() as session:
        client = session.scalar(select(Client))
        session.add(ResultFetch(client_id=client.id, token=token, state=state, **values))


# ---- who may read it ---------------------------------------------------------------------------------


def test_without_credentials_the_metrics_are_refused_with_how_to_authenticate(portal):
    response = portal.test_client().get("/metrics")
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    assert b"toolcall_" not in response.data and b"TOOLCALL_METRICS_TOKEN" in response.data


@pytest.mark.parametrize(
    "header", [f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}", TOKEN, "Bearer ", "Bearer"]
)
def test_a_wrong_token_is_refused(portal, header):
    response = portal.test_client().get("/metrics", headers={"Authorization": header})
    assert response.status_code == 401 and b"toolcall_" not in response.data


def test_the_token_opens_the_metrics(portal):
    assert ("toolcall_redis_up", ()) in scrape(portal)


def test_a_logged_in_admin_may_read_them_in_the_browser(portal):
    response = logged_in(portal, *OPERATOR).get("/metrics")
    assert response.status_code == 200 and b"toolcall_toolcalls" in response.data


def test_a_logged_in_user_who_is_not_an_admin_gets_403(portal):
    response = logged_in(portal, "candidate", "secret").get("/metrics")
    assert response.status_code == 403 and b"toolcall_" not in response.data


def test_without_a_token_setting_no_token_opens_them(tmp_path, portal_environment, redis_db):
    app = metrics_app(tmp_path, portal_environment, TOOLCALL_METRICS_TOKEN=None)
    try:
        for header in ["Bearer ", "Bearer None", f"Bearer {TOKEN}"]:
            assert app.test_client().get("/metrics", headers={"Authorization": header}).status_code == 401
        assert logged_in(app, *OPERATOR).get("/metrics").status_code == 200
    finally:
        app.extensions["db"].dispose()
        app.extensions["celery"].close()


# ---- what they say -----------------------------------------------------------------------------------


def test_toolcalls_are_counted_by_status_zeros_included(portal):
    new_toolcall(portal, "start-tk-sent")
    new_toolcall(portal, "start-tk-sent", "start-data-sent")
    new_toolcall(portal, "start-tk-sent", "start-tk-err")
    samples = scrape(portal)
    found = {labels[0][1]: v for (name, labels), v in samples.items() if name == "toolcall_toolcalls"}
    expected = dict.fromkeys((s.value for s in Status), 0.0)
    expected.update({"start-tk-sent": 1.0, "start-data-sent": 1.0, "finished-err": 1.0})
    assert found == expected


def test_owed_and_failed_fetches_and_the_oldest_owed_ones_age(portal):
    now = utcnow()
    new_fetch(
        portal,
        "R1",
        "owed",
        reported_at=now - timedelta(minutes=10),
        next_attempt_at=now - timedelta(minutes=4),
    )
    new_fetch(
        portal,
        "R2",
        "owed",
        reported_at=now - timedelta(minutes=1),
        next_attempt_at=now + timedelta(minutes=5),
    )
    new_fetch(portal, "R3", "failed")
    new_fetch(portal, "R4", "done")
    samples = scrape(portal)
    assert samples[("toolcall_fetches", (("state", "owed"),))] == 2
    assert samples[("toolcall_fetches", (("state", "failed"),))] == 1
    assert 600 <= samples[("toolcall_fetch_oldest_owed_age_seconds", ())] < 660
    assert 240 <= samples[("toolcall_fetch_overdue_seconds", ())] < 300


def test_with_nothing_owed_the_ages_are_zero(portal):
    samples = scrape(portal)
    assert samples[("toolcall_fetch_oldest_owed_age_seconds", ())] == 0
    assert samples[("toolcall_fetch_overdue_seconds", ())] == 0
    assert samples[("toolcall_fetches", (("state", "owed"),))] == 0


def test_queue_depths_of_callbacks_and_of_every_tools_queue(portal, redis_db):
    celery = portal.extensions["celery"]
    for n in range(3):
        celery.send_task("toolcall.fetch_result", args=[n], queue="callbacks", ignore_result=True)
    celery.send_task(
        "toolbus.eval", kwargs={"tool": "calc", "call": "x"}, queue="toolbus.calc", ignore_result=True
    )
    samples = scrape(portal)
    depths = {labels[0][1]: v for (name, labels), v in samples.items() if name == "toolcall_queue_messages"}
    assert depths == {
        "callbacks": 3,
        "toolbus.calc": 1,
        "toolbus.clock": 0,
        "toolbus.echo": 0,
        "toolbus.strtool": 0,
    }
    assert samples[("toolcall_broker_up", ())] == 1


def test_with_the_broker_away_the_rest_is_still_said(portal):
    portal.extensions["celery"].conf.broker_url = "redis://127.0.0.1:1/0"
    samples = scrape(portal)
    assert samples[("toolcall_broker_up", ())] == 0
    assert not any(name == "toolcall_queue_messages" for name, _ in samples)
    assert ("toolcall_toolcalls", (("status", "initial"),)) in samples


def test_tool_restarts_and_failed_calls_from_the_workers_records(portal, redis_db):
    records = Records(connect(REDIS_URL))
    try:
        records.tool_started("toolbus-shared@a", "calc", 0, 3)
        records.tool_started("toolbus-shared@b", "calc", 1, 1)
        records.tool_started("toolbus-shared@a", "probe", 0, 1)
        records.calls_failed([failure(time.time(), "w", "calc", "toolbus.eval", "c", "ToolError", "m")] * 2)
        records.calls_failed([failure(time.time(), "w", "probe", "toolbus.eval", "c", "ToolCrashed", "m")])
    finally:
        records.redis.close()
    samples = scrape(portal)
    assert samples[("toolbus_tool_starts_total", (("tool", "calc"),))] == 4
    assert samples[("toolbus_tool_restarts_total", (("tool", "calc"),))] == 2
    assert samples[("toolbus_tool_restarts_total", (("tool", "probe"),))] == 0
    assert samples[("toolbus_calls_failed_total", (("tool", "calc"),))] == 2
    assert samples[("toolbus_calls_failed_total", (("tool", "probe"),))] == 1


def test_the_fetch_latency_histogram_by_outcome(portal, redis_db):
    records = Records(connect(REDIS_URL))
    try:
        for seconds in (0.04, 0.2, 0.2, 3.0, 40.0):
            records.fetch_attempted("stored", seconds)
        records.fetch_attempted("retry", 12.0)
    finally:
        records.redis.close()
    samples = scrape(portal)

    def bucket(outcome: str, le: str) -> float:
        return samples[("toolcall_fetch_attempt_seconds_bucket", (("le", le), ("outcome", outcome)))]

    assert [bucket("stored", le) for le in ("0.05", "0.25", "2.5", "5.0", "30.0", "+Inf")] == [
        1,
        3,
        3,
        4,
        4,
        5,
    ]
    assert samples[("toolcall_fetch_attempt_seconds_count", (("outcome", "stored"),))] == 5
    assert samples[("toolcall_fetch_attempt_seconds_sum", (("outcome", "stored"),))] == pytest.approx(43.44)
    assert bucket("retry", "10.0") == 0 and bucket("retry", "15.0") == 1


def test_workers_up_and_gone_silent(portal, redis_db):
    records = Records(connect(REDIS_URL))
    try:
        records.worker_seen(WorkerState("fresh@h", time.time(), 1, 5, {}, {}, ["callbacks"]))
        records.worker_seen(WorkerState("silent@h", time.time() - 300, 2, 5, {}, {}, ["toolbus.calc"]))
    finally:
        records.redis.close()
    samples = scrape(portal)
    assert samples[("toolbus_worker_up", (("worker", "fresh@h"),))] == 1
    assert samples[("toolbus_worker_up", (("worker", "silent@h"),))] == 0


def test_with_redis_away_the_database_and_broker_parts_are_still_said(portal):
    portal.config["REDIS_URL"] = "redis://127.0.0.1:1/0"
    samples = scrape(portal)
    assert samples[("toolcall_redis_up", ())] == 0
    assert ("toolcall_fetches", (("state", "owed"),)) in samples
