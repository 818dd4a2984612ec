"""The route table of access: every HTTP route, who may call it. Nothing else decides.

Each route's rule is looked up by (method, path template) on every request by the
app-wide dependency in ``service.auth``; building the app fails if a route has no
rule, and ``tests/unit/service/test_access_matrix.py`` calls every route as every
role. The permissions themselves (which role grants what) are ``prelabel.access``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from prelabel.access import Permission


class Scope(StrEnum):
    """What a rule asks of the caller."""

    PUBLIC = "public"
    """Anyone (liveness)."""
    USER = "user"
    """Any authenticated user; the handler shows only what the user may see."""
    ADMIN = "admin"
    """A global admin."""
    PROJECT = "project"
    """The permission in the project of the ``{project}`` path parameter."""
    BOUND_PROJECT = "bound_project"
    """The permission in a project the handler finds from the body (integrations)."""
    OPERATIONS = "operations"
    """The Prometheus exposition: a global admin, or anyone with PRELABEL_METRICS_PUBLIC=true."""


@dataclass(frozen=True)
class Rule:
    """Who may call a route.

    ``page`` marks a dashboard page: it also accepts the login session cookie (API
    routes take only ``Authorization``), answers an anonymous caller with a redirect
    to ``/login`` and its errors as HTML.
    """

    scope: Scope
    permission: Permission | None = None
    page: bool = False

    def __post_init__(self) -> None:
        scoped = self.scope in (Scope.PROJECT, Scope.BOUND_PROJECT)
        if scoped != (self.permission is not None):
            raise ValueError(f"a {self.scope} rule takes a permission iff it is project-scoped")


P = Permission
_PUBLIC = Rule(Scope.PUBLIC)
_USER = Rule(Scope.USER)
_ADMIN = Rule(Scope.ADMIN)


def _project(permission: Permission) -> Rule:
    return Rule(Scope.PROJECT, permission)


def _bound(permission: Permission) -> Rule:
    return Rule(Scope.BOUND_PROJECT, permission)


_PUBLIC_PAGE = Rule(Scope.PUBLIC, page=True)
_USER_PAGE = Rule(Scope.USER, page=True)
_DASHBOARD = Rule(Scope.PROJECT, P.READ_METRICS, page=True)


_IMAGE = "/projects/{project}/images/{image}"
_MODEL = "/projects/{project}/models/{version}"
_MEMBER = "/projects/{project}/members/{user}"

ROUTE_RULES: dict[tuple[str, str], Rule] = {
    ("GET", "/health"): _PUBLIC,
    ("GET", "/health/ready"): _PUBLIC,
    ("GET", "/metrics"): Rule(Scope.OPERATIONS),
    # The dashboard: the login form and logout are public pages (their POSTs carry a CSRF
    # token); the project pages need what the metrics API needs.
    ("GET", "/login"): _PUBLIC_PAGE,
    ("POST", "/login"): _PUBLIC_PAGE,
    ("POST", "/logout"): _PUBLIC_PAGE,
    ("GET", "/dashboard"): _USER_PAGE,
    ("GET", "/dashboard/projects/{project}"): _DASHBOARD,
    ("GET", "/dashboard/projects/{project}/images/{image}"): _DASHBOARD,
    ("GET", "/me"): _USER,
    ("GET", "/users"): _ADMIN,
    ("POST", "/users"): _ADMIN,
    ("POST", "/users/{user}/tokens"): _ADMIN,
    ("DELETE", "/users/{user}/tokens"): _ADMIN,
    ("GET", "/audit"): _ADMIN,
    ("GET", "/projects"): _USER,
    ("POST", "/projects"): _ADMIN,
    ("GET", "/projects/{project}"): _project(P.VIEW_PROJECT),
    ("DELETE", "/projects/{project}"): _ADMIN,
    ("PATCH", "/projects/{project}"): _project(P.MANAGE_PROJECT),
    ("GET", "/projects/{project}/reviews"): _project(P.REVIEW_CORRECTIONS),
    ("POST", "/projects/{project}/corrections/{correction}/review"): _project(P.REVIEW_CORRECTIONS),
    ("GET", "/projects/{project}/training-policy"): _project(P.READ_TRAINING),
    ("PUT", "/projects/{project}/training-policy"): _project(P.RUN_TRAINING),
    ("GET", "/projects/{project}/audit"): _project(P.READ_AUDIT),
    ("GET", "/projects/{project}/members"): _project(P.MANAGE_MEMBERS),
    ("PUT", _MEMBER): _project(P.MANAGE_MEMBERS),
    ("DELETE", _MEMBER): _project(P.MANAGE_MEMBERS),
    ("POST", "/projects/{project}/images"): _project(P.UPLOAD_IMAGES),
    ("GET", "/projects/{project}/images"): _project(P.VIEW_PROJECT),
    ("GET", _IMAGE): _project(P.VIEW_PROJECT),
    ("DELETE", _IMAGE): _project(P.ERASE),
    ("GET", f"{_IMAGE}/file"): _project(P.VIEW_PROJECT),
    ("GET", f"{_IMAGE}/draft"): _project(P.VIEW_PROJECT),
    ("PUT", f"{_IMAGE}/correction"): _project(P.WRITE_CORRECTIONS),
    ("POST", f"{_IMAGE}/refine"): _project(P.WRITE_CORRECTIONS),
    ("GET", f"{_IMAGE}/correction"): _project(P.VIEW_PROJECT),
    ("GET", f"{_IMAGE}/corrections"): _project(P.VIEW_PROJECT),
    ("GET", "/projects/{project}/metrics"): _project(P.READ_METRICS),
    ("POST", "/projects/{project}/training-runs"): _project(P.RUN_TRAINING),
    ("GET", "/projects/{project}/training-runs"): _project(P.READ_TRAINING),
    ("GET", "/projects/{project}/training-runs/{run}"): _project(P.READ_TRAINING),
    # Bulk pre-labeling spends the worker's CPU for hours: those who run training start it.
    ("POST", "/projects/{project}/bulk-drafts"): _project(P.RUN_BULK_DRAFTS),
    ("GET", "/projects/{project}/bulk-drafts"): _project(P.READ_TRAINING),
    ("GET", "/projects/{project}/bulk-drafts/{job}"): _project(P.READ_TRAINING),
    ("POST", "/projects/{project}/bulk-drafts/{job}/cancel"): _project(P.RUN_BULK_DRAFTS),
    ("GET", "/projects/{project}/models"): _project(P.READ_TRAINING),
    ("GET", _MODEL): _project(P.READ_TRAINING),
    ("POST", f"{_MODEL}/promote"): _project(P.RUN_TRAINING),
    ("POST", f"{_MODEL}/pin"): _project(P.RUN_TRAINING),
    ("DELETE", f"{_MODEL}/pin"): _project(P.RUN_TRAINING),
    ("GET", "/projects/{project}/queue"): _project(P.VIEW_PROJECT),
    ("GET", "/projects/{project}/export"): _project(P.EXPORT),
    ("POST", "/cvat/projects/{project}/invoke"): _project(P.VIEW_PROJECT),
    ("GET", "/cvat/projects/{project}/function.yaml"): _project(P.VIEW_PROJECT),
    ("POST", "/cvat/projects/{project}/interactor/{label}/invoke"): _project(P.WRITE_CORRECTIONS),
    ("GET", "/cvat/projects/{project}/interactor.yaml"): _project(P.VIEW_PROJECT),
    ("GET", "/labelstudio/health"): _PUBLIC,
    ("POST", "/labelstudio/setup"): _bound(P.VIEW_PROJECT),
    ("POST", "/labelstudio/predict"): _bound(P.VIEW_PROJECT),
    ("POST", "/labelstudio/webhook"): _bound(P.WRITE_CORRECTIONS),
    ("GET", "/labelstudio/bindings"): _USER,
    ("PUT", "/labelstudio/bindings/{ls_project}"): _bound(P.MANAGE_INTEGRATIONS),
}
"""(method, path template) -> rule. Reading one's own corrections needs only
VIEW_PROJECT: the handlers show others' corrections only with READ_ALL_CORRECTIONS."""


def rule_for(method: str, path: str) -> Rule | None:
    """The rule of a route, or None when it has none (the app refuses to start then)."""
    return ROUTE_RULES.get((method.upper(), path))
