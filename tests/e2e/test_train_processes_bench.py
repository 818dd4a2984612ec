"""Smoke test of ``bench.train_processes --quick``: 1 vs 2 training processes, report shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import train_processes

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_train_processes_quick(tmp_path: Path) -> None:
    out = tmp_path / "train_processes.json"
    assert train_processes.main(["--quick", "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "train_processes" and report["quick"] is True
    assert [run["processes"] for run in report["runs"]] == [1, 2]
    assert all(run["device"] == "cpu" and run["steps"] > 0 for run in report["runs"])
    assert {"wall_s_n_over_1", "train_s_n_over_1", "images_per_s_n_over_1"} == set(report["ratios"])
