"""``prelabel users …`` and ``prelabel members …``: accounts, tokens and roles from the shell.

The command line works on the database directly, so whoever runs it is trusted like
an admin; the audit trail records it as ``cli:<login name>``.
"""

from __future__ import annotations

import getpass
from datetime import timedelta
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from prelabel.access import Role
from prelabel.accounts import IssuedToken, add_user, issue_token, list_users, revoke_tokens
from prelabel.database import transaction
from prelabel.memberships import list_members, remove_member, set_member
from prelabel.projects import get_project
from prelabel.workspace import workspace_from_settings

users_app = typer.Typer(help="Users and their API tokens.", no_args_is_help=True)
members_app = typer.Typer(help="Who works on a project, in which role.", no_args_is_help=True)
_err = Console(stderr=True)
_out = Console()

ExpiresDays = Annotated[
    int | None, typer.Option("--expires-days", min=1, help="token lifetime; default: no expiry")
]


def cli_actor() -> str:
    """The actor the audit trail records for command-line actions."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _show_token(issued: IssuedToken) -> None:
    # The token alone on stdout (scriptable: TOKEN=$(prelabel users add bob)); the rest on stderr.
    expiry = issued.expires_at.isoformat() if issued.expires_at else "never"
    _err.print(f"token of {issued.user.name} (shown once; expires: {expiry}):")
    _out.print(issued.token, soft_wrap=True, highlight=False)


def _lifetime(days: int | None) -> timedelta | None:
    return timedelta(days=days) if days is not None else None


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="user name (letters, digits, . _ @ + -)")],
    admin: Annotated[bool, typer.Option("--admin", help="a global admin")] = False,
    expires_days: ExpiresDays = None,
) -> None:
    """Create a user and print its first token (once)."""
    with workspace_from_settings() as ws, transaction(ws.sessions) as session:
        issued = add_user(
            session, name, is_admin=admin, actor=cli_actor(), expires_in=_lifetime(expires_days)
        )
    _show_token(issued)


@users_app.command("token")
def users_token(name: str, expires_days: ExpiresDays = None) -> None:
    """Issue another token for a user (after a revoke, or to rotate) and print it once."""
    with workspace_from_settings() as ws, transaction(ws.sessions) as session:
        issued = issue_token(session, name, actor=cli_actor(), expires_in=_lifetime(expires_days))
    _show_token(issued)


@users_app.command("list")
def users_list() -> None:
    """Users with their active tokens and last use."""
    with workspace_from_settings() as ws, ws.sessions() as session:
        users = list_users(session)
    table = Table("name", "admin", "active tokens", "last used", "created")
    for user in users:
        used = user.last_used_at.isoformat(timespec="seconds") if user.last_used_at else "-"
        table.add_row(
            user.name,
            "yes" if user.is_admin else "",
            str(user.active_tokens),
            used,
            user.created_at.isoformat(timespec="seconds"),
        )
    _out.print(table)


@users_app.command("revoke")
def users_revoke(name: str) -> None:
    """Revoke every token of a user (it keeps its memberships)."""
    with workspace_from_settings() as ws, transaction(ws.sessions) as session:
        # The CLI may revoke the last admin's tokens: it can issue a new one.
        count = revoke_tokens(session, name, actor=cli_actor(), keep_an_admin=False)
    _err.print(f"revoked {count} token(s) of {name}")


ProjectOption = Annotated[str, typer.Option("--project", help="project id or name")]
UserOption = Annotated[str, typer.Option("--user", help="user name")]


@members_app.command("add")
def members_add(
    project: ProjectOption,
    user: UserOption,
    role: Annotated[Role, typer.Option("--role", help="the role in the project")],
) -> None:
    """Make a user a member of a project with a role (or change its role)."""
    with workspace_from_settings() as ws, transaction(ws.sessions) as session:
        member = set_member(session, get_project(session, project), user, role, actor=cli_actor())
    _err.print(f"{member.user} is {member.role} in {project}")


@members_app.command("list")
def members_list(project: ProjectOption) -> None:
    """A project's members and their roles."""
    with workspace_from_settings() as ws, ws.sessions() as session:
        members = list_members(session, get_project(session, project))
    table = Table("user", "role", "since")
    for member in members:
        table.add_row(member.user, member.role, member.created_at.isoformat(timespec="seconds"))
    _out.print(table)


@members_app.command("remove")
def members_remove(project: ProjectOption, user: UserOption) -> None:
    """Take a user out of a project."""
    with workspace_from_settings() as ws, transaction(ws.sessions) as session:
        remove_member(session, get_project(session, project), user, actor=cli_actor())
    _err.print(f"{user} removed from {project}")
