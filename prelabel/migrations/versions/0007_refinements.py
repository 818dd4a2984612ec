"""refinements: the clicks of each refinement call; corrections count the clicks they took

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
# The [access] migration 0006 lands on main in parallel: at merge this becomes "0006".
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "refinements",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("project_id", sa.String(length=32), nullable=False),
        sa.Column("image_id", sa.String(length=32), nullable=False),
        sa.Column("draft_id", sa.String(length=32), nullable=True),
        sa.Column("model_version", sa.String(length=32), nullable=True),
        sa.Column("class_id", sa.Integer(), nullable=False),
        sa.Column("positive", sa.JSON(), nullable=False),
        sa.Column("negative", sa.JSON(), nullable=False),
        sa.Column("box", sa.JSON(), nullable=True),
        sa.Column("base", sa.String(length=16), nullable=False),
        sa.Column("method", sa.String(length=32), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["draft_id"], ["drafts.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_refinements_image", "refinements", ["project_id", "image_id", "created_at"])
    with op.batch_alter_table("corrections") as batch:
        batch.add_column(sa.Column("clicks", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("corrections") as batch:
        batch.drop_column("clicks")
    op.drop_index("ix_refinements_image", table_name="refinements")
    op.drop_table("refinements")
