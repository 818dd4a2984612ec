"""``prelabel models`` and ``prelabel export-onnx``, added to the CLI through an entry point."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from models.precision import served_onnx, served_precision
from models.registry import ModelRecord, get_version, list_versions, serving_version
from prelabel.blobs import download
from prelabel.errors import ModelNotFound
from prelabel.projects import get_project
from prelabel.settings import get_storage_settings
from prelabel.workspace import open_workspace

console = Console(stderr=True)


def models(project: Annotated[str, typer.Option(help="project id or name")]) -> None:
    """List the project's model versions: status, held-out scores, served precision and
    FLOPs, and the sha256 of the served artifact."""
    workspace = open_workspace(get_storage_settings())
    with workspace.sessions() as session:
        records = list_versions(session, get_project(session, project).id)
    table = Table(
        "version",
        "status",
        "parent",
        "held-out mIoU",
        "serving mIoU then",
        "trained on",
        "precision",
        "GFLOPs/512²",
        "onnx sha256",
        "created",
    )
    for record in records:
        held_out = record.metrics.get("held_out", {}).get("miou")
        serving = record.metrics.get("serving_held_out", {}).get("miou")
        table.add_row(
            record.version,
            record.status,
            record.parent_version or "-",
            f"{held_out:.4f}" if held_out is not None else "-",
            f"{serving:.4f}" if serving is not None else "-",
            str(len(record.trained_on)),
            served_precision(record).value,
            _gflops(record),
            served_onnx(record)[1][:12],
            record.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    Console().print(table)


def _gflops(record: ModelRecord) -> str:
    """FLOPs of a 512² draft (counted at export), in GFLOPs; "-" for older versions."""
    cost = record.metrics.get("cost")
    if not isinstance(cost, dict) or not cost.get("flops"):
        return "-"
    side = 512 * 512 / (cost["height"] * cost["width"])
    return f"{cost['flops'] * side / 1e9:.2f}"


def export_onnx_command(
    project: Annotated[str, typer.Option(help="project id or name")],
    out: Annotated[Path, typer.Option(help="where to write the .onnx file")],
    version: Annotated[str | None, typer.Option(help="default: the serving version")] = None,
    size: Annotated[int, typer.Option(help="export sample size in pixels")] = 256,
) -> None:
    """Re-export a version's checkpoint to ONNX (dynamic H/W) and check parity with torch."""
    from models.builder import load_checkpoint
    from models.guidance import automatic_mode
    from models.onnx_export import check_parity, export_onnx

    workspace = open_workspace(get_storage_settings())
    with workspace.sessions() as session:
        project_id = get_project(session, project).id
        record = (
            get_version(session, project_id, version)
            if version
            else serving_version(session, project_id)
        )
    if record is None:
        raise ModelNotFound(f"serving version of {project}")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "model.pt"
        download(workspace.blobs, record.checkpoint_key, checkpoint)
        net, config = load_checkpoint(checkpoint)
    net = automatic_mode(net, config)  # a click model drafts with zero guidance
    export_onnx(net, out, config=config, sample_hw=(size, size))
    stride = config.stride
    diff = check_parity(net, out, config=config, hw=(size + 3 * stride, size + stride))
    console.print(f"wrote {out} from {record.version}; max |onnx - torch| = {diff:.2e}")


def register(app: typer.Typer) -> None:
    """Add the model commands to the ``prelabel`` CLI."""
    app.command()(models)
    app.command("export-onnx")(export_onnx_command)
