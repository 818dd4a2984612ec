"""Typed dependencies shared by the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from prelabel.report_snapshots import SectionsCache
from prelabel.review_metrics import AgreementCache
from prelabel.settings import ServiceSettings
from prelabel.workspace import Workspace
from service.predictors import PredictorCache


def get_workspace(request: Request) -> Workspace:
    """The workspace opened by the app's lifespan."""
    workspace: Workspace = request.app.state.workspace
    return workspace


def get_predictors(request: Request) -> PredictorCache:
    """The app's predictor cache."""
    predictors: PredictorCache = request.app.state.predictors
    return predictors


def get_settings(request: Request) -> ServiceSettings:
    """The service settings the app was built with."""
    settings: ServiceSettings = request.app.state.service_settings
    return settings


def get_agreement_cache(request: Request) -> AgreementCache:
    """The app's inter-annotator comparisons, kept across metrics requests."""
    cache: AgreementCache = request.app.state.agreement_cache
    return cache


def get_sections_cache(request: Request) -> SectionsCache:
    """The app's project-wide metrics sections, kept for a few seconds per project."""
    cache: SectionsCache = request.app.state.sections_cache
    return cache


WorkspaceDep = Annotated[Workspace, Depends(get_workspace)]
PredictorsDep = Annotated[PredictorCache, Depends(get_predictors)]
SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
AgreementCacheDep = Annotated[AgreementCache, Depends(get_agreement_cache)]
SectionsCacheDep = Annotated[SectionsCache, Depends(get_sections_cache)]
