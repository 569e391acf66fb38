"""trust: who may label (feedback.role, project.feedback_min_role and author_labels, review.mr_author),
per-project webhook URLs (project.webhook_key), encrypted secrets (a wider webhook_secret), and the
admin's golden held-out sets

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("project") as batch:
        batch.alter_column(
            "webhook_secret",
            existing_type=sqlmodel.sql.sqltypes.AutoString(length=256),
            type_=sqlmodel.sql.sqltypes.AutoString(length=512),
            existing_nullable=False,
        )
        batch.add_column(sa.Column("webhook_key", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
        batch.add_column(
            sa.Column("feedback_min_role", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True)
        )
        batch.add_column(sa.Column("author_labels", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.create_unique_constraint("uq_project_webhook_key", ["webhook_key"])
    with op.batch_alter_table("review") as batch:
        batch.add_column(sa.Column("mr_author", sqlmodel.sql.sqltypes.AutoString(length=256), nullable=True))
    with op.batch_alter_table("feedback") as batch:
        batch.add_column(
            sa.Column("role", sqlmodel.sql.sqltypes.AutoString(length=16), server_default="", nullable=False)
        )
    op.create_table(
        "goldenset",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
        sa.Column("digest", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_goldenset")),
        sa.UniqueConstraint("task", "version", name=op.f("uq_goldenset_task_version")),
    )
    op.create_index(op.f("ix_goldenset_task"), "goldenset", ["task"], unique=False)
    op.create_table(
        "goldenexample",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("set_id", sa.Integer(), nullable=False),
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("question", sa.JSON(), nullable=False),
        sa.Column("answer", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["set_id"], ["goldenset.id"], name=op.f("fk_goldenexample_set_id_goldenset")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_goldenexample")),
        sa.UniqueConstraint("set_id", "key", name=op.f("uq_goldenexample_set_id_key")),
    )
    op.create_index(op.f("ix_goldenexample_set_id"), "goldenexample", ["set_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_goldenexample_set_id"), table_name="goldenexample")
    op.drop_table("goldenexample")
    op.drop_index(op.f("ix_goldenset_task"), table_name="goldenset")
    op.drop_table("goldenset")
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("role")
    with op.batch_alter_table("review") as batch:
        batch.drop_column("mr_author")
    with op.batch_alter_table("project") as batch:
        batch.drop_constraint("uq_project_webhook_key", type_="unique")
        batch.drop_column("author_labels")
        batch.drop_column("feedback_min_role")
        batch.drop_column("webhook_key")
        batch.alter_column(
            "webhook_secret",
            existing_type=sqlmodel.sql.sqltypes.AutoString(length=512),
            type_=sqlmodel.sql.sqltypes.AutoString(length=256),
            existing_nullable=False,
        )
