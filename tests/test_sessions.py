"""A login session ends everywhere when it should (webapp/auth.py): at logout, when the password
changes, and when its lifetime is over -- also for a copy of its cookie.

A session cookie carries the user's id *and* session version (flask-login's alternative id); the
version is a column of the user, bumped by a logout and by a new password, and checked on every
request, so a cookie copied before either opens nothing afterwards. The cookie also carries when
the user logged in: ``TOOLCALL_SESSION_LIFETIME_SECS`` after that, it is refused too, however
busy the session was. Each test plays the attacker with a copy of the victim's cookie in a second
client.
"""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime
from http.cookies import SimpleCookie

import pytest
from portal_support import REDIS_URL, add_user, csrf, logged_in, login
from sqlalchemy import select

from webapp import create_app
from webapp.config import ConfigurationError
from webapp.models import User

OPERATOR = ("operator", "operator secret")


@pytest.fixture(name="portal")
def portal_fixture(tmp_path, portal_environment, redis_db):
    app = create_app({"TESTING": True, "INSTANCE_PATH": tmp_path / "i", "REDIS_URL": REDIS_URL,
                      "DATABASE_URL": f"sqlite:///{tmp_path / 'p.sqlite3'}", "SECRET_KEY": "k",
                      "TOOLCALL_RATELIMIT": False})  # fmt: skip
    app.extensions["db"].upgrade()
    with app.extensions["db"].session() as session:
        add_user(session, *OPERATOR).is_admin = True
        add_user(session, "candidate", "secret")
    yield app
    app.extensions["db"].dispose()


def copy_of_the_cookie(app, victim):
    """A second client holding the victim's session cookie as it is now."""
    cookie = victim.get_cookie("session")
    assert cookie is not None
    attacker = app.test_client()
    attacker.set_cookie("session", cookie.value)
    return attacker


def log_out(client) -> None:
    token = csrf(client.get("/accounts/logout/").data)
    response = client.post("/accounts/logout/", data={"csrf_token": token})
    assert response.status_code == 302 and response.headers["Location"].startswith("/accounts/login/")


def sent_to_login(response) -> bool:
    return response.status_code == 302 and response.headers["Location"].startswith("/accounts/login/")


def test_a_cookie_copied_before_logout_no_longer_opens_the_ops_pages(portal):
    victim = logged_in(portal, *OPERATOR)
    attacker = copy_of_the_cookie(portal, victim)
    assert attacker.get("/ops/").status_code == 200  # the copy works while the session lives
    log_out(victim)
    assert sent_to_login(attacker.get("/ops/"))
    assert sent_to_login(attacker.get("/"))
    assert sent_to_login(victim.get("/ops/"))


def test_logging_out_ends_the_users_sessions_on_every_device(portal):
    laptop, phone = logged_in(portal, *OPERATOR), logged_in(portal, *OPERATOR)
    other_user = logged_in(portal, "candidate", "secret")
    log_out(laptop)
    assert sent_to_login(phone.get("/ops/"))
    assert other_user.get("/").status_code == 200  # another user's session is not touched
    assert login(phone, *OPERATOR).status_code == 302 and phone.get("/ops/").status_code == 200


def test_a_cookie_copied_before_a_password_change_no_longer_works(portal):
    victim = logged_in(portal, *OPERATOR)
    attacker = copy_of_the_cookie(portal, victim)
    result = portal.test_cli_runner().invoke(
        args=["users", "add", OPERATOR[0], "--password", "a new password", "--admin"]
    )
    assert result.exit_code == 0, result.output
    assert sent_to_login(attacker.get("/ops/"))
    assert sent_to_login(victim.get("/ops/"))
    assert login(attacker, *OPERATOR).status_code == 401  # the old password is gone too
    assert login(attacker, OPERATOR[0], "a new password").status_code == 302


def test_a_new_user_and_a_password_upgrade_at_login_keep_sessions(portal):
    """Saving other users, and storing the same password in a newer hash format at login, end no
    session: only a new password does."""
    victim = logged_in(portal, *OPERATOR)
    result = portal.test_cli_runner().invoke(args=["users", "add", "newcomer", "--password", "pw"])
    assert result.exit_code == 0, result.output
    with portal.extensions["db"].session() as session:
        user = session.scalar(select(User).where(User.username == OPERATOR[0]))
        version = user.session_version
    assert logged_in(portal, *OPERATOR).get("/ops/").status_code == 200
    assert victim.get("/ops/").status_code == 200
    with portal.extensions["db"].session() as session:
        assert session.scalar(select(User).where(User.username == OPERATOR[0])).session_version == version


def test_a_session_older_than_its_lifetime_is_refused_however_busy(portal):
    victim = logged_in(portal, *OPERATOR)
    lifetime = portal.config["TOOLCALL_SESSION_LIFETIME_SECS"]
    with victim.session_transaction() as session:
        # Logged in a lifetime ago, and used all along: the session ends anyway.
        session["login_at"] = int(time.time()) - lifetime - 1
    assert sent_to_login(victim.get("/ops/"))


def test_a_session_cookie_from_before_session_versions_is_refused(portal):
    """A cookie naming only the user's id (as before versions) is not taken for any version."""
    victim = logged_in(portal, *OPERATOR)
    with victim.session_transaction() as session:
        session["_user_id"] = session["_user_id"].split(":")[0]
    assert sent_to_login(victim.get("/ops/"))


def expires_in(response) -> float:
    [header] = [h for h in response.headers.getlist("Set-Cookie") if h.startswith("session=")]
    morsel = SimpleCookie(header)["session"]
    return parsedate_to_datetime(morsel["expires"]).timestamp() - time.time()


def test_the_session_cookie_expires_with_the_lifetime(portal):
    lifetime = portal.config["TOOLCALL_SESSION_LIFETIME_SECS"]
    assert lifetime == 8 * 3600 and portal.permanent_session_lifetime.total_seconds() == lifetime
    answer = login(portal.test_client(), *OPERATOR)
    assert answer.status_code == 302
    assert lifetime - 60 < expires_in(answer) <= lifetime
    assert not [h for h in answer.headers.getlist("Set-Cookie") if h.startswith("remember_token=")]


def test_the_lifetime_is_a_setting(tmp_path, portal_environment):
    portal_environment.setenv("TOOLCALL_SESSION_LIFETIME_SECS", "900")
    app = create_app({"INSTANCE_PATH": tmp_path, "SECRET_KEY": "k", "REDIS_URL": REDIS_URL})
    assert app.config["TOOLCALL_SESSION_LIFETIME_SECS"] == 900
    assert app.permanent_session_lifetime.total_seconds() == 900
    assert app.config["REMEMBER_COOKIE_DURATION"].total_seconds() == 900
    portal_environment.setenv("TOOLCALL_SESSION_LIFETIME_SECS", "0")
    with pytest.raises(ConfigurationError, match="TOOLCALL_SESSION_LIFETIME_SECS"):
        create_app({"INSTANCE_PATH": tmp_path, "SECRET_KEY": "k", "REDIS_URL": REDIS_URL})
