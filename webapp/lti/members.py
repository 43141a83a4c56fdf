"""Names and Role Provisioning Services: the members of a context (one exam).

The members are the users with an attempt of the exam (Learner) and the admins (Instructor), by
user; each with ``user_id`` = the ``sub`` of their launches, ``roles``, ``status`` Active, and their
names and e-mail unless the tool's registration keeps them back.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import exists, or_, select
from sqlalchemy.orm import Session

from webapp.lti.access import ServiceError
from webapp.lti.models import LtiRegistration
from webapp.lti.vocabulary import INSTRUCTOR, LEARNER
from webapp.models import Exam, ToolCall, User

#: Short role names a ``role`` filter may use, as NRPS allows, besides the full URIs.
ROLE_NAMES = {"Learner": LEARNER, "Instructor": INSTRUCTOR}


def role_of(user: User) -> str:
    """The context role of a user: admins teach, everyone else learns (as in launches)."""
    return INSTRUCTOR if user.is_admin else LEARNER


def members(session: Session, exam: Exam, role: str | None = None) -> Sequence[User]:
    """The users in the exam's context, by id; only those of ``role`` when given."""
    attempted = exists().where(ToolCall.tool_id == exam.id, ToolCall.user_id == User.id)
    query = select(User).where(or_(User.is_admin.is_(True), attempted)).order_by(User.id)
    if role is not None:
        wanted = ROLE_NAMES.get(role, role)
        if wanted == INSTRUCTOR:
            query = query.where(User.is_admin.is_(True))
        elif wanted == LEARNER:
            query = query.where(User.is_admin.is_(False))
        else:
            raise ServiceError(
                400, "invalid_request", f"role must be Learner or Instructor (or their URIs), not {role!r}"
            )
    return session.scalars(query).all()


def member_json(user: User, registration: LtiRegistration) -> dict:
    member = {"user_id": user.persnr, "roles": [role_of(user)], "status": "Active"}
    if registration.send_names:
        member.update(
            name=f"{user.first_name} {user.last_name}".strip(),
            given_name=user.first_name,
            family_name=user.last_name,
            email=user.email,
        )
    return member


def context_json(exam: Exam) -> dict:
    return {"id": exam.slug, "label": exam.slug, "title": exam.name}
