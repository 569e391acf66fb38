"""what each model version was trained with: its settings as applied, the ML libraries' versions, a
hash of the chats trained on and the examples left out as too long (modelversion.training)

Revision ID: 0014
Revises: 0013
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Versions trained before this revision have no record: an empty one, not a made-up one.
    with op.batch_alter_table("modelversion") as batch:
        batch.add_column(sa.Column("training", sa.JSON(), server_default="{}", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("modelversion") as batch:
        batch.drop_column("training")
