"""training examples of the flywheel; when a merge request was closed; a flywheel run's outcome

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "trainingexample",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("split", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("question", sa.JSON(), nullable=False),
        sa.Column("answer", sa.JSON(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("difficulty", sa.Integer(), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("round", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["flywheelrun.id"], name=op.f("fk_trainingexample_run_id_flywheelrun")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trainingexample")),
        sa.UniqueConstraint("task", "key", name=op.f("uq_trainingexample_task_key")),
    )
    op.create_index(op.f("ix_trainingexample_task"), "trainingexample", ["task"], unique=False)
    with op.batch_alter_table("review", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mr_closed_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("flywheelrun", schema=None) as batch_op:
        batch_op.add_column(sa.Column("outcome", sqlmodel.sql.sqltypes.AutoString(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("flywheelrun", schema=None) as batch_op:
        batch_op.drop_column("outcome")
    with op.batch_alter_table("review", schema=None) as batch_op:
        batch_op.drop_column("mr_closed_at")
    op.drop_index(op.f("ix_trainingexample_task"), table_name="trainingexample")
    op.drop_table("trainingexample")
