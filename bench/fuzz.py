"""Fuzzing the HTTP API from its own OpenAPI schema (schemathesis), against the real app.

``prelabel bench fuzz --examples N`` builds the app on a fresh home, seeds a project with
images, a correction and a second user, and lets schemathesis generate requests for every
operation with an admin token. Every response is checked with ``not_a_server_error``,
``status_code_conformance``, ``content_type_conformance`` and
``response_schema_conformance``; findings are collected (not stopped at) and written to
``results.json`` with the request counts per status. Half of the generated cases get path
parameters that exist (the seeded project, image, user), so that the fuzzer reaches past
the 404s into the handlers. Destructive operations (``DELETE``) run last.

``tests/unit/service/test_fuzz.py`` runs the smoke mode (≥ 2,000 requests) in CI.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import numpy as np
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation.modes import GenerationMode
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.testclient import TestClient

from prelabel.settings import AuthMode, SecuritySettings, ServiceSettings, StorageSettings
from service.app import create_app

logger = logging.getLogger(__name__)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
CHECK_NAMES = [check.__name__ for check in CHECKS]
FUZZ_PROJECT = "fuzzed"
SCHEMATHESIS_VERSION = schemathesis.__version__ if hasattr(schemathesis, "__version__") else ""


@dataclass(frozen=True)
class Finding:
    """One response that failed a check."""

    operation: str
    status: int
    failures: list[str]
    reproduce: str


@dataclass
class FuzzSummary:
    """What a fuzz run sent and found (written as ``results.json``)."""

    examples_per_operation: int
    seed: int
    operations: int = 0
    requests: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    by_operation: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    duration_s: float = 0.0
    checks: list[str] = field(default_factory=lambda: list(CHECK_NAMES))
    environment: dict[str, str] = field(default_factory=dict)

    @property
    def server_errors(self) -> int:
        """Responses with a 5xx status."""
        return sum(n for status, n in self.by_status.items() if status.startswith("5"))


def _png(seed: int, size: int = 32) -> bytes:
    from io import BytesIO

    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)
    buffer = BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _seed(app: Any, token: str) -> dict[str, list[str]]:
    """A project with images and a correction, and a second user; their ids by path parameter."""
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        classes = [
            {"id": 0, "name": "background", "color": "#000000"},
            {"id": 1, "name": "thing", "color": "#ff0000"},
        ]
        created = client.post("/projects", json={"name": FUZZ_PROJECT, "classes": classes})
        created.raise_for_status()
        files = [("files", (f"img{i}.png", _png(i), "image/png")) for i in range(4)]
        uploaded = client.post(f"/projects/{FUZZ_PROJECT}/images", files=files)
        uploaded.raise_for_status()
        images = [str(image["id"]) for image in uploaded.json()["images"]]
        mask = np.zeros((32, 32), dtype=np.uint8)
        mask[4:12, 4:12] = 1
        from io import BytesIO

        from PIL import Image

        buffer = BytesIO()
        Image.fromarray(mask).save(buffer, format="PNG")
        client.put(
            f"/projects/{FUZZ_PROJECT}/images/{images[0]}/correction",
            files={"mask": ("mask.png", buffer.getvalue(), "image/png")},
        ).raise_for_status()
        client.post("/users", json={"name": "ana"}).raise_for_status()
    return {
        "project": [FUZZ_PROJECT, str(created.json()["id"])],
        "image": images,
        "user": ["ana"],
        "label": ["thing", "1"],
        "version": ["v1"],
        "run": ["1"],
        "ls_project": ["1"],
    }


def _fuzz_token(app: Any, home: Path) -> str:
    """An admin token for the fuzzer's own user ``fuzzer`` (so that revoking ``ana``'s or
    ``admin``'s tokens in the run cannot lock the fuzzer out)."""
    from prelabel.accounts import ADMIN_TOKEN_FILE

    with TestClient(app) as client:
        admin = (home / ADMIN_TOKEN_FILE).read_text().strip()
        client.headers["Authorization"] = f"Bearer {admin}"
        created = client.post("/users", json={"name": "fuzzer", "admin": True})
        created.raise_for_status()
        return str(created.json()["token"])


def _path_parameter_names(path: str) -> list[str]:
    return re.findall(r"{(\w+)}", path)


def _operation_order(label: str) -> tuple[int, str]:
    # DELETE last, and the project's erasure very last, so that the seeded objects
    # are there for every other operation.
    method, _, path = label.partition(" ")
    if method == "DELETE":
        return (2 if path == "/projects/{project}" else 1, label)
    return (0, label)


def _record(summary: FuzzSummary, label: str, case: Any, response: Any) -> None:
    summary.requests += 1
    summary.by_status[str(response.status_code)] = (
        summary.by_status.get(str(response.status_code), 0) + 1
    )
    summary.by_operation[label] = summary.by_operation.get(label, 0) + 1
    try:
        case.validate_response(response, checks=CHECKS)
    except FailureGroup as group:
        failures = sorted({f"{type(f).__name__}: {f.title}" for f in group.exceptions})
        summary.findings.append(
            Finding(label, response.status_code, failures, case.as_curl_command())
        )


def _fuzz_operation(
    operation: Any, known: dict[str, list[str]], token: str, summary: FuzzSummary
) -> None:
    label = operation.label
    settings = hypothesis.settings(
        max_examples=summary.examples_per_operation,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )

    names = [name for name in _path_parameter_names(operation.path) if name in known]
    combos: list[dict[str, str] | None] = [None]
    if names:
        combos += [{name: known[name][i % len(known[name])] for name in names} for i in range(4)]
    strategy = st.one_of(
        *(
            st.sampled_from(combos).flatmap(
                lambda fixed, mode=mode: operation.as_strategy(mode, path_parameters=fixed)
            )
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        )
    )

    @hypothesis.seed(summary.seed)
    @settings
    @given(case=strategy)
    def run(case: Any) -> None:
        try:
            response = case.call(headers={"Authorization": f"Bearer {token}"})
        except Exception as exc:  # an unhandled error in the app: a 500 in production
            summary.requests += 1
            summary.by_status["500"] = summary.by_status.get("500", 0) + 1
            summary.by_operation[label] = summary.by_operation.get(label, 0) + 1
            failure = f"unhandled {type(exc).__name__}: {exc}"[:300]
            summary.findings.append(Finding(label, 500, [failure], case.as_curl_command()))
            return
        _record(summary, label, case, response)

    run()


def run_fuzz(home: Path, examples: int, seed: int = 0) -> FuzzSummary:
    """Fuzz every operation of the app (fresh under ``home``) with about ``examples``
    generated requests in all; returns what was sent and every finding."""
    home.mkdir(parents=True, exist_ok=True)
    storage = StorageSettings(home=home)
    app = create_app(
        storage, ServiceSettings(max_image_pixels=1024 * 1024), SecuritySettings(auth=AuthMode.ON)
    )
    token = _fuzz_token(app, home)
    known = _seed(app, token)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = sorted(
        (result.ok() for result in schema.get_all_operations()),
        key=lambda op: _operation_order(op.label),
    )
    summary = FuzzSummary(examples_per_operation=math.ceil(examples / len(operations)), seed=seed)
    summary.operations = len(operations)
    started = time.perf_counter()
    try:
        for operation in operations:
            _fuzz_operation(operation, known, token, summary)
            logger.info(
                "fuzzed %s: %d requests",
                operation.label,
                summary.by_operation.get(operation.label, 0),
            )
    finally:
        shutdown_lifespans()
    summary.duration_s = round(time.perf_counter() - started, 1)
    summary.environment = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "schemathesis": _schemathesis_version(),
    }
    return summary


def _schemathesis_version() -> str:
    from importlib.metadata import version

    return version("schemathesis")


def write_summary(summary: FuzzSummary, out: Path) -> Path:
    """Write ``results.json`` into ``out``; returns its path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    payload = asdict(summary) | {"server_errors": summary.server_errors}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def status_counts(summary: FuzzSummary) -> Counter[str]:
    """Requests per status class (``2xx``, ``4xx``, ``5xx``)."""
    classes: Counter[str] = Counter()
    for status, n in summary.by_status.items():
        classes[f"{status[0]}xx"] += n
    return classes
