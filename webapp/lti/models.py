"""The LTI platform's tables (SQLAlchemy 2, typed), on the portal's one ``Base``.

- ``toolcall_lti_key``: the platform's signing keys (the private half encrypted, see ``keys``).
- ``toolcall_lti_registration``: what makes a client an LTI 1.3 tool (one per client).
- ``toolcall_lti_lineitem``: AGS line items; each exam of an LTI tool has its own (``default_for``),
  tools may add more in their contexts.
- ``toolcall_lti_score``: every accepted score, its body verbatim.
- ``toolcall_lti_result``: the latest score per line item and user: the row the timestamp rule is
  decided on, by compare and set.
"""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import Boolean, Float, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from webapp.models import Base, Client, Exam, User, utcnow


class PlatformKey(Base):
    """One RS256 key pair of the platform. The newest key that is not retired signs; a retired key
    stays published until the overlap after its retirement has passed."""

    __tablename__ = "toolcall_lti_key"

    id: Mapped[int] = mapped_column(primary_key=True)
    kid: Mapped[str] = mapped_column(String(64), unique=True)
    #: The private key as PKCS#8 PEM, encrypted (Fernet) under a key derived from SECRET_KEY.
    private_key: Mapped[str] = mapped_column(Text)
    #: The public key as a JWK (JSON text), as the key set publishes it.
    public_jwk: Mapped[str] = mapped_column(Text)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    retired: Mapped[datetime | None] = mapped_column(default=None)


class LtiRegistration(Base):
    """A client that is an LTI 1.3 tool: its URLs, its key, and the ids the platform gave it."""

    __tablename__ = "toolcall_lti_registration"

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("toolcall_client.id"), unique=True)
    #: OAuth ``client_id`` (``aud`` of every id_token), generated.
    lti_client_id: Mapped[str] = mapped_column(String(64), unique=True)
    deployment_id: Mapped[str] = mapped_column(String(64))
    login_url: Mapped[str] = mapped_column(String(500))
    launch_url: Mapped[str] = mapped_column(String(500))
    #: JSON list of the redirect URIs the tool may name (exact match).
    redirect_uris: Mapped[str] = mapped_column(Text, default="[]")
    deep_linking_url: Mapped[str] = mapped_column(String(500))
    #: The tool's key: a key set URL, or a public key (PEM); exactly one is set.
    jwks_url: Mapped[str | None] = mapped_column(String(500), default=None)
    public_key: Mapped[str | None] = mapped_column(Text, default=None)
    #: Whether names and e-mail go to the tool (launches, memberships).
    send_names: Mapped[bool] = mapped_column(Boolean, default=True)
    created: Mapped[datetime] = mapped_column(default=utcnow)

    client: Mapped[Client] = relationship(back_populates="lti")

    @property
    def redirect_uri_list(self) -> list[str]:
        return json.loads(self.redirect_uris or "[]")


class LineItem(Base):
    """An AGS line item in the context of one exam. ``default_for`` is set on the exam's own one,
    whose label, when not set, is the exam's name."""

    __tablename__ = "toolcall_lti_lineitem"

    id: Mapped[int] = mapped_column(primary_key=True)
    exam_id: Mapped[int] = mapped_column(ForeignKey("toolcall_tool.id"), index=True)
    default_for: Mapped[int | None] = mapped_column(ForeignKey("toolcall_tool.id"), unique=True, default=None)
    label: Mapped[str | None] = mapped_column(String(200), default=None)
    score_maximum: Mapped[float] = mapped_column(Float, default=100.0)
    resource_id: Mapped[str] = mapped_column(String(255), default="")
    tag: Mapped[str] = mapped_column(String(255), default="")
    resource_link_id: Mapped[str | None] = mapped_column(String(100), default=None)
    start_date_time: Mapped[str | None] = mapped_column(String(64), default=None)
    end_date_time: Mapped[str | None] = mapped_column(String(64), default=None)
    created: Mapped[datetime] = mapped_column(default=utcnow)

    exam: Mapped[Exam] = relationship(foreign_keys=[exam_id])


class Score(Base):
    """One accepted AGS score, verbatim, with the fields it was judged by."""

    __tablename__ = "toolcall_lti_score"

    id: Mapped[int] = mapped_column(primary_key=True)
    line_item_id: Mapped[int] = mapped_column(ForeignKey("toolcall_lti_lineitem.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("toolcall_user.id"))
    #: The attempt the score finished or was stored on, if any.
    toolcall_id: Mapped[int | None] = mapped_column(
        ForeignKey("toolcall_toolcall.id"), default=None, index=True
    )
    timestamp: Mapped[datetime]
    score_given: Mapped[float | None] = mapped_column(Float, default=None)
    score_maximum: Mapped[float | None] = mapped_column(Float, default=None)
    activity_progress: Mapped[str] = mapped_column(String(20))
    grading_progress: Mapped[str] = mapped_column(String(20))
    comment: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[str] = mapped_column(Text)
    received: Mapped[datetime] = mapped_column(default=utcnow)

    user: Mapped[User] = relationship()
    line_item: Mapped[LineItem] = relationship()


class Result(Base):
    """The latest score of one user for one line item (AGS result)."""

    __tablename__ = "toolcall_lti_result"
    __table_args__ = (UniqueConstraint("line_item_id", "user_id", name="uq_lti_result_lineitem_user"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    line_item_id: Mapped[int] = mapped_column(ForeignKey("toolcall_lti_lineitem.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("toolcall_user.id"))
    timestamp: Mapped[datetime]
    score_id: Mapped[int] = mapped_column(ForeignKey("toolcall_lti_score.id"))

    user: Mapped[User] = relationship()
    score: Mapped[Score] = relationship()
