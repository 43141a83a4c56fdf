"""The user's side: the tools, starting an attempt, the user's attempts.

Starting is a POST (with a CSRF token) from a form that opens the vendor in a new window with no
opener; a GET of the start URL shows the same form, for links and bookmarks. An exam of an LTI tool
starts the same way; its start token goes to the tool's login URL (``webapp.lti.launch``).
"""

from __future__ import annotations

import logging

from flask import Blueprint, abort, current_app, redirect, render_template
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from webapp import lifecycle
from webapp.db import get_session
from webapp.lifecycle import OPEN, Status
from webapp.lti import launch
from webapp.models import Exam, ToolCall, User
from webapp.vendor_client import add_query

log = logging.getLogger("webapp.portal")
bp = Blueprint("portal", __name__)


class StartForm(FlaskForm):
    pass


def _tool(slug: str) -> Exam:
    tool = get_session().scalar(select(Exam).where(Exam.slug == slug))
    if tool is None:
        abort(404)
    return tool


@bp.get("/")
@login_required
def home():
    tools = get_session().scalars(select(Exam).order_by(Exam.name)).all()
    return render_template("portal/home.html", tools=tools, form=StartForm())


@bp.route("/tooluser/tools/<slug>/", methods=["GET", "POST"])
@login_required
def start(slug: str):
    tool = _tool(slug)
    form = StartForm()
    if not form.validate_on_submit():
        return render_template("portal/start.html", tool=tool, form=form)
    session = get_session()
    user = current_user._get_current_object()
    for _ in range(START_TRIES):
        try:
            return _start(session, tool, user, form)
        except IntegrityError:
            # Another start of this exam by this user (a double click opens two windows) took the
            # attempt number first (it is unique): start again, after that one, superseding it.
            session.rollback()
    log.warning(
        "user %s: %d starts of %s in a row lost the race for an attempt number", user.id, START_TRIES, slug
    )
    return render_template("portal/start.html", tool=tool, form=form, busy=True), 409


#: How often one request tries to start an attempt while other starts of the same exam by the same
#: user keep taking the attempt number first.
START_TRIES = 3


def _start(session: Session, tool: Exam, user: User, form: StartForm):
    """Start an attempt (committed) and send the user to the vendor; raises IntegrityError when
    another start took the attempt number meanwhile (nothing of this one is kept)."""
    # Only the attempts this start needs, not the user's whole history with the tool: loading every
    # earlier attempt made each start slower than the one before (about 6 µs of CPU per attempt).
    mine = (ToolCall.tool_id == tool.id, ToolCall.user_id == user.id)
    if not tool.restartable and session.scalar(
        select(ToolCall.id).where(*mine, ToolCall.status == Status.FINISHED_OK).limit(1)
    ):
        return render_template("portal/start.html", tool=tool, form=form, refused=True), 409
    still_open = session.scalars(select(ToolCall).where(*mine, ToolCall.status.in_(OPEN))).all()
    toolcall = lifecycle.create(session, tool, user, f"attempt started by {user.username}")
    for previous in still_open:
        try:
            lifecycle.advance(
                session, previous, (Status.FINISHED_ERR, f"superseded by attempt {toolcall.attempt}")
            )
        except lifecycle.ConcurrentTransition:
            pass  # it moved on meanwhile (e.g. its result arrived): leave it
    token = current_app.extensions["start_tokens"].issue(toolcall.id)
    registration = tool.client.lti
    if registration is None:
        target = add_query(tool.client.receive_start_token_url, access_token=token)
        sent = f"start token issued; user sent to {tool.client.name}"
    else:  # an LTI tool: the start token is the launch's lti_message_hint (webapp.lti.launch)
        target = launch.login_initiation(
            tool, registration, user, token, current_app.config["TOOLCALL_PUBLIC_URL"]
        )
        sent = f"start token issued; user sent to {tool.client.name}'s LTI login ({registration.login_url})"
    lifecycle.advance(session, toolcall, (Status.START_TK_SENT, sent))
    session.commit()
    return redirect(target, code=303)


@bp.get("/tooluser/attempts/")
@login_required
def attempts():
    rows = (
        get_session()
        .scalars(select(ToolCall).where(ToolCall.user_id == current_user.id).order_by(ToolCall.id.desc()))
        .all()
    )
    return render_template("portal/attempts.html", attempts=rows)
