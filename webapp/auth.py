"""Logging in and out (flask-login; forms with CSRF tokens from Flask-WTF).

A login session holds the user's id and session version (``User.get_id``) and when the user logged
in. It is taken on each request only while the version is still the user's -- a logout or a new
password bumps it (``User.end_sessions``), ending every session of the user, copies of its cookie
included -- and for ``TOOLCALL_SESSION_LIFETIME_SECS`` after the login, however busy it was. The
cookie itself expires with the lifetime too (a permanent session). Remember-me is not offered.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from flask import Blueprint, current_app, flash, redirect, render_template, request, session, url_for
from flask_login import LoginManager, current_user, login_user, logout_user
from flask_wtf import FlaskForm
from sqlalchemy import select
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired

from webapp import passwords
from webapp.db import get_session
from webapp.limits import limiter, login_key, setting
from webapp.models import User

bp = Blueprint("auth", __name__, url_prefix="/accounts")
login_manager = LoginManager()
login_manager.login_view = "auth.login"


#: The session key holding when the user logged in (unix seconds).
LOGIN_AT = "login_at"


def _number(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 18


@login_manager.user_loader
def load_user(session_id: str) -> User | None:
    """The user of this login session, while the session is valid (see the module's docstring)."""
    user_id, _, version = session_id.partition(":")
    if not (_number(user_id) and _number(version)):
        return None  # not ours, or from before session versions
    login_at = session.get(LOGIN_AT)
    lifetime = current_app.config["TOOLCALL_SESSION_LIFETIME_SECS"]
    if not isinstance(login_at, int) or not 0 <= time.time() - login_at <= lifetime:
        return None
    user = get_session().get(User, int(user_id))
    return user if user is not None and user.session_version == int(version) else None


class LoginForm(FlaskForm):
    username = StringField("Username", validators=[DataRequired()])
    password = PasswordField("Password", validators=[DataRequired()])


class LogoutForm(FlaskForm):
    pass


def safe_next(target: str | None) -> str:
    """Where to go after logging in: a path on this site only (no open redirect)."""
    if not target:
        return url_for("portal.home")
    parts = urlsplit(target)
    if (
        parts.scheme
        or parts.netloc
        or not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
    ):
        return url_for("portal.home")
    return target


@bp.route("/login/", methods=["GET", "POST"])
@limiter.limit(setting("TOOLCALL_RATELIMIT_LOGIN"), key_func=login_key, methods=["POST"])
@limiter.limit(setting("TOOLCALL_RATELIMIT_LOGIN_ADDRESS"), methods=["POST"])
def login():
    form = LoginForm()
    if form.validate_on_submit():
        user = get_session().scalar(select(User).where(User.username == form.username.data))
        # One message for an unknown user and a wrong password: no user enumeration. And the same
        # work: checking a password hash takes most of the answer's time, so skipping it for an
        # unknown user would tell by the clock alone whether a username exists.
        if user is None:
            passwords.check_unknown_user(form.password.data)
        elif user.check_password(form.password.data):
            if passwords.needs_rehash(user.password_hash):  # an older format: store it anew
                user.set_password(form.password.data)
                get_session().commit()
            login_user(user)
            session.permanent = True  # the cookie expires with the lifetime
            session[LOGIN_AT] = int(time.time())
            return redirect(safe_next(request.args.get("next")))
        flash("Unknown username or wrong password.")
    return render_template("auth/login.html", form=form), (401 if form.is_submitted() else 200)


@bp.route("/logout/", methods=["GET", "POST"])
def logout():
    form = LogoutForm()
    if form.validate_on_submit():
        if current_user.is_authenticated:
            current_user.end_sessions()  # on every device, and any copy of the cookie
            get_session().commit()
        session.clear()  # first: logout_user leaves a note in it when a remember-me cookie is to go
        logout_user()
        return redirect(url_for("auth.login"))
    return render_template("auth/logout.html", form=form)
