"""the blind audit set: findings drawn each ISO week and their auditors' labels (audititem); golden
set versions that add those labels to the admin's file (goldenset.audit_labels)

Revision ID: 0012
Revises: 0011
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    text = sqlmodel.sql.sqltypes.AutoString
    op.create_table(
        "audititem",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("finding_id", sa.Integer(), nullable=False),
        sa.Column("fingerprint", text(length=64), nullable=False),
        sa.Column("week", text(length=8), nullable=False),
        sa.Column("stratum", text(length=32), nullable=False),
        sa.Column("label", text(length=16), nullable=True),
        sa.Column("auditor", text(length=256), nullable=True),
        sa.Column("sampled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("labelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["finding_id"], ["finding.id"], name="fk_audititem_finding_id_finding"),
        sa.PrimaryKeyConstraint("id", name="pk_audititem"),
        sa.UniqueConstraint("finding_id", name="uq_audititem_finding_id"),
    )
    op.create_index("ix_audititem_fingerprint", "audititem", ["fingerprint"])
    op.create_index("ix_audititem_week", "audititem", ["week"])
    with op.batch_alter_table("goldenset") as batch:
        batch.add_column(sa.Column("audit_labels", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("goldenset") as batch:
        batch.drop_column("audit_labels")
    op.drop_index("ix_audititem_week", table_name="audititem")
    op.drop_index("ix_audititem_fingerprint", table_name="audititem")
    op.drop_table("audititem")
