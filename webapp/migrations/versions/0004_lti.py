"""the LTI 1.3 platform: keys, tool registrations, line items, scores, results; exams' launch URL
and custom parameters

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("toolcall_tool", schema=None) as batch_op:
        batch_op.add_column(sa.Column("launch_url", sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column("custom", sa.Text(), nullable=False, server_default="{}"))
    # The server default stays: dropping it would make SQLite rebuild the exams' table, which the
    # attempts' foreign keys refuse once there are attempts.

    op.create_table(
        "toolcall_lti_key",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("private_key", sa.Text(), nullable=False),
        sa.Column("public_jwk", sa.Text(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("kid"),
    )
    op.create_table(
        "toolcall_lti_registration",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("client_id", sa.Integer(), nullable=False),
        sa.Column("lti_client_id", sa.String(length=64), nullable=False),
        sa.Column("deployment_id", sa.String(length=64), nullable=False),
        sa.Column("login_url", sa.String(length=500), nullable=False),
        sa.Column("launch_url", sa.String(length=500), nullable=False),
        sa.Column("redirect_uris", sa.Text(), nullable=False),
        sa.Column("deep_linking_url", sa.String(length=500), nullable=False),
        sa.Column("jwks_url", sa.String(length=500), nullable=True),
        sa.Column("public_key", sa.Text(), nullable=True),
        sa.Column("send_names", sa.Boolean(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["client_id"], ["toolcall_client.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("client_id"),
        sa.UniqueConstraint("lti_client_id"),
    )
    op.create_table(
        "toolcall_lti_lineitem",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("exam_id", sa.Integer(), nullable=False),
        sa.Column("default_for", sa.Integer(), nullable=True),
        sa.Column("label", sa.String(length=200), nullable=True),
        sa.Column("score_maximum", sa.Float(), nullable=False),
        sa.Column("resource_id", sa.String(length=255), nullable=False),
        sa.Column("tag", sa.String(length=255), nullable=False),
        sa.Column("resource_link_id", sa.String(length=100), nullable=True),
        sa.Column("start_date_time", sa.String(length=64), nullable=True),
        sa.Column("end_date_time", sa.String(length=64), nullable=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["default_for"], ["toolcall_tool.id"]),
        sa.ForeignKeyConstraint(["exam_id"], ["toolcall_tool.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("default_for"),
    )
    with op.batch_alter_table("toolcall_lti_lineitem", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_toolcall_lti_lineitem_exam_id"), ["exam_id"], unique=False)

    op.create_table(
        "toolcall_lti_score",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("line_item_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("toolcall_id", sa.Integer(), nullable=True),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("score_given", sa.Float(), nullable=True),
        sa.Column("score_maximum", sa.Float(), nullable=True),
        sa.Column("activity_progress", sa.String(length=20), nullable=False),
        sa.Column("grading_progress", sa.String(length=20), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("received", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["line_item_id"], ["toolcall_lti_lineitem.id"]),
        sa.ForeignKeyConstraint(["toolcall_id"], ["toolcall_toolcall.id"]),
        sa.ForeignKeyConstraint(["user_id"], ["toolcall_user.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("toolcall_lti_score", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_toolcall_lti_score_line_item_id"), ["line_item_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_toolcall_lti_score_toolcall_id"), ["toolcall_id"], unique=False)

    op.create_table(
        "toolcall_lti_result",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("line_item_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("score_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["line_item_id"], ["toolcall_lti_lineitem.id"]),
        sa.ForeignKeyConstraint(["score_id"], ["toolcall_lti_score.id"]),
        sa.ForeignKeyConstraint(["user_id"], ["toolcall_user.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("line_item_id", "user_id", name="uq_lti_result_lineitem_user"),
    )


def downgrade() -> None:
    op.drop_table("toolcall_lti_result")
    with op.batch_alter_table("toolcall_lti_score", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_toolcall_lti_score_toolcall_id"))
        batch_op.drop_index(batch_op.f("ix_toolcall_lti_score_line_item_id"))
    op.drop_table("toolcall_lti_score")
    with op.batch_alter_table("toolcall_lti_lineitem", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_toolcall_lti_lineitem_exam_id"))
    op.drop_table("toolcall_lti_lineitem")
    op.drop_table("toolcall_lti_registration")
    op.drop_table("toolcall_lti_key")
    with op.batch_alter_table("toolcall_tool", schema=None) as batch_op:
        batch_op.drop_column("custom")
        batch_op.drop_column("launch_url")
