"""The fixed held-out rule: which corrected images are kept for evaluation only.

The rule hashes the image id, so an image's side never changes: the held-out
set grows as corrections arrive, but no image moves between train and held-out,
and every model version is judged on images it never trained on.
"""

from __future__ import annotations

import hashlib


def held_out_score(image_id: str) -> float:
    """A stable pseudo-random number in [0, 1) derived from ``image_id``."""
    digest = hashlib.sha256(f"prelabel-held-out:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_held_out(image_id: str, share: float) -> bool:
    """Whether ``image_id`` belongs to the held-out set for a held-out ``share`` in [0, 1)."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"held-out share must be in [0, 1), got {share}")
    return held_out_score(image_id) < share
