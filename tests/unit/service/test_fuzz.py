"""The fuzzer's smoke mode: ≥ 2,000 requests generated from the OpenAPI schema, no finding.

``prelabel bench fuzz --examples 10000`` is the full run (README, "Robustness").
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.fuzz import CHECK_NAMES, run_fuzz, write_summary
from service.access_rules import ROUTE_RULES

SMOKE_EXAMPLES = 2_600
"""Spread over the operations; hypothesis stops early on operations with little to vary."""


@pytest.mark.slow
def test_fuzz_smoke_finds_no_server_error_and_no_schema_violation(tmp_path: Path) -> None:
    summary = run_fuzz(tmp_path / "home", SMOKE_EXAMPLES, seed=0)
    assert summary.requests >= 2_000
    # every API route of the access table was fuzzed, each with requests of its own (the
    # dashboard's HTML pages are not in the OpenAPI schema)
    api_routes = [rule for rule in ROUTE_RULES.values() if not rule.page]
    assert summary.operations == len(api_routes)
    assert len(summary.by_operation) == len(api_routes)
    assert summary.findings == []
    assert summary.server_errors == 0
    assert {"2", "4"} <= {status[0] for status in summary.by_status}
    written = json.loads(write_summary(summary, tmp_path / "out").read_text())
    assert written["requests"] == summary.requests
    assert written["checks"] == CHECK_NAMES
