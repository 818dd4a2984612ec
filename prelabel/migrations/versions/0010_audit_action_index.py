"""audit events: an index by project and action, so that reading one kind of event
(the serving-version changes the metrics' time series shows) does not scan every
draft-served event of the project

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_audit_events_action", "audit_events", ["project_id", "action", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_audit_events_action", table_name="audit_events")
