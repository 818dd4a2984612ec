"""Smoke tests of the benchmarks' ``--quick`` modes: the pipelines run and write their reports.

Numbers are not asserted: timings and quality belong to the benchmark runs themselves.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench import clicks, draft_latency, incremental_vs_full, load, neighbour, recipe, scale
from tests.backends import PostgresServer

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def test_draft_latency_quick(tmp_path: Path) -> None:
    out = tmp_path / "latency.json"
    assert draft_latency.main(["--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "draft_latency" and report["quick"] is True
    assert {"hardware", "versions", "date", "results"} <= report.keys()


def test_incremental_vs_full_quick(tmp_path: Path) -> None:
    out = tmp_path / "ivf.json"
    assert (
        incremental_vs_full.main(
            ["--quick", "--out", str(out), "--data-dir", str(tmp_path / "colin27")]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    second = report["rounds"][1]
    assert second["incremental"]["kind"] == "incremental" and second["full"]["kind"] == "full"
    assert {"max_miou_gap_points", "mean_time_ratio", "target_met"} <= report["summary"].keys()


def test_recipe_trains_and_scores_one_recipe(tmp_path: Path) -> None:
    out = tmp_path / "recipe.json"
    args = ["--data", "photo-objects", "--images", "8", "--steps", "2", "--crop", "64"]
    assert recipe.main([*args, "--out", str(out), "--data-dir", str(tmp_path / "data")]) == 0
    result = json.loads(out.read_text())
    assert result["steps"] == 2 and result["images"] == 8
    assert 0.0 <= result["test_miou"] <= 1.0 and result["weights"] == "imagenet-mobilenet_v2"


def test_recipe_trains_a_click_model_and_measures_its_clicks(tmp_path: Path) -> None:
    out, kept = tmp_path / "recipe.json", tmp_path / "models"
    args = ["--data", "photo-objects", "--images", "8", "--steps", "4", "--crop", "64"]
    clicking = ["--click-model", "--clicks", "1", "--max-clicks", "2", "--keep", str(kept)]
    data = ["--data-dir", str(tmp_path / "data")]
    assert recipe.main([*args, *clicking, *data, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["click_model"] is True and result["interactive"]["enabled"] is True
    noc = result["clicks"]
    assert noc["images"] == 1 and {"empty", "draft", "empty_model", "draft_model"} <= noc.keys()
    assert noc["draft_model"]["objects"] == noc["draft"]["objects"] > 0
    assert noc["draft_model"]["max_clicks"] == 2
    assert sorted(p.name for p in kept.iterdir()) == ["model.click.onnx", "model.onnx"]


def test_clicks_quick_reports_noc_and_latency(tmp_path: Path) -> None:
    out = tmp_path / "clicks.json"
    args = ["--quick", "--data", "photo-objects", "--data-dir", str(tmp_path / "data")]
    assert clicks.main([*args, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "clicks" and report["click_model"] is None
    empty = report["noc"]["empty"]
    assert empty["objects"] > 0 and 0 <= empty["noc90"] <= empty["max_clicks"] == 3
    assert set(report["refine_latency"]) == {"grabcut"}
    assert set(report["refine_latency"]["grabcut"]) == {"256", "512"}


def test_clicks_latency_of_a_click_model_architecture(tmp_path: Path) -> None:
    out = tmp_path / "clicks.json"
    args = ["--quick", "--data", "photo-objects", "--data-dir", str(tmp_path / "data")]
    config = ["--click-model-config", str(REPO / "configs" / "model.yaml")]
    assert clicks.main([*args, *config, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["noc"] is None
    assert set(report["refine_latency"]) == {"grabcut", "model"}
    assert report["refine_latency"]["model"]["512"]["calls"] == 3


@pytest.mark.postgres
def test_scale_quick(tmp_path: Path, postgres_server: PostgresServer | None) -> None:
    assert postgres_server is not None, "run with PRELABEL_TEST_DATABASE_URL (make test does)"
    out = tmp_path / "scale.json"
    server = postgres_server.url.render_as_string(hide_password=False)
    assert scale.main(["--quick", "--out", str(out), "--server-url", server]) == 0
    report = json.loads(out.read_text())
    results = report["results"]
    assert report["benchmark"] == "scale" and report["quick"] is True
    assert results["claims"]["claimed_exactly_once"] and results["claims"]["workers"] == 4
    assert set(results["replicas"]) == {"1", "2", "ratio_2_to_1"}
    assert results["replicas"]["2"]["corrections"]["requests"] == 40


def test_load_quick_loses_nothing_and_answers_every_request(tmp_path: Path) -> None:
    """A few annotators against a real service of two processes, without then with a
    worker training."""
    assert load.main(["--quick", "--out", str(tmp_path), "--service-processes", "2"]) == 0
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["benchmark"] == "load" and report["quick"] is True
    assert report["service_processes"] == 2
    assert {"hardware", "versions", "date", "results", "targets"} <= report.keys()
    phases = report["results"]["phases"]
    assert set(phases) == {"idle", "training"}
    for phase in phases.values():
        assert phase["errors"] == 0, phase["error_samples"]
        assert set(phase["endpoints"]) == {"queue", "draft", "correction", "metrics"}
        assert set(phase["machine_cpu"]) <= {"busy_pct", "steal_pct"}  # empty off Linux
        for stats in phase["endpoints"].values():
            assert stats["requests"] > 0
            assert {"per_s", "p50_ms", "p95_ms", "p99_ms", "max_ms", "errors"} <= stats.keys()
            # Every timed request falls in one window, the first one starting the phase.
            assert sum(w["requests"] for w in stats["windows"]) == stats["requests"]
            assert stats["windows"][0]["from_s"] == 0
            # Every answer said its time in the service (Server-Timing), within the round trip.
            in_service = stats["in_service"]
            assert in_service["p50_ms"] is not None
            assert 0.0 <= in_service["p50_ms"] <= in_service["max_ms"] <= stats["max_ms"]
            # The slowest round trips, broken down by httpcore's trace events.
            slowest = stats["slowest"][0]
            assert slowest["total"] == stats["max_ms"]
            parts = slowest["before_send"] + slowest["waiting"] + slowest["after"]
            assert parts <= slowest["total"] + 0.5
            # (The service starts its clock at the headers, before a body is all sent.)
            assert slowest["in_service"] <= slowest["total"] + 0.5
        assert phase["client_loop_lag"]["p50_ms"] is not None
        # Each annotator has its own client, as each person has a browser: no connection
        # carries two annotators' requests (a shared pool would, between think times).
        connections = phase["client_connections"]
        assert connections["opened"] >= report["annotators"]
        assert connections["shared_by_annotators"] == 0
        # The service's own loop lag, scraped from its Prometheus histogram (both processes).
        assert phase["service_loop_lag"]["wakeups"] > 0
        assert phase["service_loop_lag"]["windows"][0]["from_s"] == 0
    worker = phases["training"]["worker"]
    assert worker["still_training_at_end"] and worker["worker_niceness"] >= 10
    durability = report["results"]["durability"]
    assert durability["checked"] == sum(p["acknowledged_corrections"] for p in phases.values())
    assert durability["checked"] > 0 and durability["lost"] == 0
    assert "| draft |" in (tmp_path / "results.md").read_text()
    assert "training steps during the phase" in (tmp_path / "results.md").read_text()


@pytest.mark.skipif(not hasattr(neighbour.os, "sched_setscheduler"), reason="Linux only")
def test_neighbour_quick_measures_every_way(tmp_path: Path) -> None:
    out = tmp_path / "neighbour.json"
    thread_settings = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    before = {name: os.environ.get(name) for name in thread_settings}
    assert neighbour.main(["--quick", "--out", str(out)]) == 0
    # One-thread BLAS stays inside its stand-in processes: later tests start threads.
    assert {name: os.environ.get(name) for name in thread_settings} == before
    report = json.loads(out.read_text())
    assert report["benchmark"] == "neighbour" and report["quick"] is True
    results = report["results"]
    assert set(results) == {"alone", "nice", "sched_idle"}
    for way, rounds in results.items():
        (only,) = rounds
        assert 0 < only["task_p50_ms"] <= only["task_p95_ms"] <= only["task_p99_ms"]
        assert (only["training_steps_per_s"] is None) == (way == "alone")
    assert "| sched_idle |" in out.with_suffix(".md").read_text()


def test_drafts_quick_writes_every_measurement(tmp_path: Path) -> None:
    from bench import drafts

    assert drafts.main(["--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "results.json").read_text())
    results = report["results"]
    assert report["benchmark"] == "drafts" and report["quick"] is True
    sizes = [str(side) for side in report["plan"]["sizes"]]
    int8 = results["prelabel_int8"]
    for measured in (results["prelabel"]["on_demand"], int8["on_demand"], results["reference"]):
        assert list(measured) == sizes
        assert all(measured[s]["concurrency_8"]["requests"] >= 8 for s in sizes)
    assert int8["version"] != results["prelabel"]["version"]
    assert set(results["targets"]["throughput_vs_reference_c8_int8"]["value"]) == set(sizes)
    assert set(results["raw_onnxruntime"]["fp32"]) == set(sizes)
    assert results["bulk"]["images"] == results["bulk"]["expected"] > 0
    assert results["tiled"]["peak_rss_mib"] > 0 and results["gemm"]["compute_bound_gflops"] > 0
    assert set(results["targets"]) >= {"service_overhead_p50", "tiled_peak_rss_mib"}
    spinning = results["spinning"]
    assert [r["spinning"] for r in spinning["rounds"]] == [True, False, True, False]
    assert all(r["concurrency_8"]["requests"] >= 8 for r in spinning["rounds"])
    assert sum(r["cpu_ms_per_draft_c1"] + r["cpu_ms_per_draft_c8"] for r in spinning["rounds"]) > 0
    assert set(results["targets"]["spinning_off_vs_on"]["value"]) == set(spinning["summary"]["on"])
    table = 2 + len(sizes) + 3 + len(sizes) + 3 + 2
    assert (tmp_path / "table.md").read_text().count("\n") == table


def test_runtime_options_quick(tmp_path: Path) -> None:
    from bench import runtime_options

    out = tmp_path / "options.json"
    assert runtime_options.main(["--quick", "--out", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert set(results) == set(runtime_options.VARIANTS)
    assert all(row["p50_ms"] > 0 for row in results.values())
