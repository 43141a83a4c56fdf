"""The user's side: the tools, starting an attempt, the user's attempts.

Starting is a POST (with a CSRF token) from a form that opens the vendor in a new window with no
opener; a GET of the start URL shows the same form, for links and bookmarks.
"""

from __future__ import annotations

import logging

from flask import Blueprint, abort, current_app, redirect, render_template, request
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from sqlalchemy import select
from sqlalchemy.orm import joinedload

from webapp import keyset, lifecycle
from webapp.db import get_session
from webapp.lifecycle import OPEN, Status
from webapp.models import Exam, ToolCall
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
    lifecycle.advance(
        session, toolcall, (Status.START_TK_SENT, f"start token issued; user sent to {tool.client.name}")
    )
    session.commit()
    return redirect(add_query(tool.client.receive_start_token_url, access_token=token), code=303)


@bp.get("/tooluser/attempts/")
@login_required
def attempts():
    """The user's attempts, newest first, a page at a time (``webapp.keyset``)."""
    try:
        page = keyset.paginate(
            get_session(),
            ToolCall,
            (ToolCall.started, ToolCall.id),
            [ToolCall.user_id == current_user.id],
            request.args,
            options=[joinedload(ToolCall.tool)],
        )
    except keyset.BadCursor as e:
        return render_template("error.html", status=400, code="bad-request", msg=str(e)), 400
    return render_template("portal/attempts.html", page=page)
