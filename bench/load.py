"""Load: simulated annotators against a real service, without and with a training run.

Usage::

    python -m bench.load [--annotators 100] [--duration 300] [--think-s 2] [--quick] [--out DIR]
    prelabel bench load --annotators 100 --duration 300

On a fresh ``PRELABEL_HOME`` with the ``make run`` defaults (SQLite, local blobs), the
CLI builds the demo project (``prelabel demo``, MNI152 tissue slices), trains a first
model (``prelabel train``) and precomputes its drafts (``prelabel worker --once``).
``prelabel serve`` then runs as a subprocess; every simulated annotator is a real user
(``POST /users``) with the annotator role in the project, its own token and its own HTTP
client (as each person has a browser), and loops
``GET queue`` → ``GET draft`` (precomputed) → ``PUT correction`` (the draft with a box
repainted) → ``GET metrics`` (its own numbers, read with its team lead's token: the
annotator role may not read project metrics; one manager per 10 annotators), with a
think time between steps.

Two phases of ``--duration`` seconds each, in one run: ``idle`` (the service alone) and
``training`` (a ``prelabel worker`` subprocess training a full run on the same machine,
with the worker's default niceness and thread bounds). Afterwards, with the service
stopped, every acknowledged correction is looked up in the database and its mask
compared with the one sent: ``lost`` counts those missing or different.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import yaml
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from bench.environment import stamp, write_result
from prelabel.accounts import ADMIN_TOKEN_FILE
from prelabel.codecs import decode_index_png
from prelabel.corrections import load_correction_mask, to_correction
from prelabel.settings import StorageSettings
from prelabel.tables import CorrectionRow
from prelabel.workspace import open_workspace
from service.loop_lag import loop_lag_sampled
from service.server_timing import METRIC as SERVER_TIMING_METRIC
from service.telemetry import EVENT_LOOP_LAG_NAME
from training.config import load_training_config

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "out" / "load"
PROJECT = "load-demo"
ENDPOINTS = ("queue", "draft", "correction", "metrics")
WINDOW_S = 30.0
"""Latency is also reported per window of this length (by request start)."""
SLOWEST_SHOWN = 5
"""Requests per endpoint and phase whose round trip is broken down in the report."""
LOOP_LAG_PROBE_S = 0.05
"""The client's event-loop lag is how late a sleep of this length wakes."""
REQUEST_TIMEOUT_S = 60.0
START_TIMEOUT_S = 300.0
TARGET_DRAFT_P99_MS = 250.0
TEAM = 10
UPLOAD_BATCH = 100
MAX_UPLOADED = 1000
"""Copies uploaded at most: uploading and drafting them is most of the setup time. When they
run out, annotators revise their own corrections (no one else's: see ``annotate``)."""
"""Annotators per team lead (a manager, who reads the project metrics)."""


class LoadError(RuntimeError):
    """The benchmark's setup failed (a subprocess or a setup request)."""


@dataclass(frozen=True)
class CpuTimes:
    """The machine's cumulative CPU time in clock ticks (``/proc/stat``, all cores)."""

    busy: int
    """user, nice, system, irq and softirq."""
    idle: int
    """idle and iowait."""
    steal: int
    """Time the hypervisor gave this machine's virtual cores to someone else."""

    @staticmethod
    def read() -> CpuTimes | None:
        """The counters now (None where ``/proc/stat`` is not there)."""
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:9]]
        except (OSError, ValueError):
            return None
        if len(fields) < 8:
            return None
        user, nice, system, idle, iowait, irq, softirq, steal = fields
        return CpuTimes(user + nice + system + irq + softirq, idle + iowait, steal)


def cpu_shares(first: CpuTimes, last: CpuTimes) -> dict[str, float]:
    """Busy and stolen percentages of all cores' time between two samples."""
    busy, idle, steal = (last.busy - first.busy, last.idle - first.idle, last.steal - first.steal)
    total = max(busy + idle + steal, 1)
    return {"busy_pct": round(100 * busy / total, 1), "steal_pct": round(100 * steal / total, 1)}


@dataclass
class Tally:
    """What one phase measured: latencies per endpoint, errors, acknowledged corrections."""

    seconds: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    started_s: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    """When each timed request started, in seconds since the phase began (same order)."""
    service_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    """Each timed request's time in the service, from its ``Server-Timing`` header (same
    order; NaN where the header is missing): the rest of the round trip is the way there
    and back, the service's event loop and this client's own scheduling."""
    round_trips: dict[str, list[RoundTrip]] = field(default_factory=lambda: defaultdict(list))
    """Where each timed request's round trip went (same order)."""
    began: float = field(default_factory=time.perf_counter)
    loop_lag: list[tuple[float, float]] = field(default_factory=list)
    """This client's own event-loop lag: (seconds since the phase began, milliseconds a
    short sleep overslept). High lag means round trips measured late, not a slow service."""
    service_loop_lag: list[tuple[float, dict[float, float]]] = field(default_factory=list)
    """The service's ``prelabel_event_loop_lag_seconds`` buckets (upper bound in seconds ->
    cumulative count, all processes), scraped at the phase's start, each window and its end."""
    cpu: list[tuple[float, CpuTimes]] = field(default_factory=list)
    """The machine's CPU counters, sampled each second of the phase (``/proc/stat``)."""
    connections: dict[object, set[str]] = field(default_factory=lambda: defaultdict(set))
    """Each TCP connection's stream -> the annotators whose requests it carried."""
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    error_samples: list[str] = field(default_factory=list)
    acknowledged: dict[str, str] = field(default_factory=dict)
    """correction id -> sha256 of the mask sent."""

    def carried(self, stream: object, annotator: str) -> None:
        """Note that ``stream`` (a TCP connection) carried a request of ``annotator``."""
        if stream is not None:
            self.connections[stream].add(annotator)

    def fail(self, endpoint: str, message: str) -> None:
        self.errors[endpoint] += 1
        if len(self.error_samples) < 20:
            self.error_samples.append(f"{endpoint}: {message[:300]}")


@dataclass(frozen=True)
class Annotator:
    """A simulated annotator: its user, its token, and its team lead's token (metrics)."""

    name: str
    token: str
    lead_token: str


@dataclass(frozen=True)
class Options:
    annotators: int
    duration_s: float
    think_s: float
    """Mean pause between two steps (queue → draft, correction → metrics, ...)."""
    edit_s: float
    """Mean time an annotator spends correcting a draft (draft → correction)."""
    quick: bool
    out: Path
    service_processes: int = 1
    """``prelabel serve --processes``: service processes answering on the one port."""
    seed: int = 0

    @property
    def expected_corrections(self) -> int:
        """Corrections both phases will send, about: one per annotator and loop."""
        loop_s = 3 * self.think_s + self.edit_s + 0.2
        return int(2 * self.annotators * self.duration_s / loop_s)


# --- subprocesses ---------------------------------------------------------------------------


def _cli(args: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("ab") as stream:
        done = subprocess.run(
            [sys.executable, "-m", "prelabel.cli", *args],
            env=env,
            stdout=stream,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise LoadError(f"prelabel {' '.join(args)} exited {done.returncode}:\n{tail}")


@contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as stream:
        process = subprocess.Popen(
            [sys.executable, "-m", "prelabel.cli", *args],
            env=env,
            stdout=stream,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/health/ready", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise LoadError(f"the service did not start: {log.read_text(errors='replace')[-2000:]}")


def write_configs(home: Path, options: Options) -> tuple[Path, Path]:
    """The setup config (a quick first model) and the phase config (a run that outlasts the
    load phase: far more steps than it can do, stopped when the phase ends)."""
    base = load_training_config(REPO / "configs" / "train.yaml")
    steps = 10 if options.quick else 150
    setup = base.model_copy(
        update={"optim": base.optim.model_copy(update={"min_steps_full": steps, "epochs_full": 0})}
    )
    long_run = base.model_copy(
        update={
            "optim": base.optim.model_copy(
                update={
                    "min_steps_full": 1_000_000,
                    "max_minutes": options.duration_s / 60 + 30,
                }
            )
        }
    )
    paths = []
    for name, config in (("setup.yaml", setup), ("phase.yaml", long_run)):
        path = home / name
        path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
        paths.append(path)
    return paths[0], paths[1]


def prepare(home: Path, options: Options, env: dict[str, str]) -> tuple[Path, Path]:
    """Demo project and its first model, through the CLI; the setup and phase configs."""
    setup_config, phase_config = write_configs(home, options)
    log = home / "setup.log"
    _cli(["demo", "--project", PROJECT], env, log)
    _cli(["train", "--project", PROJECT, "--config", str(setup_config)], env, log)
    return setup_config, phase_config


def add_images(admin: httpx.Client, home: Path, wanted: int) -> int:
    """Upload copies of the demo's slices until the project has about ``wanted`` unlabelled
    images, so that annotators correct distinct images as in a real shop (each image
    once), not the same few again and again. Returns how many were uploaded."""
    unlabelled = len(
        _check(admin.get(f"/projects/{PROJECT}/queue", params={"limit": 10_000})).json()
    )
    slices = sorted((home / "datasets" / "mni-tissue" / "images").glob("*.png"))
    missing = min(MAX_UPLOADED, max(0, wanted - unlabelled))
    for start in range(0, missing, UPLOAD_BATCH):
        files = [
            ("files", (f"copy{index:05d}-{slices[index % len(slices)].name}",
                       slices[index % len(slices)].read_bytes(), "image/png"))
            for index in range(start, min(missing, start + UPLOAD_BATCH))
        ]  # fmt: skip
        _check(admin.post(f"/projects/{PROJECT}/images", files=files))
    return missing


# --- setup over HTTP -------------------------------------------------------------------------


def _check(response: httpx.Response) -> httpx.Response:
    if response.is_error:
        raise LoadError(
            f"{response.request.method} {response.request.url} -> "
            f"{response.status_code}: {response.text[:500]}"
        )
    return response


def _user(admin: httpx.Client, name: str, role: str) -> str:
    token: str = _check(admin.post("/users", json={"name": name})).json()["token"]
    _check(admin.put(f"/projects/{PROJECT}/members/{name}", json={"role": role}))
    return token


def enrol(admin: httpx.Client, count: int, phase: str) -> list[Annotator]:
    """``count`` users with the annotator role, and a manager per ``TEAM`` of them (the
    annotator role may not read project metrics: its lead looks at its numbers)."""
    leads = [
        _user(admin, f"{phase}-lead-{team:02d}", "manager")
        for team in range((count + TEAM - 1) // TEAM)
    ]
    return [
        Annotator(name, _user(admin, name, "annotator"), leads[index // TEAM])
        for index, name in enumerate(f"{phase}-annotator-{i:03d}" for i in range(count))
    ]


def drafted_images(admin: httpx.Client) -> list[str]:
    """Images of the project whose serving-version draft is precomputed."""
    queue = _check(admin.get(f"/projects/{PROJECT}/queue", params={"limit": 10_000})).json()
    ids = [entry["id"] for entry in queue if entry["draft_id"] is not None]
    if not ids:
        raise LoadError("no precomputed drafts: the setup's drafts job did not run")
    return ids


# --- the simulated annotators ----------------------------------------------------------------


def _edit(draft_png: bytes, rng: random.Random) -> tuple[bytes, str]:
    """The draft with one box repainted with one of its classes: the annotator's correction."""
    mask = decode_index_png(draft_png, max_pixels=2**26)
    height, width = mask.shape
    top, left = rng.randrange(height), rng.randrange(width)
    classes = [int(c) for c in np.unique(mask)]
    mask[top : top + max(1, height // 8), left : left + max(1, width // 8)] = rng.choice(classes)
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue(), _digest(mask)


def _digest(mask: npt.NDArray[np.integer]) -> str:
    return hashlib.sha256(
        np.ascontiguousarray(mask, dtype=np.int64).tobytes() + str(mask.shape).encode()
    ).hexdigest()


@dataclass(frozen=True)
class RoundTrip:
    """Where one request's round trip went, in milliseconds, from httpcore's trace events.

    ``before_send``: from the call to the request's first bytes leaving (the client's own
    work and its wait for a connection, ``connect`` included: opening a new one, 0 if reused);
    ``waiting``: from the request sent to the answer's headers read (the service, and the way
    there and back); ``after``: from the headers to the call returning (the body, the client).
    """

    started_s: float
    total: float
    in_service: float
    before_send: float
    connect: float
    waiting: float
    after: float


def round_trip(
    marks: dict[str, float], started: float, ended: float, began: float, in_service: float
) -> RoundTrip:
    """A request's :class:`RoundTrip` from the first time of each trace event (``marks``)."""

    def at(event: str, default: float) -> float:
        return marks.get(event, default)

    sent = at("http11.send_request_headers.started", started)
    body_sent = at("http11.send_request_body.complete", sent)
    headers = at("http11.receive_response_headers.complete", body_sent)
    connect = at("connection.connect_tcp.complete", 0.0) - at("connection.connect_tcp.started", 0.0)
    return RoundTrip(
        started_s=round(started - began, 2),
        total=round((ended - started) * 1000, 1),
        in_service=in_service,
        before_send=round((sent - started) * 1000, 1),
        connect=round(connect * 1000, 1),
        waiting=round((headers - body_sent) * 1000, 1),
        after=round((ended - headers) * 1000, 1),
    )


async def _timed(
    tally: Tally,
    endpoint: str,
    client: httpx.AsyncClient,
    method: str,
    url: str,
    by: str,
    **kw: Any,
) -> httpx.Response | None:
    """Send one request for annotator ``by`` and record its times, or its failure."""
    marks: dict[str, float] = {}

    async def trace(event: str, _info: dict[str, Any]) -> None:
        marks.setdefault(event, time.perf_counter())

    started = time.perf_counter()
    try:
        response = await client.request(method, url, extensions={"trace": trace}, **kw)
    except httpx.HTTPError as exc:
        tally.fail(endpoint, f"{type(exc).__name__}: {exc}")
        return None
    ended = time.perf_counter()
    tally.carried(response.extensions.get("network_stream"), by)
    if response.is_error:
        tally.fail(endpoint, f"{response.status_code} {response.text}")
        return None
    in_service = service_milliseconds(response.headers.get("server-timing"))
    tally.seconds[endpoint].append(ended - started)
    tally.started_s[endpoint].append(started - tally.began)
    tally.service_ms[endpoint].append(in_service)
    tally.round_trips[endpoint].append(round_trip(marks, started, ended, tally.began, in_service))
    return response


def service_milliseconds(header: str | None) -> float:
    """The ``app`` duration of a ``Server-Timing`` header's value (NaN if it has none)."""
    for entry in (header or "").split(","):
        name, *params = (part.strip() for part in entry.split(";"))
        if name != SERVER_TIMING_METRIC:
            continue
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "dur":
                try:
                    return float(value)
                except ValueError:
                    return float("nan")
    return float("nan")


async def annotate(
    client: httpx.AsyncClient,
    who: Annotator,
    pool: list[str],
    deadline: float,
    think_s: float,
    edit_s: float,
    tally: Tally,
    seed: int,
) -> None:
    """One annotator's loop until ``deadline``: queue, draft, correction, own metrics."""
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {who.token}"}
    base = f"/projects/{PROJECT}"
    mine: list[str] = []

    async def think(mean_s: float = think_s) -> None:
        await asyncio.sleep(mean_s * rng.uniform(0.5, 1.5))

    async def send(endpoint: str, method: str, url: str, **kw: Any) -> httpx.Response | None:
        return await _timed(tally, endpoint, client, method, url, who.name, **kw)

    await asyncio.sleep(rng.uniform(0, think_s))  # annotators do not start in lockstep
    while time.monotonic() < deadline:
        queue = await send(
            "queue", "GET", f"{base}/queue", headers=headers,
            params={"limit": 10, "strategy": "random", "seed": rng.randrange(1 << 30)},
        )  # fmt: skip
        entries = [e["id"] for e in queue.json() if e["draft_id"]] if queue else []
        # An empty queue (every image labelled): revise one of one's own corrections.
        image = rng.choice(entries or mine or pool)
        await think()
        draft = await send("draft", "GET", f"{base}/images/{image}/draft", headers=headers)
        if draft is None:
            continue
        mask_png, digest = _edit(draft.content, rng)
        await think(edit_s)
        stored = await send(
            "correction", "PUT", f"{base}/images/{image}/correction",
            headers=headers, files={"mask": ("mask.png", mask_png, "image/png")},
            data={"draft_id": draft.headers["X-Draft-Id"], "lead_time_s": str(think_s)},
        )  # fmt: skip
        if stored is not None:
            tally.acknowledged[stored.json()["id"]] = digest
            mine.append(image)
        await think()
        await send(
            "metrics", "GET", f"{base}/metrics",
            headers={"Authorization": f"Bearer {who.lead_token}"},
            params={"annotator": who.name},
        )  # fmt: skip
        await think()


async def _sample_cpu(tally: Tally, deadline: float) -> None:
    """Sample the machine's CPU counters each second until ``deadline``."""
    while True:
        sample = CpuTimes.read()
        if sample is not None:
            tally.cpu.append((time.perf_counter() - tally.began, sample))
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(1.0)


def loop_lag_buckets(exposition: str) -> dict[float, float]:
    """The event-loop lag histogram's cumulative buckets in a Prometheus exposition."""
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == f"{EVENT_LOOP_LAG_NAME}_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return buckets


async def _scrape_service_loop_lag(
    client: httpx.AsyncClient, admin_token: str, tally: Tally, deadline: float
) -> None:
    """Scrape the service's loop-lag histogram now, every ``WINDOW_S`` and after ``deadline``."""
    while True:
        answer = await client.get("/metrics", headers={"Authorization": f"Bearer {admin_token}"})
        if answer.is_success:
            at = time.perf_counter() - tally.began
            tally.service_loop_lag.append((at, loop_lag_buckets(answer.text)))
        if time.monotonic() >= deadline:
            return
        await asyncio.sleep(min(WINDOW_S, max(0.0, deadline - time.monotonic())))


def loop_lag_between(
    first: dict[float, float], last: dict[float, float]
) -> dict[str, float | int | None]:
    """Wake-ups of the service's event loops between two scrapes: how many, how many over
    100 and 250 ms late, and the upper bound of the histogram bucket holding the 99th
    percentile (None without wake-ups or beyond the largest bucket)."""
    delta = {bound: last.get(bound, 0.0) - first.get(bound, 0.0) for bound in last}
    total = delta.get(float("inf"), 0.0)
    p99 = next((bound for bound in sorted(delta) if total and delta[bound] >= 0.99 * total), None)
    if p99 == float("inf"):  # beyond the largest bucket: no bound to give
        p99 = None
    return {
        "wakeups": int(total),
        "over_100ms": int(total - delta.get(0.1, 0.0)),
        "over_250ms": int(total - delta.get(0.25, 0.0)),
        "p99_ms_at_most": None if p99 is None else round(p99 * 1000, 1),
    }


async def _drive(
    url: str, annotators: list[Annotator], pool: list[str], options: Options, admin_token: str
) -> Tally:
    """Run every annotator and the samplers until the phase's deadline.

    Each annotator has its own HTTP client and connection, as each person has a browser:
    one shared client would make 100 simultaneous requests queue inside its pool before
    they are sent, which measures the load generator, not the service."""
    tally = Tally()
    async with contextlib.AsyncExitStack() as clients:

        async def client() -> httpx.AsyncClient:
            return await clients.enter_async_context(
                httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S)
            )

        scraper = await client()
        browsers = [await client() for _ in annotators]
        tally.began = time.perf_counter()
        deadline = time.monotonic() + options.duration_s

        def client_lag(late_s: float) -> None:
            tally.loop_lag.append((time.perf_counter() - tally.began, late_s * 1000))

        async with loop_lag_sampled(LOOP_LAG_PROBE_S, client_lag):
            await asyncio.gather(
                _sample_cpu(tally, deadline),
                _scrape_service_loop_lag(scraper, admin_token, tally, deadline),
                *(
                    annotate(
                        browser,
                        who,
                        pool,
                        deadline,
                        options.think_s,
                        options.edit_s,
                        tally,
                        options.seed + i,
                    )
                    for i, (who, browser) in enumerate(zip(annotators, browsers, strict=True))
                ),
            )
    return tally


def summarise(tally: Tally, wall_s: float) -> dict[str, Any]:
    """Per endpoint: requests, throughput, p50/p95/p99/max latency, errors."""
    endpoints = {}
    for endpoint in ENDPOINTS:
        times = np.asarray(tally.seconds.get(endpoint, []), dtype=float) * 1e3
        stats: dict[str, Any] = {
            "requests": int(times.size),
            "per_s": round(times.size / wall_s, 2),
            "errors": tally.errors.get(endpoint, 0),
        }
        for name, q in (("p50_ms", 50), ("p95_ms", 95), ("p99_ms", 99)):
            stats[name] = round(float(np.percentile(times, q)), 1) if times.size else None
        stats["max_ms"] = round(float(times.max()), 1) if times.size else None
        stats["in_service"] = _percentiles(tally.service_ms.get(endpoint, []))
        stats["windows"] = _windows(tally, endpoint)
        slowest = sorted(tally.round_trips.get(endpoint, []), key=lambda trip: -trip.total)
        stats["slowest"] = [asdict(trip) for trip in slowest[:SLOWEST_SHOWN]]
        endpoints[endpoint] = stats
    return {
        "wall_s": round(wall_s, 1),
        "requests_per_s": round(sum(len(v) for v in tally.seconds.values()) / wall_s, 2),
        "errors": sum(tally.errors.values()),
        "error_samples": tally.error_samples,
        "acknowledged_corrections": len(tally.acknowledged),
        "machine_cpu": _cpu_between(tally, 0.0, float("inf")),
        "client_loop_lag": _percentiles([lag for _, lag in tally.loop_lag]),
        "client_connections": {
            "opened": len(tally.connections),
            "shared_by_annotators": sum(len(users) > 1 for users in tally.connections.values()),
        },
        "service_loop_lag": _service_loop_lag_windows(tally),
        "endpoints": endpoints,
    }


def _service_loop_lag_windows(tally: Tally) -> dict[str, Any]:
    """The service's event-loop lag over the phase and between consecutive scrapes."""
    scrapes = tally.service_loop_lag
    if len(scrapes) < 2:
        return {}
    return {
        **loop_lag_between(scrapes[0][1], scrapes[-1][1]),
        "windows": [
            {"from_s": round(start), **loop_lag_between(first, last)}
            for (start, first), (_, last) in pairwise(scrapes)
        ],
    }


def _percentiles(values_ms: list[float]) -> dict[str, float | None]:
    """p50/p99/max of the values that are numbers (the requests that said their time)."""
    values = np.asarray(values_ms, dtype=float)
    values = values[~np.isnan(values)]
    if not values.size:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 1),
        "p99_ms": round(float(np.percentile(values, 99)), 1),
        "max_ms": round(float(values.max()), 1),
    }


def _cpu_between(tally: Tally, start: float, end: float) -> dict[str, float]:
    """The machine's busy and stolen CPU shares between the first and the last sample taken
    in ``[start, end]`` of the phase (empty with fewer than two)."""
    inside = [sample for at, sample in tally.cpu if start <= at <= end]
    return cpu_shares(inside[0], inside[-1]) if len(inside) >= 2 else {}


def _windows(tally: Tally, endpoint: str) -> list[dict[str, Any]]:
    """The endpoint's requests per ``WINDOW_S`` of the phase (by start): count, p50, p99,
    p99 in the service, the client's loop-lag p99 and the machine's CPU shares."""
    times = np.asarray(tally.seconds.get(endpoint, []), dtype=float) * 1e3
    starts = np.asarray(tally.started_s.get(endpoint, []), dtype=float)
    in_service = np.asarray(tally.service_ms.get(endpoint, []), dtype=float)
    windows = []
    for start in np.arange(0.0, float(starts.max()) + WINDOW_S if starts.size else 0.0, WINDOW_S):
        inside = times[(starts >= start) & (starts < start + WINDOW_S)]
        if inside.size:
            windows.append(
                {
                    "from_s": int(start),
                    "requests": int(inside.size),
                    "p50_ms": round(float(np.percentile(inside, 50)), 1),
                    "p99_ms": round(float(np.percentile(inside, 99)), 1),
                    "in_service_p99_ms": _percentiles(
                        list(in_service[(starts >= start) & (starts < start + WINDOW_S)])
                    )["p99_ms"],
                    "client_loop_lag_p99_ms": _percentiles(
                        [lag for at, lag in tally.loop_lag if start <= at < start + WINDOW_S]
                    )["p99_ms"],
                    **_cpu_between(tally, float(start), float(start) + WINDOW_S),
                }
            )
    return windows


# --- phases -----------------------------------------------------------------------------------


def _training_progress(admin: httpx.Client) -> dict[str, Any] | None:
    runs = _check(admin.get(f"/projects/{PROJECT}/training-runs")).json()
    running = [run for run in runs if run["status"] == "running"]
    return running[0] if running else None


@contextmanager
def training_in_progress(
    admin: httpx.Client, env: dict[str, str], config: Path, home: Path
) -> Iterator[dict[str, Any]]:
    """A ``prelabel worker`` subprocess training a full run; yields a dict filled on exit
    with the run's progress (steps done during the phase) and the worker's settings."""
    queued = _check(admin.post(f"/projects/{PROJECT}/training-runs", json={"kind": "full"})).json()
    log = home / "worker.log"
    facts: dict[str, Any] = {"run_id": queued["id"]}
    with _process(["worker", "--config", str(config)], env, log) as worker:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            run = _training_progress(admin)
            if run and (run.get("progress") or {}).get("stage") == "training":
                break
            if worker.poll() is not None or time.monotonic() > deadline:
                raise LoadError(f"the worker did not start training: {log.read_text()[-2000:]}")
            time.sleep(1)
        facts["worker_pid"] = worker.pid
        facts["worker_niceness"] = os.getpriority(os.PRIO_PROCESS, worker.pid)
        facts["step_at_start"] = run["progress"].get("step")
        yield facts
        run = _training_progress(admin)
        facts["still_training_at_end"] = run is not None and worker.poll() is None
        facts["step_at_end"] = (run or {}).get("progress", {}).get("step")
    facts["worker_log"] = [
        line for line in log.read_text(errors="replace").splitlines() if "niceness" in line
    ][-1:]


def run_phase(
    url: str, admin: httpx.Client, options: Options, phase: str, pool: list[str]
) -> tuple[dict[str, Any], Tally]:
    annotators = enrol(admin, options.annotators, phase)
    started = time.monotonic()
    token = str(admin.headers["Authorization"]).removeprefix("Bearer ")
    tally = asyncio.run(_drive(url, annotators, pool, options, token))
    return summarise(tally, time.monotonic() - started), tally


def count_lost(home: Path, acknowledged: dict[str, str]) -> dict[str, Any]:
    """Look up every acknowledged correction (service stopped): missing or different masks."""
    workspace = open_workspace(StorageSettings(home=home))
    missing, different = 0, 0
    try:
        with workspace.sessions() as session:
            for correction_id, digest in acknowledged.items():
                row = session.get(CorrectionRow, correction_id)
                if row is None:
                    missing += 1
                    continue
                mask = load_correction_mask(workspace.blobs, to_correction(row))
                different += _digest(mask) != digest
    finally:
        workspace.engine.dispose()
    return {
        "checked": len(acknowledged),
        "missing": missing,
        "different": different,
        "lost": missing + different,
    }


def run(options: Options, home: Path) -> dict[str, Any]:
    """Setup, then the ``idle`` and ``training`` phases against one service (of
    ``options.service_processes`` processes)."""
    env = {**os.environ, "PRELABEL_HOME": str(home)}
    for name in ("PRELABEL_DATABASE_URL", "PRELABEL_BLOB_URL", "PRELABEL_BLOB_DIR"):
        env.pop(name, None)
    started = time.monotonic()
    setup_config, phase_config = prepare(home, options, env)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = home / "service.log"
    phases: dict[str, Any] = {}
    acknowledged: dict[str, str] = {}
    serve = ["serve", "--port", str(port), "--processes", str(options.service_processes)]
    with _process(serve, env, log) as service:
        _wait_ready(url, service, log)
        token = (home / ADMIN_TOKEN_FILE).read_text().strip()
        with httpx.Client(
            base_url=url, timeout=REQUEST_TIMEOUT_S, headers={"Authorization": f"Bearer {token}"}
        ) as admin:
            _check(admin.put(f"/projects/{PROJECT}/training-policy", json={"enabled": False}))
            uploaded = add_images(admin, home, int(options.expected_corrections * 1.2))
            _cli(["worker", "--once", "--config", str(setup_config)], env, home / "setup.log")
            pool = drafted_images(admin)
            setup_s = time.monotonic() - started
            phases["idle"], tally = run_phase(url, admin, options, "idle", pool)
            acknowledged |= tally.acknowledged
            with training_in_progress(admin, env, phase_config, home) as training:
                phases["training"], tally = run_phase(url, admin, options, "training", pool)
            phases["training"]["worker"] = training
            acknowledged |= tally.acknowledged
    return {
        "setup_s": round(setup_s, 1),
        "precomputed_draft_images": len(pool),
        "uploaded_copies": uploaded,
        "phases": phases,
        "durability": count_lost(home, acknowledged),
    }


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, checked on this run's numbers."""
    phases = result["phases"]
    draft_p99 = phases["training"]["endpoints"]["draft"]["p99_ms"]
    return {
        "zero_errors": all(phase["errors"] == 0 for phase in phases.values()),
        "zero_lost": result["durability"]["lost"] == 0,
        "draft_p99_while_training_ms": draft_p99,
        "draft_p99_target_ms": TARGET_DRAFT_P99_MS,
        "draft_p99_met": draft_p99 is not None and draft_p99 <= TARGET_DRAFT_P99_MS,
    }


def markdown(report: dict[str, Any]) -> str:
    """The README table: both phases side by side, per endpoint."""
    phases = report["results"]["phases"]
    lines = [
        f"{report['annotators']} annotators, {report['duration_s']:.0f} s per phase; pauses "
        f"(x0.5-1.5): {report['edit_s']} s to correct a draft, {report['think_s']} s between "
        f"the other steps; {report.get('service_processes', 1)} service process(es)",
        "",
        "| endpoint | req/s idle | req/s training | p50 ms idle / training "
        "| p95 ms idle / training | p99 ms idle / training | errors idle / training |",
        "|---|---|---|---|---|---|---|",
    ]
    for endpoint in ENDPOINTS:
        idle = phases["idle"]["endpoints"][endpoint]
        busy = phases["training"]["endpoints"][endpoint]
        lines.append(
            f"| {endpoint} | {idle['per_s']} | {busy['per_s']} "
            f"| {idle['p50_ms']} / {busy['p50_ms']} | {idle['p95_ms']} / {busy['p95_ms']} "
            f"| {idle['p99_ms']} / {busy['p99_ms']} | {idle['errors']} / {busy['errors']} |"
        )
    durability = report["results"]["durability"]
    lines += [
        "",
        f"Acknowledged corrections checked afterwards: {durability['checked']}, "
        f"lost: {durability['lost']}.",
        "",
    ]
    for name, phase in phases.items():
        cpu = phase.get("machine_cpu") or {}
        draft_p99s = [w["p99_ms"] for w in phase["endpoints"]["draft"].get("windows", [])]
        loop = phase.get("service_loop_lag") or {}
        connections = phase.get("client_connections") or {}
        lines.append(
            f"- {name}: machine CPU busy {cpu.get('busy_pct', '?')}%, stolen "
            f"{cpu.get('steal_pct', '?')}%; draft p99 per {WINDOW_S:.0f} s window "
            + (f"{min(draft_p99s)}-{max(draft_p99s)} ms" if draft_p99s else "n/a")
            + f"; draft p99 in the service (Server-Timing) "
            f"{phase['endpoints']['draft']['in_service']['p99_ms']} ms; service event loops: "
            f"p99 lag at most {loop.get('p99_ms_at_most')} ms, "
            f"{loop.get('over_250ms')} of {loop.get('wakeups')} wake-ups over 250 ms late; "
            f"client: {connections.get('opened', '?')} connections opened, "
            f"{connections.get('shared_by_annotators', '?')} carrying two annotators' requests"
            + _worker_line(phase.get("worker"))
        )
    return "\n".join(lines) + "\n"


def _worker_line(worker: dict[str, Any] | None) -> str:
    """The training worker's part of a phase's line: the steps it trained in the phase."""
    if not worker:
        return ""
    steps = (worker.get("step_at_end") or 0) - (worker.get("step_at_start") or 0)
    return f"; worker: {steps} training steps during the phase"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; exit 1 on any error or lost correction."""
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    parser.add_argument("--annotators", type=int, default=100)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds per phase")
    parser.add_argument("--think-s", type=float, default=1.0, help="mean pause between steps")
    parser.add_argument("--edit-s", type=float, default=10.0, help="mean time to correct a draft")
    parser.add_argument("--quick", action="store_true", help="5 annotators, 10 s per phase")
    parser.add_argument(
        "--service-processes", type=int, default=1, help="prelabel serve --processes"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the results")
    parser.add_argument(
        "--home", type=Path, default=None, help="PRELABEL_HOME to use and keep (default: temporary)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    options = Options(
        annotators=5 if args.quick else args.annotators,
        duration_s=10.0 if args.quick else args.duration,
        think_s=0.2 if args.quick else args.think_s,
        edit_s=1.0 if args.quick else args.edit_s,
        quick=args.quick,
        out=args.out,
        service_processes=args.service_processes,
    )
    with tempfile.TemporaryDirectory(prefix="prelabel-load-") as scratch:
        home = args.home or Path(scratch)
        home.mkdir(parents=True, exist_ok=True)
        try:
            result = run(options, home)
        finally:  # the service's and the worker's logs, for what went wrong
            (options.out / "logs").mkdir(parents=True, exist_ok=True)
            for log in home.glob("*.log"):
                shutil.copyfile(log, options.out / "logs" / log.name)
    report = {
        "benchmark": "load",
        **stamp(),
        "quick": options.quick,
        "annotators": options.annotators,
        "duration_s": options.duration_s,
        "think_s": options.think_s,
        "edit_s": options.edit_s,
        "service_processes": options.service_processes,
        "ran_alone": "under the shared CPU lock (flock /tmp/prelabel-cpu.lock): no other "
        "benchmark or test on the machine",
        "results": result,
    }
    report["targets"] = targets(result)
    write_result(report, options.out / "results.json")
    (options.out / "results.md").write_text(markdown(report))
    ok = report["targets"]["zero_errors"] and report["targets"]["zero_lost"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
