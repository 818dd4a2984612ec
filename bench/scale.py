"""Scale-out on PostgreSQL: 1 vs 2 service replicas, and job-claim latency under 4 workers.

Usage::

    python -m bench.scale [--quick] [--server-url postgresql+psycopg://...] [--out F]
    prelabel bench scale --quick|--full

On a fresh database of ``--server-url`` (default: the local test server that
``.ci/postgres`` starts; the role needs CREATEDB), in one run:

* ``replicas``: ``prelabel serve`` processes (1, then 2) on that database and one blob
  folder; client threads send corrections (``PUT …/correction``) and draft fetches
  (``GET …/draft``, no model: the fetch path is the database lookup and the blob read)
  round-robin over the replicas; throughput per second and p50/p95 latency;
* ``claims``: jobs of many projects drained by 4 threads, each with its own engine,
  calling ``claim_next_job`` (``FOR UPDATE SKIP LOCKED``); p50/p95 claim latency, and
  checks that every job was claimed exactly once.

``ratio_2_to_1`` compares the two replica counts measured in the same run. On a 2-core
machine the replicas, the clients and PostgreSQL share the same cores: the numbers show
correctness under concurrency more than speed.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sqlalchemy import URL, create_engine, make_url, text
from sqlalchemy.pool import NullPool

from bench.environment import stamp, write_result
from prelabel.accounts import ADMIN_TOKEN_FILE
from prelabel.database import make_engine, make_session_factory, migrate, transaction
from prelabel.jobs import JobStatus, claim_next_job, finish_job
from prelabel.projects import ProjectSpec, create_project
from prelabel.tables import JobRow

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "out" / "scale.json"
CLAIM_WORKERS = 4
CLASSES = [
    {"id": 0, "name": "background", "color": "#000000"},
    {"id": 1, "name": "disk", "color": "#ff0000"},
]


def _percentiles(seconds: list[float], wall_s: float) -> dict[str, float]:
    times = np.asarray(seconds)
    return {
        "requests": len(seconds),
        "per_s": round(len(seconds) / wall_s, 2),
        "p50_ms": round(float(np.percentile(times, 50)) * 1e3, 2),
        "p95_ms": round(float(np.percentile(times, 95)) * 1e3, 2),
    }


@contextmanager
def fresh_database(server: URL) -> Iterator[str]:
    """A new database on ``server`` (dropped afterwards): its URL with the password."""
    name = f"prelabel_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"replica {url} did not become ready")


@contextmanager
def replicas(count: int, env: dict[str, str]) -> Iterator[list[str]]:
    """``count`` ``prelabel serve`` processes on free ports; their base URLs."""
    processes: list[subprocess.Popen[bytes]] = []
    urls = []
    try:
        for _ in range(count):
            port = _free_port()
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "prelabel.cli", "serve", "--port", str(port)],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            urls.append(f"http://127.0.0.1:{port}")
            _wait_ready(urls[-1], processes[-1])
        yield urls
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _png(seed: int, size_px: int) -> bytes:
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    mask = (rng.random((size_px, size_px)) > 0.7).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="PNG")
    return buffer.getvalue()


def _hammer(calls: list[Callable[[], httpx.Response]], clients: int) -> dict[str, float]:
    def timed(call: Callable[[], httpx.Response]) -> float:
        start = time.perf_counter()
        response = call()
        response.raise_for_status()
        return time.perf_counter() - start

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        seconds = list(pool.map(timed, calls))
    return _percentiles(seconds, time.perf_counter() - started)


def measure_replicas(
    count: int, env: dict[str, str], *, requests: int, clients: int
) -> dict[str, Any]:
    """Corrections/s and draft fetches/s through ``count`` replicas, round-robin."""
    with replicas(count, env) as urls:
        token = (Path(env["PRELABEL_HOME"]) / ADMIN_TOKEN_FILE).read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        http = [httpx.Client(base_url=url, timeout=60, headers=auth) for url in urls]
        name = f"bench-{count}-{uuid.uuid4().hex[:6]}"
        project = http[0].post("/projects", json={"name": name, "classes": CLASSES}).json()["id"]
        http[0].put(f"/projects/{project}/training-policy", json={"enabled": False})
        files = [("files", (f"i{i}.png", _png(i, 64), "image/png")) for i in range(16)]
        ids = [
            i["id"]
            for i in http[0].post(f"/projects/{project}/images", files=files).json()["images"]
        ]
        mask = _png(999, 64)

        def correction(k: int) -> Callable[[], httpx.Response]:
            return lambda: http[k % count].put(
                f"/projects/{project}/images/{ids[k % len(ids)]}/correction",
                files={"mask": ("m.png", mask, "image/png")},
                data={"annotator": f"bench{k % clients}"},
            )

        def fetch(k: int) -> Callable[[], httpx.Response]:
            return lambda: http[k % count].get(
                f"/projects/{project}/images/{ids[k % len(ids)]}/draft"
            )

        result = {
            "corrections": _hammer([correction(k) for k in range(requests)], clients),
            "draft_fetches": _hammer([fetch(k) for k in range(requests)], clients),
        }
        for client in http:
            client.close()
    return result


def measure_claims(database_url: str, *, jobs: int) -> dict[str, Any]:
    """Claim latency with 4 workers (threads, one engine each) draining ``jobs`` jobs."""
    setup = make_engine(database_url)
    factory = make_session_factory(setup)
    with transaction(factory) as session:
        for index in range(jobs):
            spec = ProjectSpec.model_validate({"name": f"claims-{index}", "classes": CLASSES})
            session.add(JobRow(project_id=create_project(session, spec, actor="bench").id))
            session.flush()
    setup.dispose()
    latencies: list[float] = []
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        engine = make_engine(database_url)
        sessions = make_session_factory(engine)
        while True:
            start = time.perf_counter()
            job = claim_next_job(sessions, name)
            elapsed = time.perf_counter() - start
            if job is None:
                break
            with lock:
                latencies.append(elapsed)
                claimed.append(job.id)
            with transaction(sessions) as session:
                finish_job(session, job.id, status=JobStatus.SUCCEEDED)
        engine.dispose()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(CLAIM_WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = _percentiles(latencies, time.perf_counter() - started)
    return {
        "workers": CLAIM_WORKERS,
        "jobs": jobs,
        "claimed_exactly_once": len(claimed) == len(set(claimed)) == jobs,
        "claims": result,
    }


def _default_server_url() -> str:
    found = subprocess.run(
        ["bash", str(REPO / ".ci" / "postgres")], check=True, capture_output=True, text=True
    )
    return found.stdout.strip()


def run(server_url: str, *, quick: bool) -> dict[str, Any]:
    """Both measurements on one fresh database of ``server_url``."""
    requests, clients, jobs = (40, 4, 20) if quick else (400, 8, 200)
    with (
        fresh_database(make_url(server_url)) as database_url,
        tempfile.TemporaryDirectory() as home,
    ):
        engine = make_engine(database_url)
        migrate(engine)
        engine.dispose()
        env = {
            **os.environ,
            "PRELABEL_HOME": home,
            "PRELABEL_DATABASE_URL": database_url,
            "PRELABEL_PREDICTOR_THREADS": "1",
        }
        env.pop("PRELABEL_BLOB_URL", None)
        one = measure_replicas(1, env, requests=requests, clients=clients)
        two = measure_replicas(2, env, requests=requests, clients=clients)
        claims = measure_claims(database_url, jobs=jobs)
    ratio = {
        kind: round(two[kind]["per_s"] / one[kind]["per_s"], 2)
        for kind in ("corrections", "draft_fetches")
    }
    return {"replicas": {"1": one, "2": two, "ratio_2_to_1": ratio}, "claims": claims}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write its JSON report."""
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few requests: a smoke test for CI")
    parser.add_argument("--server-url", default=None, help="PostgreSQL URL of a CREATEDB role")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report path")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    server_url = args.server_url or _default_server_url()
    report = {
        "benchmark": "scale",
        **stamp(),
        "quick": args.quick,
        "database": make_url(server_url).render_as_string(hide_password=True),
        "note": "replicas, clients and PostgreSQL share this machine's cores: the numbers show "
        "correctness under concurrency more than speed",
        "results": run(server_url, quick=args.quick),
    }
    write_result(report, args.out)
    return 0 if report["results"]["claims"]["claimed_exactly_once"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
