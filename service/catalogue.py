"""The dashboard's strings in every language it speaks (one catalogue), and the choice of
language from ``Accept-Language``."""

from __future__ import annotations

LANGUAGES = ("en", "de")
"""The first is the fallback."""

STRINGS: dict[str, dict[str, str]] = {
    "en": {
        "title": "prelabel dashboard",
        "login": "Log in",
        "logout": "Log out",
        "token": "API token",
        "login_hint": "Paste your prelabel API token.",
        "login_failed": "The token is unknown, revoked or expired.",
        "projects": "Projects",
        "no_projects": "You are not a member of any project.",
        "overview": "Overview",
        "corrections": "Corrections",
        "acceptance_rate": "Acceptance rate",
        "effort_saved": "Effort saved vs empty drafts",
        "pixels": "pixels",
        "regions": "regions",
        "queue_length": "Queue (images without correction)",
        "drafts_precomputed": "Drafts precomputed / missing",
        "serving_version": "Serving version",
        "acceptance_over_time": "Acceptance rate per day",
        "effort_over_time": "Share of pixels saved per day",
        "version_change": "version change",
        "changed_fraction_distribution": "Changed-pixel fraction per correction",
        "class_iou": "IoU of drafts per class (worst first)",
        "class": "Class",
        "mean_iou": "Mean IoU",
        "annotators": "Annotators",
        "annotator": "Annotator",
        "volume": "Corrections",
        "median_lead_time": "Median lead time (s)",
        "turnaround": "Turnaround",
        "upload_to_draft": "Upload to draft",
        "draft_to_correction": "Draft to correction",
        "versions": "Model versions",
        "version": "Version",
        "status": "Status",
        "held_out": "Held-out score",
        "trained_on": "Trained on",
        "parent": "Parent",
        "reason": "Why",
        "next_images": "Next images to label",
        "uncertainty": "uncertainty",
        "runs_in_progress": "Training runs in progress",
        "no_runs": "No run in progress.",
        "progress": "Progress",
        "image": "Image",
        "draft": "Draft",
        "confidence": "Confidence",
        "correction": "Latest correction",
        "disagreement": "Disagreement (changed pixels in red)",
        "history": "Correction history",
        "no_correction": "No correction yet.",
        "no_draft": "No draft stored yet.",
        "when": "When",
        "changed_pixels": "Changed pixels",
        "not_found": "Not found",
        "forbidden": "Not allowed",
        "error": "Error",
        "back": "Back",
        "none": "none",
        "language": "Language",
    },
    "de": {
        "title": "prelabel-Übersicht",
        "login": "Anmelden",
        "logout": "Abmelden",
        "token": "API-Token",
        "login_hint": "Fügen Sie Ihr prelabel-API-Token ein.",
        "login_failed": "Das Token ist unbekannt, widerrufen oder abgelaufen.",
        "projects": "Projekte",
        "no_projects": "Sie sind in keinem Projekt Mitglied.",
        "overview": "Übersicht",
        "corrections": "Korrekturen",
        "acceptance_rate": "Akzeptanzrate",
        "effort_saved": "Ersparter Aufwand gegenüber leeren Entwürfen",
        "pixels": "Pixel",
        "regions": "Regionen",
        "queue_length": "Warteschlange (Bilder ohne Korrektur)",
        "drafts_precomputed": "Entwürfe vorberechnet / fehlend",
        "serving_version": "Aktive Version",
        "acceptance_over_time": "Akzeptanzrate pro Tag",
        "effort_over_time": "Anteil ersparter Pixel pro Tag",
        "version_change": "Versionswechsel",
        "changed_fraction_distribution": "Anteil geänderter Pixel je Korrektur",
        "class_iou": "IoU der Entwürfe je Klasse (schlechteste zuerst)",
        "class": "Klasse",
        "mean_iou": "Mittlere IoU",
        "annotators": "Annotierende",
        "annotator": "Annotierende Person",
        "volume": "Korrekturen",
        "median_lead_time": "Median der Bearbeitungszeit (s)",
        "turnaround": "Durchlaufzeit",
        "upload_to_draft": "Hochladen bis Entwurf",
        "draft_to_correction": "Entwurf bis Korrektur",
        "versions": "Modellversionen",
        "version": "Version",
        "status": "Status",
        "held_out": "Testwert",
        "trained_on": "Trainiert auf",
        "parent": "Vorgänger",
        "reason": "Begründung",
        "next_images": "Nächste zu annotierende Bilder",
        "uncertainty": "Unsicherheit",
        "runs_in_progress": "Laufende Trainings",
        "no_runs": "Kein Training läuft.",
        "progress": "Fortschritt",
        "image": "Bild",
        "draft": "Entwurf",
        "confidence": "Konfidenz",
        "correction": "Letzte Korrektur",
        "disagreement": "Abweichung (geänderte Pixel rot)",
        "history": "Korrekturverlauf",
        "no_correction": "Noch keine Korrektur.",
        "no_draft": "Noch kein Entwurf gespeichert.",
        "when": "Wann",
        "changed_pixels": "Geänderte Pixel",
        "not_found": "Nicht gefunden",
        "forbidden": "Nicht erlaubt",
        "error": "Fehler",
        "back": "Zurück",
        "none": "keine",
        "language": "Sprache",
    },
}


def choose_language(accept_language: str | None, override: str | None = None) -> str:
    """The first supported language of ``override`` or the ``Accept-Language`` header
    (by quality), else English."""
    if override in LANGUAGES:
        return override
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        ranked.append((-quality, index, tag.strip().lower().split("-")[0]))
    for _, _, code in sorted(ranked):
        if code in LANGUAGES:
            return code
    return LANGUAGES[0]
