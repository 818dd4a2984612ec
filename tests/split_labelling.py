"""Label a project so that its held-out split has what a test needs.

Image ids are random, and the held-out side of an image follows its id
(``prelabel.split.is_held_out``), so a fixed number of images gives a split of random
sizes: a test that needs some held-out images labels until it has them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi.testclient import TestClient

from prelabel.split import is_held_out
from tests.synthetic import png_bytes, shapes_sample

MAX_IMAGES = 200


@dataclass
class LabelledSplit:
    """The ids of the images labelled, by side of the split."""

    held_out: list[str] = field(default_factory=list)
    trained: list[str] = field(default_factory=list)


def label_until_split(
    client: TestClient,
    project: str,
    share: float,
    *,
    held_out: int,
    trained: int,
    annotator: str | None = None,
) -> LabelledSplit:
    """Upload and correct ``shapes_sample`` images until at least ``held_out`` are held out
    at ``share`` and ``trained`` are on the training side."""
    split = LabelledSplit()
    seed = 0
    while len(split.held_out) < held_out or len(split.trained) < trained:
        assert seed < MAX_IMAGES, f"no split of {held_out}/{trained} in {MAX_IMAGES} images"
        image, mask = shapes_sample(seed)
        seed += 1
        upload = client.post(
            f"/projects/{project}/images",
            files=[("files", ("i.png", png_bytes(image), "image/png"))],
        )
        assert upload.status_code == 201, upload.text
        image_id = upload.json()["images"][0]["id"]
        correction = client.put(
            f"/projects/{project}/images/{image_id}/correction",
            files={"mask": ("m.png", png_bytes(mask), "image/png")},
            data={"annotator": annotator} if annotator else None,
        )
        assert correction.status_code == 200, correction.text
        (split.held_out if is_held_out(image_id, share) else split.trained).append(image_id)
    return split
