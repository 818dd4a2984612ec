"""The README's curl walk-through, run as written (bash, curl, jq) against `prelabel serve`.

The service runs with auth on in a fresh ``.prelabel`` of a temporary working directory, so
``TOKEN=$(cat .prelabel/admin-token)`` reads the token its first start wrote. Only the port
differs from the README (``localhost:8000`` is rewritten to a free port). The demo project
``mni-demo`` is made small here (synthetic images of the shapes schema) instead of ``make run``'s
MNI152 import, which the walk-through does not depend on.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image as PILImage

from tests.synthetic import SHAPES_CLASSES, png_bytes, shapes_sample

pytestmark = pytest.mark.e2e

README = Path(__file__).resolve().parents[2] / "README.md"
BIN = Path(sys.executable).parent


def walkthrough_blocks() -> list[str]:
    """The bash blocks of the README's walk-through section, in order."""
    text = README.read_text()
    section = text.split("## A 5-minute walk-through with curl", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.S)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_up(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"prelabel serve exited:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"prelabel serve not up:\n{log.read_text(errors='replace')[-3000:]}")


def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    blocks = walkthrough_blocks()
    assert len(blocks) == 2, "the walk-through has two bash blocks"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env |= {"PRELABEL_HOME": str(tmp_path / ".prelabel"), "PATH": f"{BIN}:{env['PATH']}"}
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        serve = subprocess.Popen(
            [str(BIN / "prelabel"), "serve", "--port", str(port)],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_up(f"http://127.0.0.1:{port}/health", serve, log)
        token = (tmp_path / ".prelabel" / "admin-token").read_text().strip()
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}
        ) as api:
            made = api.post("/projects", json={"name": "mni-demo", "classes": SHAPES_CLASSES})
            assert made.status_code == 201, made.text
            files = [
                ("files", (f"s{i}.png", png_bytes(shapes_sample(i)[0]), "image/png"))
                for i in range(3)
            ]
            assert api.post("/projects/mni-demo/images", files=files).status_code == 201
        (tmp_path / "a.png").write_bytes(png_bytes(shapes_sample(5)[0]))
        PILImage.fromarray(shapes_sample(6)[0]).save(tmp_path / "b.jpg", format="JPEG")
        script = "\n".join(blocks).replace("localhost:8000", f"localhost:{port}")
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        serve.terminate()
        serve.wait(timeout=30)
    output = done.stdout
    assert done.returncode == 0, f"{done.stderr}\n{output}"
    assert '"code"' not in output, output  # no error answer anywhere
    assert "x-draft-id:" in output.lower()
    assert '"accepted": true' in output
    assert '"actor": "admin"' in output
    assert '"annotator"' in output
    assert output.rstrip().endswith('"roads"\n]'), output[-300:]
