"""The ``prelabel`` command line.

The core contributes the data commands (``demo``, ``import``, ``export``, ``projects``);
the packages built on top of it add theirs (``serve``, ``train``, ``worker``,
``models``, ``export-onnx``) through the ``prelabel.commands`` entry-point
group, so the core never imports them.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import Progress
from rich.table import Table

from prelabel.access_cli import cli_actor, members_app, users_app
from prelabel.dataset_export import (
    NO_MODEL_VERSION,
    ExportFormat,
    export_project,
    parse_export_filter,
)
from prelabel.datasets.catalog import DATASET_BUILDERS, prepare_dataset
from prelabel.datasets.folder import list_items
from prelabel.errors import PrelabelError
from prelabel.importer import import_dataset
from prelabel.projects import list_projects
from prelabel.settings import get_service_settings, get_storage_settings
from prelabel.split import held_out_score
from prelabel.workspace import Workspace, workspace_from_settings

logger = logging.getLogger(__name__)

DEMO_PROJECT = "mni-demo"
DEMO_DATASET = "mni-tissue"

app = typer.Typer(
    help="prelabel: model-assisted pre-labeling for semantic segmentation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
app.add_typer(users_app, name="users")
app.add_typer(members_app, name="members")


def import_with_progress(
    workspace: Workspace, directory: Path, project: str, labelled_share: float = 1.0
) -> None:
    """Import a dataset folder with a progress bar; a share of its masks become corrections."""
    total = len(list_items(directory))
    with Progress(console=console) as progress:
        task = progress.add_task(f"importing {directory.name}", total=total)
        report = import_dataset(
            workspace,
            directory,
            project=project,
            max_pixels=get_service_settings().max_image_pixels,
            actor=cli_actor(),
            with_mask=lambda stem: held_out_score(f"demo:{stem}") < labelled_share,
            on_item=lambda: progress.advance(task),
        )
    console.print(
        f"project {project} ({report.project_id}): {report.images_added} images added, "
        f"{report.images_skipped} already there, {report.corrections_added} corrections"
    )


@app.command("import")
def import_command(
    directory: Annotated[
        Path,
        typer.Argument(
            exists=True, file_okay=False, help="folder with images/, masks/, labels.yaml"
        ),
    ],
    project: Annotated[str, typer.Option(help="project name (created from labels.yaml if new)")],
) -> None:
    """Import images, and masks as corrections, from a dataset folder."""
    with workspace_from_settings() as workspace:
        import_with_progress(workspace, directory, project)


@app.command()
def demo(
    dataset: Annotated[str, typer.Option(help=f"one of {sorted(DATASET_BUILDERS)}")] = DEMO_DATASET,
    project: Annotated[str, typer.Option(help="project to import into")] = DEMO_PROJECT,
    labelled_share: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="share of images imported with their mask as a correction; "
            "the rest wait for drafts",
        ),
    ] = 0.6,
) -> None:
    """Prepare a real demo dataset (if absent) and import it into a project."""
    settings = get_storage_settings()
    directory = prepare_dataset(dataset, settings.home / "datasets" / dataset)
    with workspace_from_settings() as workspace:
        import_with_progress(workspace, directory, project, labelled_share)


@app.command()
def projects() -> None:
    """List projects."""
    with workspace_from_settings() as workspace, workspace.sessions() as session:
        rows = list_projects(session)
    table = Table("id", "name", "classes", "acceptance threshold")
    for row in rows:
        table.add_row(
            row.id, row.name, str(len(row.label_schema.classes)), f"{row.acceptance_threshold:.2%}"
        )
    Console().print(table)


@app.command("export")
def export_command(
    project: Annotated[str, typer.Option(help="project id or name")],
    out: Annotated[Path, typer.Option(dir_okay=False, help="the zip file to write")],
    export_format: Annotated[
        ExportFormat,
        typer.Option("--format", help="png: images/ masks/ labels.yaml; coco: annotations.json"),
    ] = ExportFormat.PNG,
    approved_only: Annotated[
        bool,
        typer.Option(
            "--approved-only",
            help="with review required: only QA-approved corrections; otherwise only "
            "accepted ones (draft needed <= the acceptance threshold of changes)",
        ),
    ] = False,
    model_version: Annotated[
        str | None,
        typer.Option(
            help=f"only corrections of drafts by this version; {NO_MODEL_VERSION!r}: no model"
        ),
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="corrections from this ISO 8601 time on (UTC if no offset)")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="corrections before this ISO 8601 time (UTC if no offset)")
    ] = None,
) -> None:
    """Export a project's current corrections as a zip: a dataset folder or COCO JSON."""
    try:
        export_filter = parse_export_filter(
            approved_only=approved_only, model_version=model_version, since=since, until=until
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    # Written beside the target, then renamed: an interrupted export leaves no half zip.
    partial = out.with_name(f".{out.name}.partial")
    try:
        with workspace_from_settings() as workspace, partial.open("wb") as stream:
            summary = export_project(
                workspace, project, export_filter, export_format, stream, actor=cli_actor()
            )
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    console.print(
        f"project {summary.project_name}: {summary.images} images"
        + (f", {summary.annotations} annotations" if export_format is ExportFormat.COCO else "")
        + f" written to {out}"
    )


def _register_plugins() -> None:
    for entry_point in entry_points(group="prelabel.commands"):
        try:
            register = entry_point.load()
        except ImportError as exc:
            logger.debug("command group %s unavailable: %s", entry_point.name, exc)
            continue
        register(app)


def log_plainly() -> None:
    """Log plain lines (time, level, logger, message) instead of Rich's layout.

    For the long-running commands (``serve``, ``worker``), whose output goes to a file or
    a journal: Rich lays out each line as a table, which under load took a third of the
    service's event loop for the access log alone (README, "Load").
    """
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().handlers[:] = [handler]


def main() -> None:
    """Entry point of the ``prelabel`` console script."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(name)s: %(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    _register_plugins()
    try:
        app()
    except PrelabelError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(2) from exc


if __name__ == "__main__":
    main()
