"""drop columns nothing ever wrote or read: project.forge_project_id, review.base_sha

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("project") as batch:
        batch.drop_column("forge_project_id")
    with op.batch_alter_table("review") as batch:
        batch.drop_column("base_sha")


def downgrade() -> None:
    with op.batch_alter_table("review") as batch:
        batch.add_column(sa.Column("base_sha", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
    with op.batch_alter_table("project") as batch:
        batch.add_column(
            sa.Column("forge_project_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)
        )
