"""the audit log: every change an admin makes, from the console, its API or the command line; a
review's report (what it did, for the console)

Revision ID: 0011
Revises: 0010
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    text = sqlmodel.sql.sqltypes.AutoString
    op.create_table(
        "auditentry",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("actor", text(length=256), nullable=False),
        sa.Column("action", text(length=64), nullable=False),
        sa.Column("target", text(length=512), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=True),
        sa.Column("before", sa.JSON(), nullable=False),
        sa.Column("after", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["project.id"], name="fk_auditentry_project_id_project"),
        sa.PrimaryKeyConstraint("id", name="pk_auditentry"),
    )
    op.create_index("ix_auditentry_action", "auditentry", ["action"])
    op.create_index("ix_auditentry_project_id", "auditentry", ["project_id"])
    op.create_index("ix_auditentry_created_at", "auditentry", ["created_at"])
    with op.batch_alter_table("review") as batch:
        batch.add_column(sa.Column("report", sa.JSON(), server_default="{}", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("review") as batch:
        batch.drop_column("report")
    op.drop_index("ix_auditentry_created_at", table_name="auditentry")
    op.drop_index("ix_auditentry_project_id", table_name="auditentry")
    op.drop_index("ix_auditentry_action", table_name="auditentry")
    op.drop_table("auditentry")
