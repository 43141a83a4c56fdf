"""costs that stay flat as data grows: an index per list, the sweep's bookkeeping, counts by status

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

- One index per ops list and the user's attempts page, each ending in the list's order, for keyset
  pagination; the single-column indexes they lead with are dropped (the composite ones serve the
  same lookups).
- Result fetches: by ToolCall (one ToolCall's page), by result token (search), newest reported
  first (all, and by state), and owed ones by due time (the sweep; a partial index, so done and
  failed fetches cost the sweep nothing); ``queued_at``, when the sweep last queued one.
- Stored results by result token (search).
- ``toolcall_statuscount``: the ToolCalls in each status, kept with the lifecycle; filled here from
  the ToolCalls there are.

On PostgreSQL, ``CREATE INDEX`` blocks writes to its table while it runs (a minute or so for a
million ToolCalls): apply it outside busy hours.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

OWED = sa.text("state = 'owed'")


def upgrade() -> None:
    op.create_index("ix_toolcall_started_id", "toolcall_toolcall", ["started", "id"])
    op.create_index("ix_toolcall_status_started_id", "toolcall_toolcall", ["status", "started", "id"])
    op.create_index("ix_toolcall_tool_started_id", "toolcall_toolcall", ["tool_id", "started", "id"])
    op.create_index("ix_toolcall_user_started_id", "toolcall_toolcall", ["user_id", "started", "id"])
    op.drop_index("ix_toolcall_toolcall_status", table_name="toolcall_toolcall")
    op.drop_index("ix_toolcall_toolcall_tool_id", table_name="toolcall_toolcall")
    op.drop_index("ix_toolcall_toolcall_user_id", table_name="toolcall_toolcall")

    op.add_column("toolcall_resultfetch", sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_resultfetch_toolcall_id", "toolcall_resultfetch", ["toolcall_id"])
    op.create_index("ix_resultfetch_token", "toolcall_resultfetch", ["token"])
    op.create_index("ix_resultfetch_reported_id", "toolcall_resultfetch", ["reported_at", "id"])
    op.create_index(
        "ix_resultfetch_state_reported_id", "toolcall_resultfetch", ["state", "reported_at", "id"]
    )
    op.create_index(
        "ix_resultfetch_owed_due",
        "toolcall_resultfetch",
        ["next_attempt_at"],
        postgresql_where=OWED,
        sqlite_where=OWED,
    )
    op.drop_index("ix_toolcall_resultfetch_next_attempt_at", table_name="toolcall_resultfetch")
    op.drop_index("ix_toolcall_resultfetch_state", table_name="toolcall_resultfetch")

    op.create_index("ix_toolcallresult_token", "toolcall_toolcallresult", ["token"])

    op.create_table(
        "toolcall_statuscount",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=30), nullable=False),
        sa.Column("delta", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.execute(
        "INSERT INTO toolcall_statuscount (status, delta) "
        "SELECT status, count(*) FROM toolcall_toolcall GROUP BY status"
    )


def downgrade() -> None:
    op.drop_table("toolcall_statuscount")
    op.drop_index("ix_toolcallresult_token", table_name="toolcall_toolcallresult")
    op.create_index("ix_toolcall_resultfetch_state", "toolcall_resultfetch", ["state"])
    op.create_index("ix_toolcall_resultfetch_next_attempt_at", "toolcall_resultfetch", ["next_attempt_at"])
    for name in (
        "ix_resultfetch_owed_due",
        "ix_resultfetch_state_reported_id",
        "ix_resultfetch_reported_id",
        "ix_resultfetch_token",
        "ix_resultfetch_toolcall_id",
    ):
        op.drop_index(name, table_name="toolcall_resultfetch")
    with op.batch_alter_table("toolcall_resultfetch") as batch_op:
        batch_op.drop_column("queued_at")
    op.create_index("ix_toolcall_toolcall_user_id", "toolcall_toolcall", ["user_id"])
    op.create_index("ix_toolcall_toolcall_tool_id", "toolcall_toolcall", ["tool_id"])
    op.create_index("ix_toolcall_toolcall_status", "toolcall_toolcall", ["status"])
    for name in (
        "ix_toolcall_user_started_id",
        "ix_toolcall_tool_started_id",
        "ix_toolcall_status_started_id",
        "ix_toolcall_started_id",
    ):
        op.drop_index(name, table_name="toolcall_toolcall")
