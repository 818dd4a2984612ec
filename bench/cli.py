"""``prelabel bench ...``: the benchmarks, added to the core CLI through an entry point.

The benchmark modules import torch and matplotlib; they are imported only when a
benchmark command runs, so every other ``prelabel`` command starts fast.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from prelabel.datasets.catalog import DATASET_BUILDERS

logger = logging.getLogger(__name__)

DEFAULT_LEARNING_CURVE_OUT = Path("bench") / "out" / "learning_curve"

bench_app = typer.Typer(
    help="Benchmarks: each writes JSON, Markdown and a plot with hardware and versions.",
    no_args_is_help=True,
)


@bench_app.command("learning-curve")
def learning_curve(
    data: Annotated[
        str | None,
        typer.Option(
            help=f"a dataset folder (images/, masks/, labels.yaml) or one of "
            f"{sorted(DATASET_BUILDERS)}; default colin27-aal (--quick: mni-tissue)"
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option(file_okay=False, help="folder for results.json/.md and the plot")
    ] = DEFAULT_LEARNING_CURVE_OUT,
    quick: Annotated[
        bool, typer.Option("--quick", help="small subset and tiny model: a CI smoke test")
    ] = False,
    batch: Annotated[
        int | None, typer.Option(min=1, help="images per round (default 16; --quick 8)")
    ] = None,
    pool_size: Annotated[
        int | None, typer.Option(min=1, help="cap on the pool (default: every non-test image)")
    ] = None,
    seed: Annotated[int, typer.Option(help="pool shuffle and random-order seed")] = 0,
    self_training: Annotated[
        bool,
        typer.Option(
            "--self-training", help="also train on the serving version's confident drafts"
        ),
    ] = False,
    clicks: Annotated[
        int,
        typer.Option(
            min=0, help="per round, NoC@85/90 of click refinement on N test images (0: off)"
        ),
    ] = 0,
    click_model: Annotated[
        bool,
        typer.Option(
            "--click-model",
            help="train the click model (guidance channels) and measure its NoC beside GrabCut's",
        ),
    ] = False,
) -> None:
    """Draft quality and annotation effort round by round, with a real service and worker."""
    from bench.learning_curve import execute, resolve_options

    options = resolve_options(
        data, out, quick, batch, pool_size, seed, self_training, clicks, click_model
    )
    execute(options)


DEFAULT_FUZZ_OUT = Path("bench") / "out" / "fuzz"


@bench_app.command("fuzz")
def fuzz(
    examples: Annotated[
        int, typer.Option(min=1, help="generated requests in all, spread over the operations")
    ] = 10_000,
    out: Annotated[Path, typer.Option(file_okay=False, help="folder for results.json")] = (
        DEFAULT_FUZZ_OUT
    ),
    seed: Annotated[int, typer.Option(help="hypothesis seed")] = 0,
) -> None:
    """Fuzz every operation from the OpenAPI schema (schemathesis) with an admin token;
    exits 1 on any 5xx or schema violation."""
    import tempfile

    from bench.fuzz import run_fuzz, write_summary

    with tempfile.TemporaryDirectory(prefix="prelabel-fuzz-") as home:
        summary = run_fuzz(Path(home) / "home", examples, seed)
    path = write_summary(summary, out)
    logger.info(
        "fuzzed %d operations with %d requests in %.0f s: %d findings, %d 5xx; %s",
        summary.operations,
        summary.requests,
        summary.duration_s,
        len(summary.findings),
        summary.server_errors,
        path,
    )
    for finding in summary.findings[:20]:
        logger.error("%s -> %d: %s", finding.operation, finding.status, finding.failures)
    if summary.findings:
        raise typer.Exit(1)


@bench_app.command("scale")
def scale(
    quick: Annotated[
        bool, typer.Option("--quick/--full", help="few requests (a CI smoke test) or the full run")
    ] = False,
    server_url: Annotated[
        str | None,
        typer.Option(help="PostgreSQL URL of a CREATEDB role (default: .ci/postgres's server)"),
    ] = None,
    out: Annotated[Path, typer.Option(dir_okay=False, help="the JSON report")] = Path(
        "bench/out/scale.json"
    ),
) -> None:
    """1 vs 2 service replicas on PostgreSQL, and claim latency under 4 workers."""
    from bench.scale import main as scale_main

    args = ["--out", str(out), *(["--quick"] if quick else [])]
    code = scale_main([*args, *(["--server-url", server_url] if server_url else [])])
    if code:
        raise typer.Exit(code)


DEFAULT_LOAD_OUT = Path("bench") / "out" / "load"


@bench_app.command("load")
def load(
    annotators: Annotated[int, typer.Option(min=1, help="simulated annotators")] = 100,
    duration: Annotated[float, typer.Option(min=1, help="seconds per phase (idle, training)")] = (
        300.0
    ),
    think_s: Annotated[float, typer.Option(min=0, help="mean pause between two steps")] = 1.0,
    edit_s: Annotated[float, typer.Option(min=0, help="mean time to correct a draft")] = 10.0,
    quick: Annotated[
        bool, typer.Option("--quick", help="5 annotators, 10 s per phase: a CI smoke test")
    ] = False,
    out: Annotated[Path, typer.Option(file_okay=False, help="folder for results.json/.md")] = (
        DEFAULT_LOAD_OUT
    ),
    service_processes: Annotated[
        int, typer.Option(min=1, max=64, help="prelabel serve --processes")
    ] = 1,
) -> None:
    """Simulated annotators (queue, draft, correction, metrics) against a real service, without
    and with a training run on the same machine; exits 1 on any error or lost correction."""
    from bench.load import main as load_main

    args = ["--annotators", str(annotators), "--duration", str(duration)]
    args += [
        "--think-s",
        str(think_s),
        "--edit-s",
        str(edit_s),
        "--out",
        str(out),
        "--service-processes",
        str(service_processes),
        *(["--quick"] if quick else []),
    ]
    code = load_main(args)
    if code:
        raise typer.Exit(code)


@bench_app.command("train-processes")
def train_processes(
    quick: Annotated[
        bool, typer.Option("--quick/--full", help="16 images, 20 steps (a smoke test) or more")
    ] = False,
    nproc: Annotated[
        int, typer.Option(min=1, help="processes of the distributed run (1: only one run)")
    ] = 2,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    out: Annotated[Path, typer.Option(dir_okay=False, help="the JSON report")] = Path(
        "bench/out/train_processes.json"
    ),
) -> None:
    """One training run in 1 process vs --nproc processes (torchrun + DDP), same data."""
    from bench.train_processes import main as train_processes_main

    args = ["--nproc", str(nproc), "--device", device, "--out", str(out)]
    code = train_processes_main([*args, *(["--quick"] if quick else [])])
    if code:
        raise typer.Exit(code)


@bench_app.command("drafts")
def drafts(
    out: Annotated[
        Path, typer.Option(file_okay=False, help="folder for results.json and table.md")
    ] = Path("bench/out/drafts"),
    quick: Annotated[
        bool, typer.Option("--quick", help="small images, few requests: a CI smoke test")
    ] = False,
) -> None:
    """Draft latency and throughput at 256², 512², 2048² and a tiled 8192² image: raw
    onnxruntime, the real service and a torch-eager reference server, in one run."""
    from bench.drafts import main as drafts_main

    code = drafts_main(["--out", str(out), *(["--quick"] if quick else [])])
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add the ``bench`` command group to the ``prelabel`` CLI."""
    app.add_typer(bench_app, name="bench")
