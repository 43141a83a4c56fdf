"""The user's side: the tools, starting an attempt, the user's attempts.

Starting is a POST (with a CSRF token) from a form that opens the vendor in a new window with no
opener; a GET of the start URL shows the same form, for links and bookmarks. An exam of an LTI tool
starts the same way; its start token goes to the tool's login URL (``webapp.lti.launch``).
A start that would end
a running attempt of the same exam (supersede it) asks first: the POST must say ``supersede=yes``,
which only the confirmation form sends. Attempts are described in ``webapp.phrases``' words.
"""

from __future__ import annotations

import logging

from flask import Blueprint, abort, current_app, redirect, render_template, request
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from webapp import keyset, lifecycle, phrases
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


def _running(tool_id: int | None = None) -> list[ToolCall]:
    """The current user's attempts still open (of one exam, or of all), newest first."""
    query = select(ToolCall).where(ToolCall.user_id == current_user.id, ToolCall.status.in_(OPEN))
    if tool_id is not None:
        query = query.where(ToolCall.tool_id == tool_id)
    return get_session().scalars(query.order_by(ToolCall.id.desc())).all()


@bp.get("/")
@login_required
def home():
    tools = get_session().scalars(select(Exam).order_by(Exam.name)).all()
    running = {}
    for toolcall in _running():
        running.setdefault(toolcall.tool_id, toolcall)  # the newest per exam
    return render_template(
        "portal/home.html", tools=tools, form=StartForm(), running=running, phrase=phrases.of
    )


@bp.route("/tooluser/tools/<slug>/", methods=["GET", "POST"])
@login_required
def start(slug: str):
    tool = _tool(slug)
    form = StartForm()
    running = _running(tool.id)
    page = {"tool": tool, "form": form, "running": running[0] if running else None, "phrase": phrases.of}
    if not form.validate_on_submit():
        return render_template("portal/start.html", **page)
    if running and request.form.get("supersede") != "yes":
        # Not confirmed (a form from before the attempt started, a second click): ask, end nothing.
        return render_template("portal/start.html", **page), 409
    session = get_session()
    user = current_user._get_current_object()
    for _ in range(START_TRIES):
        try:
            return _start(session, tool, user, page)
        except IntegrityError:
            # Another start of this exam by this user (a double click opens two windows) took the
            # attempt number first (it is unique): start again, after that one, superseding it.
            session.rollback()
    log.warning(
        "user %s: %d starts of %s in a row lost the race for an attempt number", user.id, START_TRIES, slug
    )
    return render_template("portal/start.html", **{**page, "running": None}, busy=True), 409


#: How often one request tries to start an attempt while other starts of the same exam by the same
#: user keep taking the attempt number first.
START_TRIES = 3


def _start(session: Session, tool: Exam, user: User, page: dict):
    """Start an attempt (committed) and send the user to the vendor; raises IntegrityError when
    another start took the attempt number meanwhile (nothing of this one is kept)."""
    # Only the attempts this start needs, not the user's whole history with the tool: loading every
    # earlier attempt made each start slower than the one before (about 6 µs of CPU per attempt).
    mine = (ToolCall.tool_id == tool.id, ToolCall.user_id == user.id)
    if not tool.restartable and session.scalar(
        select(ToolCall.id).where(*mine, ToolCall.status == Status.FINISHED_OK).limit(1)
    ):
        return render_template("portal/start.html", **{**page, "running": None}, refused=True), 409
    # Read again on every try: a start that lost the race left an attempt that this one supersedes.
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


#: What the attempt pages read of each attempt for its phrase, in one query each rather than per row.
_PHRASE_PARTS = (selectinload(ToolCall.log), selectinload(ToolCall.results), selectinload(ToolCall.tool))


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
            options=[*_PHRASE_PARTS],
        )
    except keyset.BadCursor as e:
        return render_template("error.html", status=400, code="bad-request", msg=str(e)), 400
    return render_template("portal/attempts.html", page=page, phrase=phrases.of)


@bp.get("/tooluser/attempts/<int:toolcall_id>/")
@login_required
def attempt(toolcall_id: int):
    toolcall = get_session().scalar(
        select(ToolCall)
        .where(ToolCall.id == toolcall_id, ToolCall.user_id == current_user.id)  # only one's own
        .options(*_PHRASE_PARTS)
    )
    if toolcall is None:
        abort(404)
    return render_template(
        "portal/attempt.html", toolcall=toolcall, phrase=phrases.of(toolcall), form=StartForm()
    )
