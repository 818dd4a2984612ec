"""Label Studio bindings, task and annotation maps, integration events, correction withdrawals

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "correction_withdrawals",
        sa.Column("correction_id", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["correction_id"], ["corrections.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("correction_id"),
    )
    op.create_table(
        "labelstudio_bindings",
        sa.Column("ls_project", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.String(length=32), nullable=False),
        sa.Column("hostname", sa.String(length=500), nullable=True),
        sa.Column("access_token", sa.Text(), nullable=True),
        sa.Column("label_mapping", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("ls_project"),
    )
    op.create_table(
        "labelstudio_tasks",
        sa.Column("ls_project", sa.String(length=64), nullable=False),
        sa.Column("task_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("image_id", sa.String(length=32), nullable=False),
        sa.Column("draft_id", sa.String(length=32), nullable=True),
        sa.Column("model_version", sa.String(length=32), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["ls_project"], ["labelstudio_bindings.ls_project"], ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["draft_id"], ["drafts.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("ls_project", "task_id"),
    )
    op.create_table(
        "labelstudio_annotations",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("ls_project", sa.String(length=64), nullable=False),
        sa.Column("annotation_id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("correction_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["ls_project"], ["labelstudio_bindings.ls_project"], ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["correction_id"], ["corrections.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_labelstudio_annotations",
        "labelstudio_annotations",
        ["ls_project", "annotation_id"],
    )
    op.create_table(
        "integration_events",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_integration_events_queue",
        "integration_events",
        ["source", "status", "created_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_integration_events_queue", table_name="integration_events")
    op.drop_table("integration_events")
    op.drop_index("ix_labelstudio_annotations", table_name="labelstudio_annotations")
    op.drop_table("labelstudio_annotations")
    op.drop_table("labelstudio_tasks")
    op.drop_table("labelstudio_bindings")
    op.drop_table("correction_withdrawals")
