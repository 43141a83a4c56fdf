"""The ops pages of the LTI tools (admins only, as every ops page).

/ops/lti-tools/                      the tools, and refusals that named no known tool
/ops/lti-tools/new/                  register a tool
/ops/lti-tools/<name>/               its platform configuration (what its administrator
                                     needs, also as PyLTI1p3 JSON), its settings (editable), its
                                     exams and its latest refusals
/ops/lti-tools/<name>/deep-link/     "add exams from this tool": a form that starts a
                                     deep-linking launch (the page's first form)
"""

from __future__ import annotations

import json

from flask import Blueprint, abort, current_app, flash, redirect, render_template, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from wtforms import BooleanField, StringField, TextAreaField, ValidationError
from wtforms.validators import DataRequired, Length, Optional

from webapp import ops
from webapp.db import get_session
from webapp.lti import launch, problems, registrations
from webapp.lti.models import LtiRegistration
from webapp.models import Client, Exam

bp = Blueprint("lti_admin", __name__, url_prefix="/ops/lti-tools")
bp.before_request(ops.admins_only)


def _strip(value):
    return value.strip() if isinstance(value, str) else value


def no_nul(form, field) -> None:
    """No NUL character: no column can keep one (PostgreSQL refuses it even in a query)."""
    if "\x00" in (field.data or ""):
        raise ValidationError("must not contain a NUL character")


class ToolForm(FlaskForm):
    name = StringField("Name", filters=[_strip], validators=[DataRequired(), Length(max=100), no_nul])
    login_url = StringField(
        "Login URL", filters=[_strip], validators=[DataRequired(), Length(max=500), no_nul]
    )
    launch_url = StringField(
        "Launch URL", filters=[_strip], validators=[DataRequired(), Length(max=500), no_nul]
    )
    redirect_uris = TextAreaField(
        "Redirect URIs (one a line; none: the launch URL)", default="", validators=[no_nul]
    )
    deep_linking_url = StringField(
        "Deep-linking URL (none: the launch URL)",
        filters=[_strip],
        validators=[Optional(), Length(max=500), no_nul],
    )
    jwks_url = StringField("Key set URL", filters=[_strip], validators=[Optional(), Length(max=500), no_nul])
    public_key = TextAreaField("Public key (PEM), instead of a key set URL", default="", validators=[no_nul])
    send_names = BooleanField("Send names and e-mail", default=True)

    def validate_public_key(self, field) -> None:
        if bool(self.jwks_url.data) == bool((field.data or "").strip()):
            raise ValidationError("give either a key set URL or a public key, one of them")


class DeepLinkForm(FlaskForm):
    pass


def _registration(name: str) -> LtiRegistration:
    return registrations.by_name(get_session(), name) or abort(404)


def _redis():
    return current_app.extensions["lti_transient"].redis


@bp.get("/")
def tools():
    rows = (
        get_session()
        .scalars(select(LtiRegistration).join(LtiRegistration.client).order_by(Client.name))
        .all()
    )
    return render_template(
        "lti/admin/tools.html", registrations=rows, unknown=problems.recent(_redis(), problems.UNKNOWN)
    )


def _save(form: ToolForm, registration: LtiRegistration | None):
    settings = registrations.ToolSettings(
        login_url=form.login_url.data,
        launch_url=form.launch_url.data,
        redirect_uris=[line.strip() for line in (form.redirect_uris.data or "").splitlines() if line.strip()],
        jwks_url=form.jwks_url.data or None,
        public_key=(form.public_key.data or "").strip() or None,
        deep_linking_url=form.deep_linking_url.data or None,
        send_names=form.send_names.data,
    )
    session = get_session()
    name = form.name.data
    if registration is not None and name != registration.client.name:
        if session.scalar(select(Client.id).where(Client.name == name)) is not None:
            form.name.errors.append(f"{name!r} is taken; choose another")
            return None
        registration.client.name = name
    try:
        saved = registrations.save(session, name, settings, bool(current_app.config["TOOLCALL_PRODUCTION"]))
    except registrations.RegistrationError as e:
        session.rollback()
        form.name.errors.append(str(e))
        return None
    try:
        session.commit()
    except IntegrityError:  # the name was taken meanwhile
        session.rollback()
        form.name.errors.append(f"{name!r} is taken; choose another")
        return None
    flash(f"LTI tool {name} saved.")
    return redirect(url_for("lti_admin.show", name=saved.client.name), code=303)


@bp.route("/new/", methods=["GET", "POST"])
def new():
    form = ToolForm()
    if form.validate_on_submit():
        done = _save(form, None)
        if done is not None:
            return done
    return render_template("lti/admin/tool_form.html", form=form, registration=None), (
        400 if form.errors else 200
    )


@bp.route("/<name>/", methods=["GET", "POST"])
def show(name: str):
    registration = _registration(name)
    form = ToolForm(
        data={
            "name": registration.client.name,
            "login_url": registration.login_url,
            "launch_url": registration.launch_url,
            "redirect_uris": "\n".join(registration.redirect_uri_list),
            "deep_linking_url": registration.deep_linking_url,
            "jwks_url": registration.jwks_url or "",
            "public_key": registration.public_key or "",
            "send_names": registration.send_names,
        }
    )
    if form.validate_on_submit():
        done = _save(form, registration)
        if done is not None:
            return done
        registration = _registration(name)
    issuer = current_app.config["TOOLCALL_PUBLIC_URL"]
    exams = (
        get_session()
        .scalars(select(Exam).where(Exam.client_id == registration.client_id).order_by(Exam.slug))
        .all()
    )
    return render_template(
        "lti/admin/tool_form.html",
        form=form,
        registration=registration,
        described=registrations.describe(registration, issuer),
        configuration=json.dumps(registrations.configuration(registration, issuer), indent=2),
        exams=exams,
        problems=problems.recent(_redis(), registration.client.name),
    ), (400 if form.errors else 200)


@bp.route("/<name>/deep-link/", methods=["GET", "POST"])
def deep_link(name: str):
    """Add exams from the tool: the POST sends the admin to the tool with a deep-linking launch."""
    registration = _registration(name)
    form = DeepLinkForm()
    if form.validate_on_submit():
        return redirect(
            launch.deep_linking_initiation(
                registration,
                current_user._get_current_object(),
                current_app.extensions["lti_transient"],
                current_app.config["TOOLCALL_PUBLIC_URL"],
            ),
            code=303,
        )
    return render_template("lti/admin/deep_link.html", registration=registration, form=form), (
        400 if form.is_submitted() else 200
    )
