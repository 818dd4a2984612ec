"""Authentication and the per-request access check, installed as an app-wide dependency.

Clients send ``Authorization: Bearer <token>``; ``Basic`` with the token as the
password (any user name) is accepted too, which is what Label Studio can send.
Dashboard pages (rules with ``page=True``) also accept the login session cookie
(``service.sessions``). The
route's rule (``service.access_rules``) then decides; handlers receive a
:class:`Caller` with the principal and, for project routes, the checked project.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from prelabel.access import Permission, Principal, require
from prelabel.accounts import check_token
from prelabel.errors import Forbidden, NotAuthenticated
from prelabel.projects import Project
from prelabel.settings import AuthMode, SecuritySettings
from prelabel.workspace import Workspace
from service.access_rules import Rule, Scope, rule_for
from service.deps import get_workspace
from service.sessions import session_token

logger = logging.getLogger(__name__)

LOCAL_PRINCIPAL = Principal(user_id=None, name="local", is_admin=True)
"""Who every caller is with ``PRELABEL_AUTH=off``."""
ANONYMOUS = Principal(user_id=None, name="anonymous", is_admin=False)
"""The caller of a public route."""


@dataclass(frozen=True)
class Caller:
    """Who calls, under which rule; ``project`` is set for project-scoped routes."""

    principal: Principal
    rule: Rule
    project: Project | None = None

    @property
    def name(self) -> str:
        """The name recorded as actor in the audit trail."""
        return self.principal.name

    @property
    def checked_project(self) -> Project:
        """The project the rule checked (project-scoped routes only)."""
        if self.project is None:
            raise RuntimeError("checked_project on a route that is not project-scoped")
        return self.project

    def require(self, workspace: Workspace, project_ref: str, permission: Permission) -> Project:
        """Check ``permission`` in a project the handler found (integration routes)."""
        with workspace.sessions() as session:
            return require(session, self.principal, project_ref, permission)


def token_from_header(value: str | None) -> str | None:
    """The token an ``Authorization`` header carries (Bearer, or Basic's password)."""
    if not value:
        return None
    scheme, _, credentials = value.strip().partition(" ")
    if scheme.lower() == "bearer":
        return credentials.strip() or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode()
        except ValueError:  # binascii.Error, UnicodeDecodeError, characters outside ASCII
            return None
        return decoded.partition(":")[2] or None
    return None


def _principal(request: Request, workspace: Workspace, rule: Rule) -> Principal:
    security: SecuritySettings = request.app.state.security_settings
    if security.auth is AuthMode.OFF:
        return LOCAL_PRINCIPAL
    token = token_from_header(request.headers.get("authorization"))
    if token is None and rule.page:
        token = session_token(request, security.session_ttl_s)
    if token is None:
        raise NotAuthenticated("send Authorization: Bearer <token> (an API token of prelabel)")
    with workspace.sessions() as session:
        check = check_token(session, token)
    if check is None:
        raise NotAuthenticated("the token is unknown, revoked or expired")
    if check.stamp_due:
        workspace.deferred.token_used(check.token_id, check.used_at)
    return check.principal


def authorize(request: Request, workspace: Annotated[Workspace, Depends(get_workspace)]) -> Caller:
    """Authenticate the caller and apply the route's rule (runs once per request)."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        raise RuntimeError(f"no route matched {request.url.path}")
    rule = route_rule(route, request.method)
    security: SecuritySettings = request.app.state.security_settings
    if rule.scope is Scope.PUBLIC or (rule.scope is Scope.OPERATIONS and security.metrics_public):
        return Caller(ANONYMOUS, rule)
    principal = _principal(request, workspace, rule)
    if rule.scope in (Scope.ADMIN, Scope.OPERATIONS) and not principal.is_admin:
        raise Forbidden("this needs a global admin")
    if rule.scope is Scope.PROJECT and rule.permission is not None:
        with workspace.sessions() as session:
            project = require(session, principal, request.path_params["project"], rule.permission)
        return Caller(principal, rule, project)
    return Caller(principal, rule)


CallerDep = Annotated[Caller, Depends(authorize)]


def route_rule(route: APIRoute, method: str) -> Rule:
    """The rule of ``route`` for ``method``.

    Raises:
        RuntimeError: The route has no rule in ``ROUTE_RULES``.
    """
    rule = rule_for(method, route.path_format)
    if rule is None:
        raise RuntimeError(f"route {method} {route.path_format} has no access rule")
    return rule


def api_routes(routes: list[BaseRoute]) -> list[APIRoute]:
    """Every API route, including those of included routers."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif (router := getattr(route, "original_router", None)) is not None:
            found.extend(api_routes(router.routes))
    return found


def check_every_route_has_a_rule(app: FastAPI) -> None:
    """Refuse to build an app with a route the access table does not cover, or a
    project-scoped rule on a path without ``{project}``.

    Raises:
        RuntimeError: Naming every such route.
    """
    missing, unscoped = [], []
    for route in api_routes(app.routes):
        for method in sorted(route.methods or ()):
            rule = rule_for(method, route.path_format)
            if rule is None:
                missing.append(f"{method} {route.path_format}")
            elif rule.scope is Scope.PROJECT and "{project}" not in route.path_format:
                unscoped.append(f"{method} {route.path_format}")
    if missing:
        raise RuntimeError(f"routes without an access rule in ROUTE_RULES: {missing}")
    if unscoped:
        raise RuntimeError(f"project-scoped rules on paths without {{project}}: {unscoped}")
