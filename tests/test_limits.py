"""Rate limits (spec §3): login per (address, username) and per address; the vendor API per address."""

from __future__ import annotations

import pytest
from portal_support import (
    REDIS_URL,
    add_client,
    add_user,
    login,
)

from webapp import create_app


@pytest.fixture(name="portal")
def portal_fixture(app, redis_db):
    app.extensions["db"].upgrade()
    with app.extensions["db"].session() as session:
        add_client(session, "vendor")
        add_user(session, "candidate", password="secret")
    return app


def test_the_eleventh_login_for_one_username_in_a_minute_is_refused(portal):
    client = portal.test_client()
    codes = [login(client, "candidate", "wrong").status_code for _ in range(11)]
    assert codes == [401] * 10 + [429]
    assert login(client, "candidate", "secret").status_code == 429  # even with the right password


def test_an_unknown_username_is_limited_exactly_like_a_known_one(portal):
    client = portal.test_client()
    assert [login(client, "nobody", "wrong").status_code for _ in range(11)] == [401] * 10 + [429]


def test_one_address_may_try_sixty_logins_a_minute_across_usernames(portal):
    client = portal.test_client()
    codes = [login(client, f"user{i}", "wrong").status_code for i in range(61)]
    assert codes == [401] * 60 + [429]


def test_the_vendor_api_answers_rate_limited_in_its_envelope(portal):
    portal.config["TOOLCALL_RATELIMIT_API"] = "3/minute"
    client = portal.test_client()
    answers = [client.get("/result/?access_token=R1&client=vendor") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[-1].json["data"]["error"] == "rate-limited" and answers[-1].json["type"] == "error"


def test_rate_limits_can_be_switched_off(tmp_path, portal_environment, redis_db):
    app = create_app(
        {"TESTING": True, "INSTANCE_PATH": tmp_path / "i", "DATABASE_URL": f"sqlite:///{tmp_path / 'p.sqlite3'}",
         "REDIS_URL": REDIS_URL, "SECRET_KEY": "k", "TOOLCALL_RATELIMIT": False, "TOOLCALL_RATELIMIT_API": "1/minute"}
    )  # fmt: skip
    app.extensions["db"].upgrade()
    client = app.test_client()
    assert [client.get("/result/?access_token=R&client=x").status_code for _ in range(3)] == [404, 404, 404]
