"""the toolcall tables

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "toolcall_client",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("receive_start_token_url", sa.String(length=500), nullable=False),
        sa.Column("receive_result_token_url", sa.String(length=500), nullable=False),
        sa.Column("secret", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "toolcall_user",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=150), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("first_name", sa.String(length=150), nullable=False),
        sa.Column("last_name", sa.String(length=150), nullable=False),
        sa.Column("email", sa.String(length=254), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("extra_time", sa.Boolean(), nullable=False),
        sa.Column("persnr", sa.String(length=33), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("persnr"),
        sa.UniqueConstraint("username"),
    )
    op.create_table(
        "toolcall_tool",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("client_id", sa.Integer(), nullable=False),
        sa.Column("slug", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("icon", sa.String(length=200), nullable=False),
        sa.Column("restartable", sa.Boolean(), nullable=False),
        sa.Column("deadline_minutes", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["toolcall_client.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("slug"),
    )
    op.create_table(
        "toolcall_toolcall",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tool_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("started", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=30), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tool_id"],
            ["toolcall_tool.id"],
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["toolcall_user.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("toolcall_toolcall", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_toolcall_toolcall_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_toolcall_toolcall_tool_id"), ["tool_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_toolcall_toolcall_user_id"), ["user_id"], unique=False)

    op.create_table(
        "toolcall_resultfetch",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("client_id", sa.Integer(), nullable=False),
        sa.Column("token", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("toolcall_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["toolcall_client.id"],
        ),
        sa.ForeignKeyConstraint(
            ["toolcall_id"],
            ["toolcall_toolcall.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("client_id", "token", name="uq_resultfetch_client_token"),
    )
    with op.batch_alter_table("toolcall_resultfetch", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_toolcall_resultfetch_next_attempt_at"), ["next_attempt_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_toolcall_resultfetch_state"), ["state"], unique=False)

    op.create_table(
        "toolcall_toolcalllog",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("toolcall_id", sa.Integer(), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=30), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["toolcall_id"],
            ["toolcall_toolcall.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("toolcall_toolcalllog", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_toolcall_toolcalllog_toolcall_id"), ["toolcall_id"], unique=False
        )

    op.create_table(
        "toolcall_toolcallresult",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("toolcall_id", sa.Integer(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("token", sa.String(length=255), nullable=False),
        sa.Column("persnr", sa.String(length=33), nullable=False),
        sa.Column("participant_id", sa.String(length=255), nullable=False),
        sa.Column("exam", sa.String(length=200), nullable=False),
        sa.Column("exam_type", sa.String(length=50), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("score", sa.Integer(), nullable=True),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=True),
        sa.Column("late", sa.Boolean(), nullable=False),
        sa.Column("stored", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["toolcall_id"],
            ["toolcall_toolcall.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("toolcall_toolcallresult", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_toolcall_toolcallresult_toolcall_id"), ["toolcall_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("toolcall_toolcallresult", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_toolcall_toolcallresult_toolcall_id"))

    op.drop_table("toolcall_toolcallresult")
    with op.batch_alter_table("toolcall_toolcalllog", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_toolcall_toolcalllog_toolcall_id"))

    op.drop_table("toolcall_toolcalllog")
    with op.batch_alter_table("toolcall_resultfetch", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_toolcall_resultfetch_state"))
        batch_op.drop_index(batch_op.f("ix_toolcall_resultfetch_next_attempt_at"))

    op.drop_table("toolcall_resultfetch")
    with op.batch_alter_table("toolcall_toolcall", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_toolcall_toolcall_user_id"))
        batch_op.drop_index(batch_op.f("ix_toolcall_toolcall_tool_id"))
        batch_op.drop_index(batch_op.f("ix_toolcall_toolcall_status"))

    op.drop_table("toolcall_toolcall")
    op.drop_table("toolcall_tool")
    op.drop_table("toolcall_user")
    op.drop_table("toolcall_client")
