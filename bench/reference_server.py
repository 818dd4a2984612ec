"""The naive way ML backends serve a segmentation network: the yardstick of ``bench.drafts``.

FastAPI + torch eager, one forward pass per request, no batching, no precomputation,
no ONNX: ``GET /images/{name}/draft`` reads ``{images}/{name}.png``, normalises and pads
it as the network expects, runs the checkpoint's network under ``torch.no_grad()`` and
answers the argmax as an index PNG. The same weights as prelabel's version (the
checkpoint ``bench.drafts`` registers). torch keeps its default threads (one per core).

Usage::

    python -m bench.reference_server --checkpoint model.pt --images DIR --port 8001
"""

from __future__ import annotations

import argparse
import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import uvicorn
from fastapi import FastAPI, HTTPException
from fastapi.responses import Response
from PIL import Image

logger = logging.getLogger(__name__)


def create_reference_app(checkpoint: Path, images: Path) -> FastAPI:
    """The reference service: the checkpoint's network in torch eager mode."""
    import torch

    from models.builder import load_checkpoint
    from models.predictor import padded_size

    net, config = load_checkpoint(checkpoint)
    net.eval()
    mean = torch.tensor(config.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(config.std, dtype=torch.float32).view(1, -1, 1, 1)
    app = FastAPI(title="reference: torch eager per request")

    @app.get("/images/{name}/draft")
    def draft(name: str) -> Response:
        path = images / f"{name}.png"
        if not path.is_file() or path.parent != images:
            raise HTTPException(404, f"no image {name}")
        mode = "L" if config.in_channels == 1 else "RGB"
        pixels = np.asarray(Image.open(path).convert(mode), dtype=np.float32) / 255.0
        tensor = torch.from_numpy(pixels.reshape(*pixels.shape[:2], -1)).permute(2, 0, 1)[None]
        height, width = tensor.shape[2:]
        padded_h, padded_w = padded_size(height, width, config.stride)
        tensor = torch.nn.functional.pad(
            (tensor - mean) / std, (0, padded_w - width, 0, padded_h - height)
        )
        with torch.no_grad():
            logits = net(tensor)[0, :, :height, :width]
        mask = logits.argmax(0).to(torch.uint8).numpy()
        buffer = io.BytesIO()
        Image.fromarray(mask).save(buffer, format="PNG")
        return Response(buffer.getvalue(), media_type="image/png")

    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the reference app on loopback."""
    parser = argparse.ArgumentParser(prog="python -m bench.reference_server", description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    app = create_reference_app(args.checkpoint, args.images.resolve())
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_config=None, access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
