"""what reviewers see: the merge gate (project.block_on), the comment cap (max_comments), quiet summaries;
suppression of findings like dismissed ones and the severity's confidence (finding); the summary's
comment id (review), for the commit status's link

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    text = sqlmodel.sql.sqltypes.AutoString
    with op.batch_alter_table("project") as batch:
        batch.add_column(sa.Column("block_on", text(length=16), server_default="off", nullable=False))
        batch.add_column(sa.Column("max_comments", sa.Integer(), server_default="10", nullable=False))
        batch.add_column(sa.Column("quiet", sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table("review") as batch:
        batch.add_column(sa.Column("summary_comment_id", text(length=128), nullable=True))
    with op.batch_alter_table("finding") as batch:
        batch.add_column(sa.Column("confidence", sa.Float(), nullable=True))
        batch.add_column(sa.Column("like_finding_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("similarity", sa.Float(), nullable=True))
        batch.add_column(sa.Column("suppresses", sa.Boolean(), server_default=sa.true(), nullable=False))
        batch.create_foreign_key("fk_finding_like_finding_id_finding", "finding", ["like_finding_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("finding") as batch:
        batch.drop_constraint("fk_finding_like_finding_id_finding", type_="foreignkey")
        batch.drop_column("suppresses")
        batch.drop_column("similarity")
        batch.drop_column("like_finding_id")
        batch.drop_column("confidence")
    with op.batch_alter_table("review") as batch:
        batch.drop_column("summary_comment_id")
    with op.batch_alter_table("project") as batch:
        batch.drop_column("quiet")
        batch.drop_column("max_comments")
        batch.drop_column("block_on")
