"""training policy, version pinning, run scores and retries, audit events

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch_op:
        batch_op.add_column(
            sa.Column("training_policy", sa.JSON(), nullable=False, server_default="{}")
        )
        batch_op.add_column(sa.Column("pinned_version", sa.String(length=32), nullable=True))
    with op.batch_alter_table("training_runs") as batch_op:
        batch_op.add_column(sa.Column("retry_of", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("candidate_miou", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("serving_miou", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("train_s", sa.Float(), nullable=True))
    op.create_table(
        "audit_events",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("project_id", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_events_project", "audit_events", ["project_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_audit_events_project", table_name="audit_events")
    op.drop_table("audit_events")
    # recreate="never": rebuilding these tables on SQLite would cascade-delete their children.
    with op.batch_alter_table("training_runs", recreate="never") as batch_op:
        for column in ("train_s", "serving_miou", "candidate_miou", "retry_of"):
            batch_op.drop_column(column)
    with op.batch_alter_table("projects", recreate="never") as batch_op:
        batch_op.drop_column("pinned_version")
        batch_op.drop_column("training_policy")
