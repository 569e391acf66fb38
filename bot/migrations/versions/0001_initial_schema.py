"""initial schema

Revision ID: 0001
Revises:
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "delivery",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("forge", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("delivery_id", sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery")),
        sa.UniqueConstraint("forge", "delivery_id", name=op.f("uq_delivery_forge_delivery_id")),
    )
    op.create_table(
        "flywheelrun",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("rounds", sa.JSON(), nullable=False),
        sa.Column("error", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flywheelrun")),
    )
    with op.batch_alter_table("flywheelrun", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_flywheelrun_task"), ["task"], unique=False)

    op.create_table(
        "modelversion",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("adapter_name", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("path", sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
        sa.Column("base_model", sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_modelversion")),
        sa.UniqueConstraint("adapter_name", name=op.f("uq_modelversion_adapter_name")),
    )
    with op.batch_alter_table("modelversion", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_modelversion_task"), ["task"], unique=False)

    op.create_table(
        "project",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("forge", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("forge_url", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
        sa.Column("path", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
        sa.Column("forge_project_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("webhook_secret", sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
        sa.Column("token_env", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
        sa.Column("severity_threshold", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("ignore_globs", sa.JSON(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_project")),
        sa.UniqueConstraint("forge", "forge_url", "path", name=op.f("uq_project_forge_forge_url_path")),
    )
    op.create_table(
        "review",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("mr_number", sa.Integer(), nullable=False),
        sa.Column("head_sha", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("base_sha", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("error", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("timings", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["project_id"], ["project.id"], name=op.f("fk_review_project_id_project")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review")),
    )
    with op.batch_alter_table("review", schema=None) as batch_op:
        batch_op.create_index("ix_review_project_mr", ["project_id", "mr_number"], unique=False)

    op.create_table(
        "finding",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("review_id", sa.Integer(), nullable=False),
        sa.Column("path", sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=False),
        sa.Column("line", sa.Integer(), nullable=True),
        sa.Column("side", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
        sa.Column("severity", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("title", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
        sa.Column("review", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("explanation", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("code", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("fingerprint", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("forge_comment_id", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
        sa.Column("model_version", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["review_id"], ["review.id"], name=op.f("fk_finding_review_id_review")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_finding")),
    )
    with op.batch_alter_table("finding", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_finding_fingerprint"), ["fingerprint"], unique=False)
        batch_op.create_index(batch_op.f("ix_finding_forge_comment_id"), ["forge_comment_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_finding_review_id"), ["review_id"], unique=False)

    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("finding_id", sa.Integer(), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("value", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("author", sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source_event_id", sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
        sa.ForeignKeyConstraint(["finding_id"], ["finding.id"], name=op.f("fk_feedback_finding_id_finding")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback")),
        sa.UniqueConstraint("source_event_id", name=op.f("uq_feedback_source_event_id")),
    )
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_feedback_finding_id"), ["finding_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_feedback_finding_id"))

    op.drop_table("feedback")
    with op.batch_alter_table("finding", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_finding_review_id"))
        batch_op.drop_index(batch_op.f("ix_finding_forge_comment_id"))
        batch_op.drop_index(batch_op.f("ix_finding_fingerprint"))

    op.drop_table("finding")
    with op.batch_alter_table("review", schema=None) as batch_op:
        batch_op.drop_index("ix_review_project_mr")

    op.drop_table("review")
    op.drop_table("project")
    with op.batch_alter_table("modelversion", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_modelversion_task"))

    op.drop_table("modelversion")
    with op.batch_alter_table("flywheelrun", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_flywheelrun_task"))

    op.drop_table("flywheelrun")
    op.drop_table("delivery")
