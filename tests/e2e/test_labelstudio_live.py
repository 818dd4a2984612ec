"""prelabel as the ML backend of a real Label Studio 1.23, both started here on 127.0.0.1.

A tiny model is trained with the CLI (``prelabel import`` + ``prelabel train``), then
``prelabel serve`` runs with auth on. Label Studio (its own virtual environment, see
``tests/e2e/labelstudio/install.sh``; ``PRELABEL_LS_VENV``) gets a BrushLabels project
whose labels are the classes' German translations, the images, and prelabel as ML
backend with basic auth: the password is the token of a prelabel user made for the
connection (an ml-engineer of the project). Then: predictions for all tasks decode
(with label-studio-sdk) to exactly prelabel's drafts; an annotation posted in Label
Studio becomes a correction with its lead time, draft and metrics; deleting it
withdraws it; "Start training" queues a training run.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from label_studio_sdk.converter import brush
from PIL import Image

from prelabel.accounts import ADMIN_TOKEN_FILE
from prelabel.datasets.folder import write_dataset
from prelabel.metrics import compare_masks
from prelabel.schema import LabelSchema
from tests.e2e.test_loop import TINY_TRAINING
from tests.synthetic import SHAPES_CLASSES, png_bytes, shapes_sample

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LS_VENV = Path(os.environ.get("PRELABEL_LS_VENV", "/opt/ls-venv"))

LS_TOKEN = "0123456789abcdef0123456789abcdef01234567"
LABELS = {"Scheibe": 1, "Quadrat": 2}  # the German translations of "disk" and "square"
CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image">
    <Label value="Scheibe" background="#ff0000"/>
    <Label value="Quadrat" background="#00ff00"/>
  </BrushLabels>
</View>"""
TEST_SEEDS = (0, 1, 2, 3)
BIN = Path(sys.executable).parent

logger = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


def _wait_until_up(url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{url} exited with {process.returncode}:\n{_tail(log)}")
        try:
            if httpx.get(url, timeout=2.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    pytest.fail(f"{url} not up after {timeout_s} s:\n{_tail(log)}")


def _poll(check: Callable[[], Any], what: str, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def start() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start a process with its output in a log file; stop it at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def run(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            process = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
        started.append(process)
        return process

    yield run
    for process in started:
        process.terminate()
    for process in started:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def _start_label_studio(
    start: Callable[..., subprocess.Popen[bytes]], tmp: Path
) -> tuple[str, Any]:
    if not os.access(LS_VENV / "bin" / "label-studio", os.X_OK):
        # Fail, never skip: `make test` installs Label Studio before running the suite.
        pytest.fail(
            f"no Label Studio in {LS_VENV}: `make labelstudio` installs it there (`make test` "
            f"does so first), or point PRELABEL_LS_VENV to a venv with label-studio 1.23",
            pytrace=False,
        )
    port = _free_port()
    env = _base_env() | {
        "LABEL_STUDIO_BASE_DATA_DIR": str(tmp / "label-studio"),
        "LABEL_STUDIO_USERNAME": "admin@example.org",
        "LABEL_STUDIO_PASSWORD": "admin-pass-e2e",
        "LABEL_STUDIO_USER_TOKEN": LS_TOKEN,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_HOST": f"http://127.0.0.1:{port}",
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
    }
    args = [str(LS_VENV / "bin" / "label-studio"), "start", "--no-browser"]
    args += ["--internal-host", "127.0.0.1", "--port", str(port)]
    process = start(args, env, tmp / "label-studio.log")
    return f"http://127.0.0.1:{port}", process


def _train_tiny_model(tmp: Path, env: dict[str, str]) -> None:
    schema = LabelSchema.model_validate({"classes": SHAPES_CLASSES})
    write_dataset(
        tmp / "dataset",
        schema,
        [(f"train{seed}", *shapes_sample(seed)) for seed in range(100, 124)],
    )
    (tmp / "train.yaml").write_text(yaml.safe_dump(TINY_TRAINING))
    # One torch thread: Label Studio boots on the other core meanwhile, and torch's
    # spinning worker threads slow down many times over when they must share cores.
    env = env | {"PRELABEL_TORCH_THREADS": "1"}
    for args in (
        ["import", str(tmp / "dataset"), "--project", "shapes"],
        ["train", "--project", "shapes", "--config", str(tmp / "train.yaml")],
    ):
        done = subprocess.run(
            [str(BIN / "prelabel"), *args], env=env, capture_output=True, timeout=600
        )
        assert done.returncode == 0, done.stdout.decode()[-2000:] + done.stderr.decode()[-2000:]


def _index_mask(regions: list[dict[str, Any]], height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    for region in regions:
        assert region["type"] == "brushlabels"
        assert (region["original_height"], region["original_width"]) == (height, width)
        alpha = brush.decode_rle(region["value"]["rle"]).reshape(height, width, 4)[:, :, 3]
        [label] = region["value"]["brushlabels"]
        mask[alpha > 0] = LABELS[label]
    return mask


def _regions(mask: np.ndarray) -> list[dict[str, Any]]:
    return [
        {
            "id": f"fix{class_id}",
            "from_name": "tag",
            "to_name": "image",
            "type": "brushlabels",
            "original_width": mask.shape[1],
            "original_height": mask.shape[0],
            "image_rotation": 0,
            "value": {
                "format": "rle",
                "rle": brush.mask2rle(((mask == class_id) * 255).astype(np.uint8)),
                "brushlabels": [label],
            },
        }
        for label, class_id in LABELS.items()
        if (mask == class_id).any()
    ]


def test_label_studio_uses_prelabel_as_ml_backend(
    tmp_path: Path, start: Callable[..., subprocess.Popen[bytes]]
) -> None:
    ls_url, ls_process = _start_label_studio(start, tmp_path)  # boots while the model trains
    env = _base_env() | {"PRELABEL_HOME": str(tmp_path / "home")}
    _train_tiny_model(tmp_path, env)
    logger.info("tiny model trained")
    pl_port = _free_port()
    pl_url = f"http://127.0.0.1:{pl_port}"
    pl_process = start(
        [str(BIN / "prelabel"), "serve", "--port", str(pl_port)], env, tmp_path / "prelabel.log"
    )
    _wait_until_up(f"{pl_url}/health", pl_process, tmp_path / "prelabel.log", 60)
    logger.info("prelabel up")
    _wait_until_up(f"{ls_url}/health", ls_process, tmp_path / "label-studio.log", 240)
    logger.info("Label Studio up")

    ls = httpx.Client(base_url=ls_url, headers={"Authorization": f"Token {LS_TOKEN}"}, timeout=120)
    admin = (tmp_path / "home" / ADMIN_TOKEN_FILE).read_text().strip()
    pl = httpx.Client(base_url=pl_url, headers={"Authorization": f"Bearer {admin}"}, timeout=60)
    with ls, pl:
        ls_project, truths = _create_project(ls, pl)
        connection = _connection_token(pl)
        backend_id = _connect(ls, pl, pl_url, ls_project, connection)
        served = _retrieve_predictions(ls, pl, ls_project)
        logger.info("predictions checked")
        task_id, first = next(iter(served.items()))
        _annotate(ls, pl, task_id, first, truths[first.seed][1])
        logger.info("correction checked")
        _start_training(ls, pl, backend_id)


@dataclass(frozen=True)
class Served:
    """What prelabel served for a task: the image, the draft and the prediction."""

    seed: int
    image_id: str
    draft_id: str
    draft_mask: np.ndarray
    prediction_id: int


def _create_project(ls: httpx.Client, pl: httpx.Client) -> tuple[int, dict[int, Any]]:
    project = ls.post("/api/projects", json={"title": "shapes", "label_config": CONFIG})
    assert project.status_code == 201, project.text
    ls_project = int(project.json()["id"])
    # An admin binds it to the trained project; labels map through translations.
    bound = pl.put(f"/labelstudio/bindings/{ls_project}", json={"project": "shapes"})
    assert bound.status_code == 200, bound.text
    truths = {seed: shapes_sample(seed) for seed in TEST_SEEDS}
    files = {f"file{s}": (f"test{s}.png", png_bytes(truths[s][0]), "image/png") for s in truths}
    imported = ls.post(f"/api/projects/{ls_project}/import", files=files)
    assert imported.status_code == 201 and imported.json()["task_count"] == 4, imported.text
    return ls_project, truths


def _connection_token(pl: httpx.Client) -> str:
    """A prelabel user for the Label Studio connection: ml-engineer (it sends corrections and
    the train button's requests); its token is Label Studio's basic-auth password."""
    created = pl.post("/users", json={"name": "label-studio"})
    assert created.status_code == 201, created.text
    member = pl.put("/projects/shapes/members/label-studio", json={"role": "ml-engineer"})
    assert member.status_code == 200, member.text
    return str(created.json()["token"])


def _connect(ls: httpx.Client, pl: httpx.Client, pl_url: str, ls_project: int, token: str) -> int:
    # Settings → Model → Connect Model, with Basic Authentication.
    backend = ls.post(
        "/api/ml",
        json={
            "url": f"{pl_url}/labelstudio",
            "project": ls_project,
            "title": "prelabel",
            "auth_method": "BASIC_AUTH",
            "basic_auth_user": "label-studio",
            "basic_auth_pass": token,
        },
    )
    assert backend.status_code == 201, backend.text
    assert backend.json()["readable_state"] == "Connected", backend.json()
    assert backend.json()["model_version"] == "v1"
    assert pl.get("/labelstudio/bindings").json()[0]["labels"] == LABELS
    # Label Studio creates the backend's webhook without credentials: add them.
    [hook] = ls.get("/api/webhooks", params={"project": ls_project}).json()
    assert hook["url"] == f"{pl_url}/labelstudio/webhook"
    basic = base64.b64encode(f"label-studio:{token}".encode()).decode()
    headers = {"headers": {"Authorization": f"Basic {basic}"}}
    assert ls.patch(f"/api/webhooks/{hook['id']}", json=headers).status_code == 200
    return int(backend.json()["id"])


def _retrieve_predictions(ls: httpx.Client, pl: httpx.Client, ls_project: int) -> dict[int, Served]:
    retrieved = ls.post(
        "/api/dm/actions",
        params={"id": "retrieve_tasks_predictions", "project": ls_project},
        json={"selectedItems": {"all": True, "excluded": []}},
    )
    assert retrieved.status_code == 200, retrieved.text
    tasks = ls.get("/api/tasks", params={"project": ls_project}).json()["tasks"]
    predictions = ls.get("/api/predictions", params={"project": ls_project}).json()
    by_task = {p["task"]: p for p in predictions}
    assert sorted(by_task) == sorted(t["id"] for t in tasks)
    assert any(p["result"] for p in predictions), "the tiny model drew nothing"
    images = {i["filename"]: i["id"] for i in pl.get("/projects/shapes/images").json()}
    served: dict[int, Served] = {}
    for task in tasks:
        prediction = by_task[task["id"]]
        assert prediction["model_version"] == "v1"
        filename = task["data"]["image"].rsplit("/", 1)[-1]
        draft = pl.get(f"/projects/shapes/images/{images[filename]}/draft")
        assert draft.headers["x-model-version"] == "v1"
        draft_mask = np.asarray(Image.open(io.BytesIO(draft.content)))
        assert (_index_mask(prediction["result"], 64, 64) == draft_mask).all()
        seed = int(filename.rsplit("test", 1)[-1].removesuffix(".png"))
        served[task["id"]] = Served(
            seed, images[filename], draft.headers["x-draft-id"], draft_mask, prediction["id"]
        )
    return served


def _annotate(
    ls: httpx.Client, pl: httpx.Client, task_id: int, served: Served, truth: np.ndarray
) -> None:
    body = {"result": _regions(truth), "lead_time": 12.5, "parent_prediction": served.prediction_id}
    annotation = ls.post(f"/api/tasks/{task_id}/annotations", json=body)
    assert annotation.status_code == 201, annotation.text
    image = f"/projects/shapes/images/{served.image_id}"
    [correction] = _poll(lambda: pl.get(f"{image}/corrections").json(), "the correction")
    assert correction["annotator"] == f"labelstudio:{annotation.json()['completed_by']}"
    assert correction["lead_time_s"] == 12.5
    assert (correction["draft_id"], correction["model_version"]) == (served.draft_id, "v1")
    expected = compare_masks(
        served.draft_mask, truth, num_classes=3, ignore_index=255, acceptance_threshold=0.01
    )
    metrics = correction["metrics"]
    assert metrics["changed_pixel_fraction"] == pytest.approx(expected.changed_pixel_fraction)
    assert metrics["mean_iou"] == pytest.approx(expected.mean_iou)
    assert metrics["accepted"] == expected.accepted
    corrected = pl.get(f"{image}/correction")
    assert (np.asarray(Image.open(io.BytesIO(corrected.content))) == truth).all()
    # Deleting the annotation withdraws the correction.
    assert ls.delete(f"/api/annotations/{annotation.json()['id']}").status_code == 204
    _poll(lambda: pl.get(f"{image}/correction").status_code == 404, "the withdrawal")


def _start_training(ls: httpx.Client, pl: httpx.Client, backend_id: int) -> None:
    # Model → "Start training" reaches prelabel as a START_TRAINING webhook.
    assert ls.post(f"/api/ml/{backend_id}/train", json={}).status_code == 200

    def queued() -> list[dict[str, Any]]:
        runs = pl.get("/projects/shapes/training-runs").json()
        return [r for r in runs if r["status"] == "queued"]

    [run] = _poll(queued, "a queued training run")
    assert run["trigger"] == "manual"
