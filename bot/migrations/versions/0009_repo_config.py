"""repository configuration file: the admin's controls and last parse result on project, the settings
and instructions in force on finding

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    text = sqlmodel.sql.sqltypes.AutoString
    with op.batch_alter_table("project") as batch:
        batch.add_column(sa.Column("repo_config", sa.Boolean(), server_default=sa.true(), nullable=False))
        batch.add_column(sa.Column("threshold_floor", text(length=16), nullable=True))
        batch.add_column(sa.Column("repo_config_keys", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("repo_config_status", text(length=512), nullable=True))
        batch.add_column(sa.Column("repo_config_checked_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("finding") as batch:
        batch.add_column(sa.Column("settings_digest", text(length=64), server_default="", nullable=False))
        batch.add_column(sa.Column("instructions", sa.Text(), server_default="", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("finding") as batch:
        batch.drop_column("instructions")
        batch.drop_column("settings_digest")
    with op.batch_alter_table("project") as batch:
        batch.drop_column("repo_config_checked_at")
        batch.drop_column("repo_config_status")
        batch.drop_column("repo_config_keys")
        batch.drop_column("threshold_floor")
        batch.drop_column("repo_config")
