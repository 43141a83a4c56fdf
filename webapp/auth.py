"""Logging in and out (flask-login; forms with CSRF tokens from Flask-WTF)."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import LoginManager, login_user, logout_user
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


@login_manager.user_loader
def load_user(user_id: str) -> User | None:
    return get_session().get(User, int(user_id)) if user_id.isdigit() else None


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
            return redirect(safe_next(request.args.get("next")))
        flash("Unknown username or wrong password.")
    return render_template("auth/login.html", form=form), (401 if form.is_submitted() else 200)


@bp.route("/logout/", methods=["GET", "POST"])
def logout():
    form = LogoutForm()
    if form.validate_on_submit():
        logout_user()
        return redirect(url_for("auth.login"))
    return render_template("auth/logout.html", form=form)
