"""job tasks: the queue runs training and draft precomputation

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("training_runs", recreate="never") as batch_op:
        batch_op.add_column(
            sa.Column("task", sa.String(length=16), nullable=False, server_default="train")
        )


def downgrade() -> None:
    with op.batch_alter_table("training_runs", recreate="never") as batch_op:
        batch_op.drop_column("task")
