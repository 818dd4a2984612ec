"""reviews: project review settings, corrections' review status, reviewers' decisions

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.add_column(
            sa.Column("review_required", sa.Boolean(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("review_share", sa.Float(), nullable=False, server_default="1.0")
        )
        batch.add_column(
            sa.Column("min_reviewers", sa.Integer(), nullable=False, server_default="1")
        )
    with op.batch_alter_table("corrections") as batch:
        batch.add_column(
            sa.Column(
                "review_status", sa.String(length=16), nullable=False, server_default="not_required"
            )
        )
        batch.add_column(sa.Column("review_reason", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("resubmits", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("review_states", sa.JSON(), nullable=False, server_default="{}"))
    op.create_table(
        "reviews",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("project_id", sa.String(length=32), nullable=False),
        sa.Column("correction_id", sa.String(length=32), nullable=False),
        sa.Column("annotator", sa.String(length=200), nullable=False),
        sa.Column("reviewer", sa.String(length=200), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("edited_correction_id", sa.String(length=32), nullable=True),
        sa.Column("mean_iou", sa.Float(), nullable=True),
        sa.Column("changed_pixels", sa.Integer(), nullable=True),
        sa.Column("changed_pixel_fraction", sa.Float(), nullable=True),
        sa.Column("per_class_iou", sa.JSON(), nullable=True),
        sa.Column("review_time_s", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["correction_id"], ["corrections.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["edited_correction_id"], ["corrections.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_reviews_correction", "reviews", ["correction_id"])
    op.create_index("ix_reviews_project", "reviews", ["project_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_reviews_project", table_name="reviews")
    op.drop_index("ix_reviews_correction", table_name="reviews")
    op.drop_table("reviews")
    # recreate="never": rebuilding these tables on SQLite would cascade-delete their children.
    with op.batch_alter_table("model_versions", recreate="never") as batch:
        batch.drop_column("review_states")
    with op.batch_alter_table("corrections", recreate="never") as batch:
        for column in ("reviewed_at", "resubmits", "review_reason", "review_status"):
            batch.drop_column(column)
    with op.batch_alter_table("projects", recreate="never") as batch:
        for column in ("min_reviewers", "review_share", "review_required"):
            batch.drop_column(column)
