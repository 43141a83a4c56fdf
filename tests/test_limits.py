"""Rate limits (docs/api.md §3): login per (address, username) and per address; the vendor API per address;
result fetches made owed by ``/result/``, per address and per client."""

from __future__ import annotations

import pytest
from portal_support import (
    REDIS_URL,
    add_client,
    add_user,
    login,
)
from sqlalchemy import select, update

from webapp import create_app
from webapp.models import ResultFetch


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


# ---- result fetches made owed ---------------------------------------------------------------------
# A report of a token not seen before costs a row and several vendor requests (retried while the
# vendor may not have stored it yet): such reports are limited, repeats of a known token are not.


def report(client, token: str):
    return client.get(f"/result/?access_token={token}&client=vendor")


def fetch_states(portal) -> dict[str, str]:
    with portal.extensions["db"].session() as session:
        return dict(session.execute(select(ResultFetch.token, ResultFetch.state)).all())


def set_state(portal, token: str, state: str) -> None:
    with portal.extensions["db"].session() as session:
        session.execute(update(ResultFetch).where(ResultFetch.token == token).values(state=state))


def test_new_result_tokens_from_one_address_are_limited_and_repeats_do_not_count(portal):
    portal.config["TOOLCALL_RATELIMIT_NEW_FETCHES"] = "3/minute"
    client = portal.test_client()
    assert [report(client, token).status_code for token in ("R1", "R2")] == [200, 200]
    assert [report(client, "R1").status_code for _ in range(5)] == [200] * 5  # makes nothing owed
    assert report(client, "R3").status_code == 200
    refused = report(client, "R4")
    assert refused.status_code == 429 and refused.json["data"]["error"] == "rate-limited", refused.json
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    assert fetch_states(portal) == {"R1": "owed", "R2": "owed", "R3": "owed"}  # nothing kept of R4


def test_a_client_may_have_only_so_many_fetches_owed_at_once(portal):
    portal.config["TOOLCALL_MAX_OWED_FETCHES"] = 2
    client = portal.test_client()
    assert [report(client, token).status_code for token in ("R1", "R2")] == [200, 200]
    refused = report(client, "R3")
    assert refused.status_code == 429 and refused.json == {
        "type": "error",
        "token": "R3",
        "data": {
            "error": "rate-limited",
            "msg": "client vendor has 2 result fetches owed, as many as it may have at once; "
            "report this result again in a minute",
        },
    }
    assert refused.headers["Retry-After"] == "60"
    assert report(client, "R1").status_code == 200  # a repeat makes nothing owed
    set_state(portal, "R1", "done")
    assert report(client, "R3").status_code == 200  # one fewer owed: room again
    set_state(portal, "R2", "failed")
    assert report(client, "R4").status_code == 200
    assert report(client, "R2").status_code == 429  # re-opening the failed one would be one too many
    assert fetch_states(portal) == {"R1": "done", "R2": "failed", "R3": "owed", "R4": "owed"}


def test_the_limits_on_owed_fetches_are_switched_off_with_the_others(tmp_path, portal_environment, redis_db):
    app = create_app(
        {"TESTING": True, "INSTANCE_PATH": tmp_path / "i", "DATABASE_URL": f"sqlite:///{tmp_path / 'p.sqlite3'}",
         "REDIS_URL": REDIS_URL, "SECRET_KEY": "k", "TOOLCALL_RATELIMIT": False,
         "TOOLCALL_RATELIMIT_NEW_FETCHES": "1/minute", "TOOLCALL_MAX_OWED_FETCHES": 1}
    )  # fmt: skip
    try:
        app.extensions["db"].upgrade()
        with app.extensions["db"].session() as session:
            add_client(session, "vendor")
        client = app.test_client()
        assert [report(client, f"R{i}").status_code for i in range(3)] == [200, 200, 200]
    finally:
        app.extensions["db"].dispose()
