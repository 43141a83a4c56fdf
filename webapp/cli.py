"""Flask CLI commands of the portal (names fixed by the docs/api.md §8)::

    flask --app webapp init-db
    flask --app webapp load-demo
    flask --app webapp users add NAME --password PW [--admin] [--first-name F] [--last-name L] [--email E] [--extra-time]
    flask --app webapp clients add NAME --start-url URL --result-url URL [--secret S]
    flask --app webapp tools add SLUG --client NAME --name TEXT [--description TEXT] [--deadline-minutes N] [--not-restartable]
          [--launch-url URL] [--custom KEY=VALUE]... [--score-maximum N]      (the last three: LTI tools only)
    flask --app webapp lti-tools add ..., lti-keys rotate                   (webapp/lti/cli.py)
    flask --app webapp prune --older-than 365d [--bodies-older-than 30d] [--batch N] [--pause S] [--dry-run]

Each command says what it saved; an error says what is missing and how to add it.
"""

from __future__ import annotations

import os

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext
from sqlalchemy import select
from sqlalchemy.orm import Session

from webapp import outbound, retention
from webapp.lti import grades, registrations
from webapp.lti.cli import COMMANDS as LTI_COMMANDS
from webapp.models import Client, Exam, User

#: Where the demo vendor (examples/vendor, the Procfile's `vendor` line) listens by default.
DEMO_VENDOR = "http://127.0.0.1:5001"


def demo_vendor_url() -> str:
    """The demo vendor's base URL: ``TOOLCALL_DEMO_VENDOR_URL``, for a vendor moved off port 5001."""
    return (os.environ.get("TOOLCALL_DEMO_VENDOR_URL") or DEMO_VENDOR).rstrip("/")


users = AppGroup("users", help="Manage users.")
clients = AppGroup("clients", help="Manage clients (vendors).")
tools = AppGroup("tools", help="Manage tools (exams).")


def _db():
    return current_app.extensions["db"]


def save_user(session: Session, name: str, password: str, admin: bool = False, **fields) -> User:
    """Create or update a user (by name). Setting an existing user's password ends the user's login
    sessions, as a new password should."""
    existing = session.scalar(select(User).where(User.username == name))
    user = existing or User(username=name)
    user.set_password(password)
    if existing is not None:
        user.end_sessions()
    user.is_admin = admin
    for key, value in fields.items():
        if value is not None:
            setattr(user, key, value)
    session.add(user)
    return user


def save_client(
    session: Session, name: str, start_url: str, result_url: str, secret: str | None = None
) -> Client:
    client = session.scalar(select(Client).where(Client.name == name)) or Client(name=name)
    client.receive_start_token_url = start_url
    client.receive_result_token_url = result_url
    client.secret = secret or None
    session.add(client)
    return client


def save_tool(session: Session, slug: str, client: Client, name: str, description: str = "",
              deadline_minutes: int = 240, restartable: bool = True) -> Exam:  # fmt: skip
    tool = session.scalar(select(Exam).where(Exam.slug == slug)) or Exam(slug=slug)
    tool.client = client
    tool.name = name
    tool.description = description
    tool.deadline_minutes = deadline_minutes
    tool.restartable = restartable
    session.add(tool)
    return tool


# Commands outside an AppGroup get no app context of their own: ``flask`` pushes one, but a test
# runner invoking ``app.cli`` does not.
@click.command("init-db")
@with_appcontext
def init_db() -> None:
    """Create or upgrade the schema (safe to run twice)."""
    db = _db()
    db.upgrade()
    click.echo(f"database {db.engine.url.render_as_string(hide_password=True)} is up to date")


@click.command("load-demo")
@with_appcontext
def load_demo() -> None:
    """Demo data: admin/admin (operator), user/user, client "testclient" with tool "my-tool"."""
    with _db().session() as session:
        save_user(
            session,
            "admin",
            "admin",
            admin=True,
            first_name="Ada",
            last_name="Admin",
            email="admin@example.org",
        )
        save_user(session, "user", "user", first_name="Uma", last_name="User", email="user@example.org")
        vendor = demo_vendor_url()
        client = save_client(session, "testclient", f"{vendor}/start/", f"{vendor}/result-data/")
        save_tool(session, "my-tool", client, "My tool", "A short demo exam hosted by the demo vendor.")
    click.echo("demo data loaded: users admin/admin and user/user, client testclient, tool my-tool")


@users.command("add")
@click.argument("name")
@click.option("--password", required=True)
@click.option("--admin", is_flag=True, help="may use the ops pages")
@click.option("--first-name")
@click.option("--last-name")
@click.option("--email")
@click.option("--extra-time", is_flag=True)
def users_add(name, password, admin, first_name, last_name, email, extra_time) -> None:
    """Add (or update) a user; updating sets the password and ends the user's sessions."""
    with _db().session() as session:
        save_user(session, name, password, admin, first_name=first_name, last_name=last_name, email=email,
                  extra_time=extra_time)  # fmt: skip
    click.echo(f"user {name} saved")


@clients.command("add")
@click.argument("name")
@click.option("--start-url", required=True, help="where users are sent with their start token")
@click.option("--result-url", required=True, help="where result data is fetched with a result token")
@click.option("--secret", help="shared secret: client authentication and signed calls")
def clients_add(name, start_url, result_url, secret) -> None:
    """Add (or update) a client."""
    for option, url in (("--start-url", start_url), ("--result-url", result_url)):
        _check_vendor_url(option, url)
    with _db().session() as session:
        save_client(session, name, start_url, result_url, secret)
    click.echo(f"client {name} saved")


def _check_vendor_url(option: str, url: str) -> None:
    """Refuse a URL the portal cannot call (``outbound.check_url``: the fetches' own check), with
    click's usage error naming the option."""
    try:
        outbound.check_url(url, production=bool(current_app.config["TOOLCALL_PRODUCTION"]))
    except outbound.URLRefused as e:
        raise click.BadParameter(str(e), param_hint=f"'{option}'") from None


@tools.command("add")
@click.argument("slug")
@click.option("--client", "client_name", required=True)
@click.option("--name", required=True)
@click.option("--description", default="")
@click.option("--deadline-minutes", type=click.IntRange(min=1), default=240)
@click.option("--not-restartable", is_flag=True)
@click.option("--launch-url", help="LTI: where this exam's launches go (default: the tool's launch URL)")
@click.option("--custom", multiple=True, metavar="KEY=VALUE", help="LTI: a custom parameter of the launch")
@click.option(
    "--score-maximum", type=click.FloatRange(min=0, min_open=True), help="LTI: the line item's maximum"
)
def tools_add(slug, client_name, name, description, deadline_minutes, not_restartable, launch_url, custom,
              score_maximum) -> None:  # fmt: skip
    """Add (or update) a tool."""
    with _db().session() as session:
        client = session.scalar(select(Client).where(Client.name == client_name))
        if client is None:
            raise click.UsageError(
                f"no client {client_name!r}; add it first with: clients add {client_name} ..."
            )
        lti_options = launch_url is not None or custom or score_maximum is not None
        if client.lti is None and lti_options:
            raise click.UsageError(
                f"--launch-url, --custom and --score-maximum are for exams of LTI tools; {client_name} is a vendor"
            )
        try:
            if launch_url is not None:
                launch_url = registrations.check_url(
                    launch_url, "launch URL", current_app.config["TOOLCALL_PRODUCTION"]
                )
            parameters = registrations.parse_custom(custom)
        except registrations.RegistrationError as e:
            raise click.UsageError(str(e)) from None
        tool = save_tool(session, slug, client, name, description, deadline_minutes, not not_restartable)
        if client.lti is not None:
            tool.launch_url = launch_url or None
            tool.custom = registrations.dump_custom(parameters)
            grades.set_default(session, tool, score_maximum=score_maximum)
    click.echo(f"tool {slug} saved")


class Age(click.ParamType):
    name = "age"

    def convert(self, value, param, ctx):
        try:
            return retention.parse_age(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


@click.command("prune")
@click.option("--older-than", type=Age(), required=True, help="e.g. 365d: prune what is older than this")
@click.option("--bodies-older-than", type=Age(), help="e.g. 30d: empty done fetches' kept bodies sooner")
@click.option("--batch", type=click.IntRange(min=1), default=retention.BATCH, show_default=True)
@click.option("--pause", type=click.FloatRange(min=0), default=0.0, help="seconds between batches")
@click.option("--dry-run", is_flag=True, help="count what would be pruned; change nothing")
@with_appcontext
def prune(older_than, bodies_older_than, batch, pause, dry_run) -> None:
    """Prune old log rows, finished result fetches and kept bodies (the retention policy,
    docs/operating.md); stored results and ToolCalls are kept. Safe while the system runs."""
    if older_than < retention.MINIMUM or (
        bodies_older_than is not None and bodies_older_than < retention.MINIMUM
    ):
        raise click.BadParameter(
            f"a cutoff must be at least {retention.MINIMUM.days} day (fetches retry that long)"
        )

    def progress(done: retention.Pruned) -> None:
        if done.batches % 20 == 0:
            click.echo(f"  ... {done.batches} batches: {done.log_rows} log rows, {done.fetches} fetches, "
                       f"{done.bodies} bodies")  # fmt: skip

    done = retention.prune(_db(), older_than, bodies_older_than, batch, pause, dry_run, progress=progress)
    verb = "would prune" if dry_run else "pruned"
    click.echo(
        f"{verb} {done.log_rows} log rows, {done.fetches} finished result fetches and {done.bodies} kept bodies "
        f"older than {retention.age_words(older_than)} ({done.batches} batches)"
    )


def register(app: Flask) -> None:
    for command in (init_db, load_demo, users, clients, tools, prune, *LTI_COMMANDS):
        app.cli.add_command(command)
