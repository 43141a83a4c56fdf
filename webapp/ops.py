"""The operator's pages (admins only): what the ToolCalls and result fetches are doing, and the
clients and tools they run on.

    /ops/?chart=24h|14d                    dashboard: ToolCalls by status, a chart of the attempts
                                           started per hour (day), owed fetches, failed ones to retry
    /ops/toolcalls/?status=S&tool=SLUG&user=U&token=T&since=D&until=D&id=N
                                           ToolCalls, newest first, 50 a page; found by user
                                           (username or persnr), result token, start date, or id
    /ops/toolcalls/<id>/                   one ToolCall: its log, stored results and result fetches
    /ops/fetches/?state=failed&token=T     result fetches; a failed one can be retried (POST)
    /ops/clients/, /ops/tools/             list, add (``new/``) and edit (``<id>/``)
    /ops/toolbus/                          the ToolBus: tools.toml, the Celery workers online (their
                                           queues, pool, calls served, tool restarts), failed calls
    /ops/lti-tools/...                     LTI tools (webapp/lti/admin.py)

Every list is paginated by keyset (``webapp.keyset``: ``?after=``/``?before=`` cursors, counts capped
at 10,000) along an index of its own, and every count is cheap (the ToolCalls by status are kept
with the lifecycle), so no page costs more with a million ToolCalls than with ten thousand.

The navigation also links to Flower (``FLOWER_URL``), which asks its own login.

Someone not logged in is sent to the login page; a user who is not an admin gets 403. A client's
secret is never shown, only whether one is set.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, time, timedelta

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from sqlalchemy import func, select, union
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import joinedload, selectinload
from wtforms import (
    BooleanField,
    DateField,
    FloatField,
    Form,
    HiddenField,
    IntegerField,
    PasswordField,
    SelectChoice,
    SelectField,
    StringField,
    TextAreaField,
    ValidationError,
)
from wtforms.validators import DataRequired, InputRequired, Length, NumberRange, Optional, Regexp

from webapp import attempt_chart, fetches, keyset, lifecycle, outbound, toolbus_status
from webapp.auth import login_manager, safe_next
from webapp.cli import save_client, save_tool
from webapp.db import get_session
from webapp.lifecycle import Status
from webapp.lti import grades, registrations
from webapp.lti.models import LineItem, Score
from webapp.models import Client, Exam, ResultFetch, ToolCall, ToolCallResult, User, utcnow

log = logging.getLogger("webapp.ops")
bp = Blueprint("ops", __name__, url_prefix="/ops")

#: Failed result fetches listed on the dashboard; the fetch list has them all.
DASHBOARD_FAILED = 10


@bp.before_request
def admins_only():
    if not current_user.is_authenticated:
        return login_manager.unauthorized()
    if not current_user.is_admin:
        msg = "The ops pages are for operators only; ask an admin if you need access."
        return render_template("error.html", status=403, code="forbidden", msg=msg), 403
    return None


# ---- paging and counting ----------------------------------------------------------------------------


def bad_link(error: keyset.BadCursor):
    return render_template("error.html", status=400, code="bad-request", msg=str(error)), 400


def capped_count(*filters) -> tuple[int, bool]:
    """Result fetches matching ``filters``, counted up to ``keyset.COUNT_CAP``: (count, capped)."""
    limited = select(ResultFetch.id).where(*filters).limit(keyset.COUNT_CAP + 1).subquery()
    found = get_session().scalar(select(func.count()).select_from(limited))
    return min(found, keyset.COUNT_CAP), found > keyset.COUNT_CAP


def count_text(counted: tuple[int, bool]) -> str:
    return f"{counted[0]:,}+" if counted[1] else f"{counted[0]:,}"


# ---- dashboard and ToolCalls ------------------------------------------------------------------------


@bp.get("/")
def dashboard():
    session = get_session()
    found = lifecycle.counts(session)
    by_status = [(status.value, found.get(status.value, 0)) for status in Status]
    span = request.args.get("chart", attempt_chart.DEFAULT_SPAN)
    if span not in attempt_chart.SPANS:
        span = attempt_chart.DEFAULT_SPAN
    failed_fetches = session.scalars(
        select(ResultFetch)
        .options(joinedload(ResultFetch.client))
        .where(ResultFetch.state == "failed")
        .order_by(ResultFetch.reported_at.desc(), ResultFetch.id.desc())
        .limit(DASHBOARD_FAILED)
    ).all()
    owed = capped_count(ResultFetch.state == "owed")
    failed = capped_count(ResultFetch.state == "failed")
    return render_template(
        "ops/dashboard.html",
        by_status=by_status,
        total=sum(found.values()),
        owed=owed[0],
        owed_text=count_text(owed),
        failed=failed[0],
        failed_text=count_text(failed),
        failed_fetches=failed_fetches,
        chart=attempt_chart.build(session, utcnow(), span),
        spans=attempt_chart.SPANS.values(),
    )


def _strip(value):
    return value.strip() if isinstance(value, str) else value


class ToolCallFilter(Form):
    """The ToolCall list's filters and search (a GET form: no CSRF token, nothing changes)."""

    status = SelectField(
        "Status", default="", choices=[SelectChoice("", "any")] + [SelectChoice(s.value) for s in Status]
    )
    tool = SelectField("Tool", default="")
    user = StringField(
        "User (username or persnr)", filters=[_strip], validators=[Optional(), Length(max=150)]
    )
    token = StringField("Result token", filters=[_strip], validators=[Optional(), Length(max=255)])
    since = DateField("Started from", validators=[Optional()])
    until = DateField("to (inclusive)", validators=[Optional()])
    id = IntegerField("ToolCall #", validators=[Optional(), NumberRange(min=1)])

    def validate_until(self, field) -> None:
        if field.data and self.since.data and field.data < self.since.data:
            raise ValidationError("must not be before the start date")


def _midnight(day) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def _toolcall_filters(session, form: ToolCallFilter) -> tuple[list, str | None]:
    """The WHERE clauses of the form's filters, and a note when a search finds no such user."""
    filters = []
    if form.status.data:
        filters.append(ToolCall.status == form.status.data)
    if form.tool.data:
        filters.append(ToolCall.tool_id == session.scalar(select(Exam.id).where(Exam.slug == form.tool.data)))
    if form.user.data:
        # A persnr is "N" and 32 digits (models.new_persnr); either way a unique index finds it.
        user_id = session.scalar(
            select(User.id).where((User.username == form.user.data) | (User.persnr == form.user.data))
        )
        if user_id is None:
            return [ToolCall.id.is_(None)], f"No user has the username or persnr {form.user.data!r}."
        filters.append(ToolCall.user_id == user_id)
    if form.token.data:
        # The fetch records of the token (pruned after a while) and the results stored under it.
        found = union(
            select(ResultFetch.toolcall_id).where(
                ResultFetch.token == form.token.data, ResultFetch.toolcall_id.is_not(None)
            ),
            select(ToolCallResult.toolcall_id).where(ToolCallResult.token == form.token.data),
        )
        filters.append(ToolCall.id.in_(select(found.subquery().c[0])))
    if form.since.data:
        filters.append(ToolCall.started >= _midnight(form.since.data))
    if form.until.data:
        filters.append(ToolCall.started < _midnight(form.until.data) + timedelta(days=1))
    return filters, None


@bp.get("/toolcalls/")
def toolcalls():
    session = get_session()
    form = ToolCallFilter(request.args)
    form.tool.choices = [SelectChoice("", "any")] + [
        SelectChoice(tool.slug, f"{tool.name} ({tool.slug})")
        for tool in session.scalars(select(Exam).order_by(Exam.slug))
    ]
    if not form.validate():
        return render_template("ops/toolcalls.html", form=form, page=None), 400
    if form.id.data:
        if session.get(ToolCall, form.id.data) is None:
            form.id.errors.append(f"there is no ToolCall {form.id.data}")
            return render_template("ops/toolcalls.html", form=form, page=None), 404
        return redirect(url_for("ops.toolcall", toolcall_id=form.id.data), code=303)
    filters, note = _toolcall_filters(session, form)
    try:
        page = keyset.paginate(
            session,
            ToolCall,
            (ToolCall.started, ToolCall.id),
            filters,
            request.args,
            options=[joinedload(ToolCall.tool), joinedload(ToolCall.user)],
        )
    except keyset.BadCursor as e:
        return bad_link(e)
    return render_template("ops/toolcalls.html", form=form, page=page, note=note)


@bp.get("/toolcalls/<int:toolcall_id>/")
def toolcall(toolcall_id: int):
    session = get_session()
    found = session.get(
        ToolCall,
        toolcall_id,
        options=[joinedload(ToolCall.user), joinedload(ToolCall.tool).joinedload(Exam.client)],
    )
    if found is None:
        abort(404)
    fetches = session.scalars(
        select(ResultFetch)
        .options(joinedload(ResultFetch.client))
        .where(ResultFetch.toolcall_id == found.id)
        .order_by(ResultFetch.id)
    ).all()
    scores = session.scalars(select(Score).where(Score.toolcall_id == found.id).order_by(Score.id)).all()
    return render_template("ops/toolcall.html", toolcall=found, fetches=fetches, scores=scores)


# ---- result fetches ---------------------------------------------------------------------------------


class FetchFilter(Form):
    state = SelectField(
        "State", default="failed", choices=[SelectChoice(s) for s in ("failed", "owed", "done", "all")]
    )
    token = StringField("Result token", filters=[_strip], validators=[Optional(), Length(max=255)])


class RetryForm(FlaskForm):
    next = HiddenField()


@bp.get("/fetches/", endpoint="fetches")
def fetch_list():
    form = FetchFilter(request.args)
    if not form.validate():
        return render_template("ops/fetches.html", form=form, page=None), 400
    filters = []
    if form.state.data != "all":
        filters.append(ResultFetch.state == form.state.data)
    if form.token.data:
        filters.append(ResultFetch.token == form.token.data)
    try:
        page = keyset.paginate(
            get_session(),
            ResultFetch,
            (ResultFetch.reported_at, ResultFetch.id),
            filters,
            request.args,
            options=[joinedload(ResultFetch.client)],
        )
    except keyset.BadCursor as e:
        return bad_link(e)
    return render_template("ops/fetches.html", form=form, page=page)


@bp.post("/fetches/<int:fetch_id>/retry")
def retry_fetch(fetch_id: int):
    """Re-open a failed fetch (``fetches.reopen``: owed again, due now, with a fresh give-up
    window); then queue it."""
    form = RetryForm()
    back = safe_next(form.next.data) if form.next.data else url_for("ops.fetches")
    session = get_session()
    fetch = session.get(ResultFetch, fetch_id)
    if fetch is None:
        abort(404)
    if not form.validate_on_submit():
        abort(400)
    note = f"retried by operator {current_user.username} after failing: {fetch.last_error}"
    if not fetches.reopen(session, fetch_id, note):
        session.refresh(fetch)
        flash(f"Result fetch {fetch_id} is {fetch.state}, not failed: nothing to retry.", "error")
        return redirect(back, code=303)
    log.info("result fetch %s re-opened by operator %s", fetch_id, current_user.username)
    try:
        fetches.queue(current_app.extensions["celery"], fetch_id)
    except Exception as e:  # the fetch is owed in the database: the sweep queues it
        log.error("could not queue result fetch %s (the sweep will): %s", fetch_id, e)
        flash(
            f"Result fetch {fetch_id} is owed again, but could not be queued ({e}); "
            "the sweep queues it once the broker is back.",
            "error",
        )
    else:
        flash(f"Result fetch {fetch_id} is owed again and queued.")
    return redirect(back, code=303)


# ---- the ToolBus -------------------------------------------------------------------------------------


@bp.get("/toolbus/")
def toolbus():
    """Tools, workers and failed calls, as the workers last wrote them (no broadcast per view)."""
    config = current_app.config
    found = toolbus_status.status(
        config["REDIS_URL"], config["TOOLCALL_TOOLS"], config["TOOLCALL_WORKER_STATE_SECS"]
    )
    return render_template("ops/toolbus.html", status=found)


# ---- clients and tools ------------------------------------------------------------------------------


def web_url(form, field) -> None:
    """A URL the portal can call: http(s) with a valid host and port, https only in production
    (the fetches' own check, ``outbound.check_url``, so that what is saved can be fetched)."""
    production = bool(current_app.config.get("TOOLCALL_PRODUCTION"))
    try:
        outbound.check_url(field.data or "", production=production)
    except outbound.URLRefused as e:
        wanted = "an https URL (production)" if production else "an http or https URL"
        raise ValidationError(f"{e}; it must be {wanted}, e.g. https://vendor.example.org/start/") from None


class ClientForm(FlaskForm):
    name = StringField("Name", filters=[_strip], validators=[DataRequired(), Length(max=100)])
    start_url = StringField(
        "Start URL", filters=[_strip], validators=[DataRequired(), Length(max=500), web_url]
    )
    result_url = StringField(
        "Result URL", filters=[_strip], validators=[DataRequired(), Length(max=500), web_url]
    )
    # Never rendered with its value (PasswordField): a secret goes in, it does not come out.
    secret = PasswordField("New secret", validators=[Optional(), Length(max=255)])
    remove_secret = BooleanField("Remove the secret")

    def validate_remove_secret(self, field) -> None:
        if field.data and self.secret.data:
            raise ValidationError("either give a new secret or remove it, not both")


class ToolForm(FlaskForm):
    slug = StringField(
        "Slug",
        filters=[_strip],
        validators=[
            DataRequired(),
            Length(max=100),
            Regexp(
                r"[A-Za-z0-9][A-Za-z0-9._-]*\Z",
                message="letters, digits, '.', '_' and '-' only (it is part of the start URL)",
            ),
        ],
    )
    client = SelectField("Client", coerce=int)
    name = StringField("Name", filters=[_strip], validators=[DataRequired(), Length(max=200)])
    description = TextAreaField("Description", default="")
    restartable = BooleanField("Restartable (a new attempt after a finished one)", default=True)
    deadline_minutes = IntegerField(
        "Deadline (minutes)", default=240, validators=[InputRequired(), NumberRange(min=1, max=525600)]
    )
    # Exams of LTI tools only (webapp.lti).
    launch_url = StringField(
        "LTI launch URL (none: the tool's)",
        filters=[_strip],
        validators=[Optional(), Length(max=500), web_url],
    )
    custom = TextAreaField("LTI custom parameters (KEY=VALUE, one a line)", default="")
    score_maximum = FloatField(
        "LTI score maximum",
        default=100,
        validators=[Optional(), NumberRange(min=1e-9, message="must be greater than 0")],
    )

    def validate_custom(self, field) -> None:
        try:
            registrations.parse_custom([line for line in (field.data or "").splitlines() if line.strip()])
        except registrations.RegistrationError as e:
            raise ValidationError(str(e)) from None

    def lti_problem(self, client: Client | None) -> bool:
        """For a vendor's exam the LTI fields stay empty; says so on the form when they are not."""
        if client is None or client.lti is not None:
            return False
        if self.launch_url.data or (self.custom.data or "").strip():
            self.launch_url.errors.append(
                f"{client.name} is a vendor: launch URL and custom parameters are for LTI tools"
            )
            return True
        return False

    def save_lti(self, tool: Exam) -> None:
        """The LTI fields onto ``tool`` (an exam of an LTI tool); its line item too."""
        if tool.client.lti is None:
            return
        tool.launch_url = self.launch_url.data or None
        tool.custom = registrations.dump_custom(
            registrations.parse_custom(
                [line for line in (self.custom.data or "").splitlines() if line.strip()]
            )
        )
        grades.set_default(get_session(), tool, score_maximum=self.score_maximum.data)


def _taken(form_field, model, column, value, own_id: int | None) -> bool:
    """Whether another row already has ``value``; if so, says so on the field."""
    query = select(model.id).where(column == value)
    if own_id is not None:
        query = query.where(model.id != own_id)
    if get_session().scalar(query) is None:
        return False
    form_field.errors.append(f"{value!r} is taken; choose another")
    return True


def _commit(form_field, value) -> bool:
    """Commit; a unique name that another request took meanwhile is a form error, not a 500."""
    session = get_session()
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        form_field.errors.append(f"{value!r} is taken; choose another")
        return False
    return True


@bp.get("/clients/")
def clients():
    rows = (
        get_session()
        .scalars(
            select(Client).options(selectinload(Client.tools), selectinload(Client.lti)).order_by(Client.name)
        )
        .all()
    )
    return render_template("ops/clients.html", clients=rows)


@bp.route("/clients/new/", methods=["GET", "POST"])
def client_new():
    form = ClientForm()
    del form.remove_secret  # a new client has no secret to remove
    if form.validate_on_submit() and not _taken(form.name, Client, Client.name, form.name.data, None):
        save_client(
            get_session(), form.name.data, form.start_url.data, form.result_url.data, form.secret.data
        )
        if _commit(form.name, form.name.data):
            flash(f"Client {form.name.data} added.")
            return redirect(url_for("ops.clients"), code=303)
    return _form_page("ops/client_form.html", form, client=None)


@bp.route("/clients/<int:client_id>/", methods=["GET", "POST"])
def client_edit(client_id: int):
    client = get_session().get(Client, client_id) or abort(404)
    if client.lti is not None:  # an LTI tool has its own page
        return redirect(url_for("lti_admin.show", name=client.name), code=303)
    form = ClientForm(
        data={
            "name": client.name,
            "start_url": client.receive_start_token_url,
            "result_url": client.receive_result_token_url,
        }
    )
    if form.validate_on_submit() and not _taken(form.name, Client, Client.name, form.name.data, client.id):
        client.name = form.name.data
        client.receive_start_token_url = form.start_url.data
        client.receive_result_token_url = form.result_url.data
        if form.remove_secret.data:
            client.secret = None
        elif form.secret.data:
            client.secret = form.secret.data
        if _commit(form.name, form.name.data):
            flash(f"Client {form.name.data} saved.")
            return redirect(url_for("ops.clients"), code=303)
        client = get_session().get(Client, client_id)
    return _form_page("ops/client_form.html", form, client=client)


def _tool_form(**kwargs) -> ToolForm:
    form = ToolForm(**kwargs)
    form.client.choices = [
        SelectChoice(c.id, c.name) for c in get_session().scalars(select(Client).order_by(Client.name))
    ]
    return form


@bp.get("/tools/")
def tools():
    rows = get_session().scalars(select(Exam).options(joinedload(Exam.client)).order_by(Exam.slug)).all()
    return render_template("ops/tools.html", tools=rows)


@bp.route("/tools/new/", methods=["GET", "POST"])
def tool_new():
    form = _tool_form()
    if (
        form.validate_on_submit()
        and not _taken(form.slug, Exam, Exam.slug, form.slug.data, None)
        and not form.lti_problem(get_session().get(Client, form.client.data))
    ):
        session = get_session()
        tool = save_tool(
            session,
            form.slug.data,
            session.get(Client, form.client.data),
            form.name.data,
            form.description.data or "",
            form.deadline_minutes.data,
            form.restartable.data,
        )
        form.save_lti(tool)
        if _commit(form.slug, form.slug.data):
            flash(f"Tool {form.slug.data} added.")
            return redirect(url_for("ops.tools"), code=303)
    return _form_page("ops/tool_form.html", form, tool=None)


@bp.route("/tools/<int:tool_id>/", methods=["GET", "POST"])
def tool_edit(tool_id: int):
    session = get_session()
    tool = session.get(Exam, tool_id) or abort(404)
    form = _tool_form(
        data={
            "slug": tool.slug,
            "client": tool.client_id,
            "name": tool.name,
            "description": tool.description,
            "restartable": tool.restartable,
            "deadline_minutes": tool.deadline_minutes,
            "launch_url": tool.launch_url or "",
            "custom": "\n".join(f"{k}={v}" for k, v in registrations.custom_parameters(tool.custom).items()),
            "score_maximum": _score_maximum(tool),
        }
    )
    if (
        form.validate_on_submit()
        and not _taken(form.slug, Exam, Exam.slug, form.slug.data, tool.id)
        and not form.lti_problem(session.get(Client, form.client.data))
    ):
        tool.slug = form.slug.data
        tool.client = session.get(Client, form.client.data)
        tool.name = form.name.data
        tool.description = form.description.data or ""
        tool.restartable = form.restartable.data
        tool.deadline_minutes = form.deadline_minutes.data
        form.save_lti(tool)
        if _commit(form.slug, form.slug.data):
            flash(f"Tool {form.slug.data} saved.")
            return redirect(url_for("ops.tools"), code=303)
        tool = session.get(Exam, tool_id)
    return _form_page("ops/tool_form.html", form, tool=tool)


def _score_maximum(tool: Exam) -> float:
    item = get_session().scalar(select(LineItem.score_maximum).where(LineItem.default_for == tool.id))
    return item if item is not None else grades.DEFAULT_SCORE_MAXIMUM


def _form_page(template: str, form: FlaskForm, **context):
    """The form again; 400 when it was submitted and refused."""
    return render_template(template, form=form, **context), (400 if form.errors else 200)
