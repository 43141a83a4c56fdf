"""The toolcall domain's tables (SQLAlchemy 2, typed). Usable without a Flask app context.

Table names are fixed by the API (the first five are the original system's).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from flask_login import UserMixin
from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from webapp import passwords


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_persnr() -> str:
    """A pseudonymous person number: ``N`` and 32 random decimal digits (the original's format),
    unrelated to any database id."""
    return "N" + "".join(secrets.choice("0123456789") for _ in range(32))


class UTCDateTime(TypeDecorator):
    """A moment, read back timezone-aware in UTC on every database.

    PostgreSQL keeps the offset, SQLite keeps none; without this, code comparing a stored time with
    ``utcnow()`` works on one and raises (naive vs aware) on the other. Times are stored in UTC; a
    naive time is taken as UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime()}


class User(UserMixin, Base):
    __tablename__ = "toolcall_user"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(150), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    first_name: Mapped[str] = mapped_column(String(150), default="")
    last_name: Mapped[str] = mapped_column(String(150), default="")
    email: Mapped[str] = mapped_column(String(254), default="")
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    extra_time: Mapped[bool] = mapped_column(Boolean, default=False)
    persnr: Mapped[str] = mapped_column(String(33), unique=True, default=new_persnr)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    #: Part of every login session's id (``get_id``): bumping it ends all of them, copies included.
    session_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    def set_password(self, password: str) -> None:
        self.password_hash = passwords.hash_password(password)

    def check_password(self, password: str) -> bool:
        return passwords.check_password(self.password_hash, password)

    def get_id(self) -> str:
        """The id flask-login keeps in the session: ``<user id>:<session version>``."""
        return f"{self.id}:{self.session_version}"

    def end_sessions(self) -> None:
        """Ends every login session of this user (at logout, and with a new password).

        An increment in SQL, so that two logouts at once both count."""
        self.session_version = User.session_version + 1


class Client(Base):
    """A vendor: where start tokens are sent and result tokens are fetched from; or an LTI 1.3 tool
    (``lti`` set), which gets the start token as its ``lti_message_hint`` and reports scores."""

    __tablename__ = "toolcall_client"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    receive_start_token_url: Mapped[str] = mapped_column(String(500))
    receive_result_token_url: Mapped[str] = mapped_column(String(500))
    secret: Mapped[str | None] = mapped_column(String(255), default=None)

    tools: Mapped[list[Exam]] = relationship(back_populates="client")
    #: Set when the client is an LTI 1.3 tool (``webapp.lti``): its exams launch through LTI.
    lti: Mapped[LtiRegistration | None] = relationship(back_populates="client", uselist=False)


class Exam(Base):
    """An exam hosted by a client. The vendor API, the CLI (``tools add``), the URLs and the table call
    it a *tool*, as the original system did; the code says exam, so that *tool* means a ToolBus tool."""

    __tablename__ = "toolcall_tool"

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("toolcall_client.id"))
    slug: Mapped[str] = mapped_column(String(100), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    icon: Mapped[str] = mapped_column(String(200), default="")
    restartable: Mapped[bool] = mapped_column(Boolean, default=True)
    deadline_minutes: Mapped[int] = mapped_column(Integer, default=240)
    # Exams of an LTI tool (``webapp.lti``): where the launch goes (None: the tool's launch URL) and
    # the custom parameters sent with it (a JSON object of strings).
    launch_url: Mapped[str | None] = mapped_column(String(500), default=None)
    custom: Mapped[str] = mapped_column(Text, default="{}")

    client: Mapped[Client] = relationship(back_populates="tools")


class ToolCall(Base):
    """One attempt of a user at a tool. ``status`` changes only through ``webapp.lifecycle``.

    ``attempt`` numbers a user's attempts at a tool, 1, 2, ...: unique, so that two starts at once
    (a double click opens two windows) cannot both take the same number -- the second one's INSERT
    fails, and the start is made again, after the first."""

    __tablename__ = "toolcall_toolcall"
    # One index per list, each ending in the list's order (started, id), so that a page is a short
    # walk along an index whatever the table's size (keyset pagination, webapp/keyset.py).
    __table_args__ = (
        Index("uq_toolcall_attempt", "tool_id", "user_id", "attempt", unique=True),
        Index("ix_toolcall_started_id", "started", "id"),
        Index("ix_toolcall_status_started_id", "status", "started", "id"),
        Index("ix_toolcall_tool_started_id", "tool_id", "started", "id"),
        Index("ix_toolcall_user_started_id", "user_id", "started", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    tool_id: Mapped[int] = mapped_column(ForeignKey("toolcall_tool.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("toolcall_user.id"))
    started: Mapped[datetime] = mapped_column(default=utcnow)
    ended: Mapped[datetime | None] = mapped_column(default=None)
    status: Mapped[str] = mapped_column(String(30))
    attempt: Mapped[int] = mapped_column(Integer, default=1)

    tool: Mapped[Exam] = relationship()
    user: Mapped[User] = relationship()
    log: Mapped[list[ToolCallLog]] = relationship(order_by="ToolCallLog.id", back_populates="toolcall")
    results: Mapped[list[ToolCallResult]] = relationship(
        order_by="ToolCallResult.id", back_populates="toolcall"
    )


class ToolCallLog(Base):
    """One row per status a ToolCall took, with a short reason."""

    __tablename__ = "toolcall_toolcalllog"

    id: Mapped[int] = mapped_column(primary_key=True)
    toolcall_id: Mapped[int] = mapped_column(ForeignKey("toolcall_toolcall.id"), index=True)
    timestamp: Mapped[datetime] = mapped_column(default=utcnow)
    status: Mapped[str] = mapped_column(String(30))
    details: Mapped[str] = mapped_column(Text, default="")

    toolcall: Mapped[ToolCall] = relationship(back_populates="log")


class StatusCount(Base):
    """The ToolCalls in each status, kept with the lifecycle: every change adds a row (-n for the
    status left, +n for the one taken), the sweep sums the rows into one per status
    (``webapp.lifecycle.counts``, ``compact_counts``). Rows are only ever added, so concurrent
    changes never wait on each other for a counter."""

    __tablename__ = "toolcall_statuscount"

    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(30))
    delta: Mapped[int] = mapped_column(Integer)


class ToolCallResult(Base):
    """A vendor's result: the body verbatim, and the fields taken from it."""

    __tablename__ = "toolcall_toolcallresult"
    __table_args__ = (Index("ix_toolcallresult_token", "token"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    toolcall_id: Mapped[int] = mapped_column(ForeignKey("toolcall_toolcall.id"), index=True)
    data: Mapped[str] = mapped_column(Text)
    token: Mapped[str] = mapped_column(String(255))
    persnr: Mapped[str] = mapped_column(String(33))
    participant_id: Mapped[str] = mapped_column(String(255), default="")
    exam: Mapped[str] = mapped_column(String(200))
    exam_type: Mapped[str] = mapped_column(String(50), default="")
    passed: Mapped[bool] = mapped_column(Boolean)
    score: Mapped[int | None] = mapped_column(Integer, default=None)
    timestamp: Mapped[datetime | None] = mapped_column(default=None)
    late: Mapped[bool] = mapped_column(Boolean, default=False)
    stored: Mapped[datetime] = mapped_column(default=utcnow)

    toolcall: Mapped[ToolCall] = relationship(back_populates="results")


class ResultFetch(Base):
    """A result fetch the portal owes a client: the source of truth; a Celery message is a trigger."""

    __tablename__ = "toolcall_resultfetch"
    __table_args__ = (
        UniqueConstraint("client_id", "token", name="uq_resultfetch_client_token"),
        Index("ix_resultfetch_toolcall_id", "toolcall_id"),
        Index("ix_resultfetch_token", "token"),
        # The lists, newest reported first (all, and by state), as for ToolCalls.
        Index("ix_resultfetch_reported_id", "reported_at", "id"),
        Index("ix_resultfetch_state_reported_id", "state", "reported_at", "id"),
        # The sweep's walk: owed fetches, oldest due first; done and failed ones are not in it.
        Index(
            "ix_resultfetch_owed_due",
            "next_attempt_at",
            postgresql_where=text("state = 'owed'"),
            sqlite_where=text("state = 'owed'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("toolcall_client.id"))
    token: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(10), default="owed")  # owed, done, failed
    reported_at: Mapped[datetime] = mapped_column(default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    claimed_until: Mapped[datetime | None] = mapped_column(default=None)
    last_error: Mapped[str] = mapped_column(Text, default="")
    body: Mapped[str] = mapped_column(Text, default="")
    toolcall_id: Mapped[int | None] = mapped_column(ForeignKey("toolcall_toolcall.id"), default=None)
    #: When the sweep last queued it: the next run leaves it alone while its message may still be
    #: waiting in the broker.
    queued_at: Mapped[datetime | None] = mapped_column(default=None)

    client: Mapped[Client] = relationship()
    toolcall: Mapped[ToolCall | None] = relationship()


# The LTI platform's tables are part of the one schema (and its migrations); they live with it.
from webapp.lti.models import LtiRegistration  # noqa: E402, F401
