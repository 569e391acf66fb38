"""project bot username, review file digests

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    with op.batch_alter_table("project", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("bot_username", sqlmodel.sql.sqltypes.AutoString(length=256), nullable=True)
        )

    with op.batch_alter_table("review", schema=None) as batch_op:
        batch_op.add_column(sa.Column("file_digests", sa.JSON(), server_default="{}", nullable=False))


def downgrade() -> None:

    with op.batch_alter_table("review", schema=None) as batch_op:
        batch_op.drop_column("file_digests")

    with op.batch_alter_table("project", schema=None) as batch_op:
        batch_op.drop_column("bot_username")
