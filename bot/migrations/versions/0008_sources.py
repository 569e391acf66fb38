"""sources: GitLab groups and GitHub Apps, one webhook for many projects (source table,
project.source_id and project.installation_id)

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    text = sqlmodel.sql.sqltypes.AutoString
    op.create_table(
        "source",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", text(length=16), nullable=False),
        sa.Column("forge", text(length=16), nullable=False),
        sa.Column("forge_url", text(length=512), nullable=False),
        sa.Column("name", text(length=512), nullable=False),
        sa.Column("webhook_secret", text(length=512), nullable=False),
        sa.Column("webhook_key", text(length=64), nullable=False),
        sa.Column("token_env", text(length=128), nullable=True),
        sa.Column("app_id", sa.Integer(), nullable=True),
        sa.Column("private_key", sa.Text(), nullable=True),
        sa.Column("bot_username", text(length=256), nullable=True),
        sa.Column("severity_threshold", text(length=16), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_source")),
        sa.UniqueConstraint("forge", "forge_url", "name", name=op.f("uq_source_forge_forge_url_name")),
        sa.UniqueConstraint("webhook_key", name=op.f("uq_source_webhook_key")),
    )
    with op.batch_alter_table("project") as batch:
        batch.add_column(sa.Column("source_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("installation_id", sa.BigInteger(), nullable=True))
        batch.create_index("ix_project_source_id", ["source_id"], unique=False)
        batch.create_foreign_key("fk_project_source_id_source", "source", ["source_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("project") as batch:
        batch.drop_constraint("fk_project_source_id_source", type_="foreignkey")
        batch.drop_index("ix_project_source_id")
        batch.drop_column("installation_id")
        batch.drop_column("source_id")
    op.drop_table("source")
