"""unique attempt numbers per (tool, user)

Two starts at once (a double click) could both take the same attempt number: both read the highest
number so far before either wrote. A unique index makes the second INSERT fail, and the start is
made again. Numbers already taken twice are first moved past the highest of their (tool, user),
in the order the attempts were made, so that the index can be built on data the race left.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

toolcall = sa.table(
    "toolcall_toolcall",
    sa.column("id", sa.Integer),
    sa.column("tool_id", sa.Integer),
    sa.column("user_id", sa.Integer),
    sa.column("attempt", sa.Integer),
)


def upgrade() -> None:
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(toolcall.c.id, toolcall.c.tool_id, toolcall.c.user_id, toolcall.c.attempt).order_by(
            toolcall.c.id
        )
    ).all()
    highest: dict[tuple[int, int], int] = {}
    for _, tool_id, user_id, number in rows:
        highest[(tool_id, user_id)] = max(highest.get((tool_id, user_id), 0), number)
    taken: set[tuple[int, int, int]] = set()
    for row_id, tool_id, user_id, number in rows:
        if (tool_id, user_id, number) in taken:
            number = highest[(tool_id, user_id)] = highest[(tool_id, user_id)] + 1
            connection.execute(sa.update(toolcall).where(toolcall.c.id == row_id).values(attempt=number))
        taken.add((tool_id, user_id, number))
    op.create_index(
        "uq_toolcall_attempt", "toolcall_toolcall", ["tool_id", "user_id", "attempt"], unique=True
    )


def downgrade() -> None:
    op.drop_index("uq_toolcall_attempt", table_name="toolcall_toolcall")
