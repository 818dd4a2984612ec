"""jobs: the queue table of training runs and drafts jobs is named for what it holds

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_training_runs_queue", table_name="training_runs")
    op.rename_table("training_runs", "jobs")
    op.create_index("ix_jobs_queue", "jobs", ["status", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_queue", table_name="jobs")
    op.rename_table("jobs", "training_runs")
    op.create_index("ix_training_runs_queue", "training_runs", ["status", "created_at"])
