"""Password storage (webapp/passwords.py): Argon2id, older formats verified and upgraded at login."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher
from portal_support import (
    add_user,
    login,
)
from sqlalchemy import select
from werkzeug.security import generate_password_hash

from webapp import passwords
from webapp.models import User


def test_a_password_is_stored_as_argon2id_at_owasps_parameters():
    stored = passwords.hash_password("correct horse")
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert "correct horse" not in stored
    assert stored != passwords.hash_password("correct horse")  # salted


@pytest.mark.parametrize("password", ["correct horse", "", "ünïcode ✓", "a" * 1000])
def test_a_password_matches_its_hash_and_nothing_else(password):
    stored = passwords.hash_password(password)
    assert passwords.check_password(stored, password)
    assert not passwords.check_password(stored, password + "x")
    assert not passwords.needs_rehash(stored)


@pytest.mark.parametrize("method", ["scrypt", "pbkdf2:sha256:1"])
def test_older_werkzeug_hashes_still_verify_and_ask_to_be_rehashed(method):
    stored = generate_password_hash("correct horse", method=method)
    assert passwords.check_password(stored, "correct horse")
    assert not passwords.check_password(stored, "wrong horse")
    assert passwords.needs_rehash(stored)


def test_an_argon2_hash_with_other_parameters_asks_to_be_rehashed():
    stored = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash("correct horse")
    assert passwords.check_password(stored, "correct horse")
    assert passwords.needs_rehash(stored)


@pytest.mark.parametrize("stored", ["!", "", "$argon2id$broken", "scrypt:broken"])
def test_a_stored_value_that_is_no_hash_matches_no_password(stored):
    assert not passwords.check_password(stored, "")
    assert not passwords.check_password(stored, stored)


@pytest.fixture(name="portal")
def portal_fixture(app, redis_db):
    app.extensions["db"].upgrade()
    with app.extensions["db"].session() as session:
        old = add_user(session, "old-timer")
        old.password_hash = generate_password_hash("secret", method="scrypt")
        add_user(session, "newcomer", password="secret")
    return app


def stored_hash(app, username: str) -> str:
    with app.extensions["db"].session() as session:
        return session.scalar(select(User.password_hash).where(User.username == username))


def test_logging_in_upgrades_an_older_hash_to_argon2id(portal):
    assert login(portal.test_client(), "old-timer", "secret").status_code == 302
    upgraded = stored_hash(portal, "old-timer")
    assert upgraded.startswith("$argon2id$") and passwords.check_password(upgraded, "secret")
    assert login(portal.test_client(), "old-timer", "secret").status_code == 302  # and it still works


def test_a_failed_login_leaves_an_older_hash_as_it_is(portal):
    before = stored_hash(portal, "old-timer")
    assert login(portal.test_client(), "old-timer", "not it").status_code == 401
    assert stored_hash(portal, "old-timer") == before


def test_logging_in_with_a_current_hash_does_not_rewrite_it(portal):
    before = stored_hash(portal, "newcomer")
    assert login(portal.test_client(), "newcomer", "secret").status_code == 302
    assert stored_hash(portal, "newcomer") == before
