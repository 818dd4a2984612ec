"""The core's dependency rule: no network client, web framework, torch or onnxruntime."""

from __future__ import annotations

import subprocess
import sys


def test_the_core_imports_no_network_client_framework_or_torch() -> None:
    code = (
        "import importlib, pkgutil, sys, prelabel; "
        "[importlib.import_module(m.name) for m in "
        "pkgutil.walk_packages(prelabel.__path__, 'prelabel.')]; "
        "banned = {'httpx', 'requests', 'urllib3', 'cvat_sdk', 'label_studio_sdk', 'fastapi', "
        "'starlette', 'onnxruntime', 'torch', 'models', 'service', 'training', 'bench'}; "
        "leaked = banned & set(sys.modules); assert not leaked, sorted(leaked)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
