"""the canary of a promoted adapter: the share of merge requests it served, when it began and ended,
why it ended, and its last check's figures (modelversion)

Revision ID: 0013
Revises: 0012
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("modelversion") as batch:
        batch.add_column(sa.Column("canary_share", sa.Float(), nullable=True))
        batch.add_column(sa.Column("canary_started_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("canary_ended_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("canary_reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("canary_figures", sa.JSON(), nullable=True))


def downgrade() -> None:
    # Before this revision a version is either in use or not: a running canary was not yet promoted.
    op.execute("UPDATE modelversion SET status = 'candidate' WHERE status = 'canary'")
    with op.batch_alter_table("modelversion") as batch:
        batch.drop_column("canary_figures")
        batch.drop_column("canary_reason")
        batch.drop_column("canary_ended_at")
        batch.drop_column("canary_started_at")
        batch.drop_column("canary_share")
