"""What every benchmark records about where it ran: hardware, library versions, date."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def hardware() -> dict[str, Any]:
    """CPU model and core counts of this machine."""
    model = platform.processor() or "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_model": model,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "machine": platform.machine(),
        "system": platform.platform(),
    }


def versions() -> dict[str, str]:
    """Versions of the libraries that shape the numbers."""
    import onnx
    import onnxruntime
    import segmentation_models_pytorch
    import torch

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
        "torch": torch.__version__,
        "segmentation_models_pytorch": segmentation_models_pytorch.__version__,
    }


def stamp() -> dict[str, Any]:
    """Hardware, versions and the UTC time of a benchmark run."""
    return {
        "hardware": hardware(),
        "versions": versions(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def write_result(result: dict[str, Any], out: Path) -> None:
    """Write a benchmark's JSON to ``out``, log the path and echo it to stdout."""
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2)
    out.write_text(text + "\n")
    logger.info("wrote %s", out)
    sys.stdout.write(text + "\n")
