"""training policy and version pinning per project

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


def downgrade() -> None:
    with op.batch_alter_table("projects") as batch_op:
        batch_op.drop_column("pinned_version")
        batch_op.drop_column("training_policy")
