"""Quality review over HTTP with three people: an annotator (ana), a reviewer (rita) and
another annotator (bo); a manager (max) changes the settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from scipy.stats import binom

from prelabel.codecs import mask_to_rles
from tests.synthetic import png_bytes, shapes_sample

SIZE = 64


@dataclass
class Team:
    client: TestClient
    project: str
    headers: dict[str, dict[str, str]]

    def as_(self, who: str) -> dict[str, str]:
        return self.headers[who]


def _ok(response: Any) -> Any:
    assert response.is_success, response.text
    return response.json()


@pytest.fixture
def team(client: TestClient, make_project: Callable[[str], str]) -> Team:
    project = make_project("qa")
    headers = {}
    people = {"ana": "annotator", "bo": "annotator", "rita": "reviewer", "max": "manager"}
    for name, role in people.items():
        token = _ok(client.post("/users", json={"name": name}))["token"]
        _ok(client.put(f"/projects/{project}/members/{name}", json={"role": role}))
        headers[name] = {"Authorization": f"Bearer {token}"}
    return Team(client, project, headers)


def _upload(team: Team, count: int, size: int = SIZE) -> list[str]:
    files = [
        ("files", (f"img{i}.png", png_bytes(shapes_sample(i, size)[0]), "image/png"))
        for i in range(count)
    ]
    answer = _ok(team.client.post(f"/projects/{team.project}/images", files=files))
    return [item["id"] for item in answer["images"]]


def _correct(team: Team, who: str, image: str, mask: np.ndarray) -> dict[str, Any]:
    return _ok(
        team.client.put(
            f"/projects/{team.project}/images/{image}/correction",
            files={"mask": ("mask.png", png_bytes(mask), "image/png")},
            headers=team.as_(who),
        )
    )


def _review(team: Team, who: str, correction: str, **body: Any) -> Any:
    return team.client.post(
        f"/projects/{team.project}/corrections/{correction}/review",
        json=body,
        headers=team.as_(who),
    )


def _require_review(team: Team, **settings: Any) -> dict[str, Any]:
    return _ok(
        team.client.patch(
            f"/projects/{team.project}",
            json={"review_required": True, **settings},
            headers=team.as_("max"),
        )
    )


def _rles(mask: np.ndarray) -> dict[str, Any]:
    return {str(k): v.model_dump() for k, v in mask_to_rles(mask, class_ids=[1, 2]).items()}


def _halves(rows: int) -> np.ndarray:
    """Class 1 on the top ``rows`` rows, background below."""
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[:rows] = 1
    return mask


def test_settings_are_read_with_the_project_and_changed_by_managers_only(team: Team) -> None:
    url = f"/projects/{team.project}"
    shown = _ok(team.client.get(url, headers=team.as_("ana")))
    assert (shown["review_required"], shown["review_share"], shown["min_reviewers"]) == (
        False,
        1.0,
        1,
    )
    denied = team.client.patch(url, json={"review_required": True}, headers=team.as_("rita"))
    assert denied.status_code == 403 and denied.json()["code"] == "forbidden"
    for bad in ({"review_share": 1.5}, {"min_reviewers": 0}, {"colour": "red"}):
        refused = team.client.patch(url, json=bad, headers=team.as_("max"))
        assert refused.status_code == 422, refused.text

    changed = _require_review(team, review_share=0.25)
    assert (changed["review_required"], changed["review_share"]) == (True, 0.25)
    kept = _ok(team.client.patch(url, json={"min_reviewers": 2}, headers=team.as_("max")))
    assert (kept["review_share"], kept["min_reviewers"]) == (0.25, 2)
    audit = _ok(team.client.get(f"{url}/audit?action=project_settings_changed"))
    assert [(e["actor"], e["details"]["after"]["min_reviewers"]) for e in audit] == [
        ("max", 2),
        ("max", 1),
    ]


def test_review_workflow_reject_resubmit_approve(team: Team) -> None:
    first, second = _upload(team, 2)
    plain = _correct(team, "ana", first, _halves(32))
    assert plain["review_status"] == "not_required"
    _require_review(team)  # the backlog is drawn too: at share 1, all of it
    ana = _correct(team, "ana", first, _halves(30))
    assert (ana["review_status"], ana["review_reason"]) == ("pending", "replaces_pending")
    rita_own = _correct(team, "rita", second, _halves(10))
    assert (rita_own["review_status"], rita_own["review_reason"]) == ("pending", "drawn")

    # Nobody reviews their own work; annotators review nothing.
    own = _review(team, "rita", rita_own["id"], decision="approve")
    assert own.status_code == 403 and "own work" in own.json()["detail"]
    assert _review(team, "bo", ana["id"], decision="approve").status_code == 403
    queue = _ok(team.client.get(f"/projects/{team.project}/reviews", headers=team.as_("rita")))
    assert [item["correction"]["id"] for item in queue] == [ana["id"]]
    assert queue[0]["correction_url"].endswith(f"/images/{first}/correction")

    rejected = _ok(_review(team, "rita", ana["id"], decision="reject", comment="hole missed"))
    assert rejected["correction"]["review_status"] == "rejected"
    assert rejected["review"]["mean_iou"] is None
    again = _review(team, "rita", ana["id"], decision="approve")
    assert again.status_code == 409, again.text

    # The rejection comes first in ana's queue, not in bo's.
    queue_url = f"/projects/{team.project}/queue?assignee=me"
    ana_queue = _ok(team.client.get(queue_url, headers=team.as_("ana")))
    assert ana_queue[0]["id"] == first
    assert ana_queue[0]["rejection"] == {
        "correction_id": ana["id"],
        "reviewer": "rita",
        "comment": "hole missed",
        "rejected_at": rejected["review"]["created_at"],
    }
    bo_queue = team.client.get(queue_url, headers=team.as_("bo"))
    assert all(entry["rejection"] is None for entry in _ok(bo_queue))
    others = team.client.get(queue_url.replace("=me", "=ana"), headers=team.as_("bo"))
    assert others.status_code == 403

    resubmitted = _correct(team, "ana", first, _halves(32))
    assert (resubmitted["review_status"], resubmitted["resubmits"]) == ("pending", ana["id"])
    queue = _ok(team.client.get(f"/projects/{team.project}/reviews", headers=team.as_("rita")))
    [item] = queue
    assert [r["comment"] for r in item["reviews"]] == ["hole missed"]

    approved = _ok(_review(team, "rita", resubmitted["id"], decision="approve", review_time_s=7))
    assert approved["correction"]["review_status"] == "approved"
    assert approved["review"]["mean_iou"] == 1.0
    ana_after = team.client.get(queue_url, headers=team.as_("ana"))
    assert all(entry["rejection"] is None for entry in _ok(ana_after))
    done = _ok(team.client.get(f"/projects/{team.project}/reviews?status=approved"))
    assert [item["correction"]["id"] for item in done] == [resubmitted["id"]]
    audit = _ok(team.client.get(f"/projects/{team.project}/audit?action=correction_reviewed"))
    assert [(e["actor"], e["details"]["decision"]) for e in audit] == [
        ("rita", "approve"),
        ("rita", "reject"),
    ]


def test_a_reviewer_edit_becomes_current_and_keeps_the_annotators_in_history(team: Team) -> None:
    [image] = _upload(team, 1)
    _require_review(team)
    ana = _correct(team, "ana", image, _halves(32))
    edited_mask = _halves(24)
    rles = _rles(edited_mask)
    with_mask_on_reject = _review(team, "rita", ana["id"], decision="reject", classes=rles)
    assert with_mask_on_reject.status_code == 422
    assert "approve" in with_mask_on_reject.json()["detail"]
    wrong_size = _review(
        team,
        "rita",
        ana["id"],
        decision="approve",
        classes=_rles(_halves(4)[:32]),
    )
    assert wrong_size.status_code == 422, wrong_size.text

    outcome = _ok(_review(team, "rita", ana["id"], decision="approve", classes=rles))
    edited = outcome["edited_correction"]
    assert (edited["annotator"], edited["supersedes"]) == ("rita", ana["id"])
    assert (edited["review_status"], edited["review_reason"]) == ("approved", "reviewer_edit")
    assert outcome["correction"]["review_status"] == "approved"
    # 8 of 64 rows changed: class 1 IoU 24/32, background 32/40.
    assert outcome["review"]["changed_pixels"] == 8 * SIZE
    assert outcome["review"]["mean_iou"] == pytest.approx((24 / 32 + 32 / 40) / 2)

    current = team.client.get(f"/projects/{team.project}/images/{image}/correction")
    assert current.headers["X-Correction-Id"] == edited["id"]
    history = _ok(team.client.get(f"/projects/{team.project}/images/{image}/corrections"))
    assert [(c["id"], c["annotator"]) for c in history] == [
        (edited["id"], "rita"),
        (ana["id"], "ana"),
    ]


def test_a_reviewer_edit_with_class_keys_outside_the_schema_is_422(team: Team) -> None:
    # int() reads '²' and ids past uint8 overflowed the mask: both were 500s.
    [image] = _upload(team, 1)
    _require_review(team)
    ana = _correct(team, "ana", image, _halves(32))
    rle = _rles(_halves(24))["1"]
    for key, code in (("²", "invalid_encoding"), ("300", "schema_mismatch")):
        answer = _review(team, "rita", ana["id"], decision="approve", classes={key: rle})
        assert answer.status_code == 422, answer.text
        assert answer.json()["code"] == code
    history = _ok(team.client.get(f"/projects/{team.project}/images/{image}/corrections"))
    assert [(c["id"], c["review_status"]) for c in history] == [(ana["id"], "pending")]


def test_a_review_time_that_is_not_finite_is_422_and_records_nothing(team: Team) -> None:
    # Infinity was stored with the review (and shown as null).
    [image] = _upload(team, 1)
    _require_review(team)
    ana = _correct(team, "ana", image, _halves(32))
    url = f"/projects/{team.project}/corrections/{ana['id']}/review"
    as_json = b'{"decision": "approve", "review_time_s": 1e400}'
    headers = {**team.as_("rita"), "content-type": "application/json"}
    answer = team.client.post(url, content=as_json, headers=headers)
    assert answer.status_code == 422, answer.text
    assert "review_time_s must be a finite number" in answer.json()["detail"]
    history = _ok(team.client.get(f"/projects/{team.project}/images/{image}/corrections"))
    assert [(c["id"], c["review_status"]) for c in history] == [(ana["id"], "pending")]


def test_a_comment_holding_nul_is_422_and_records_nothing(team: Team) -> None:
    # PostgreSQL text holds no NUL: the review was a 500 there, and stored on SQLite.
    [image] = _upload(team, 1)
    _require_review(team)
    ana = _correct(team, "ana", image, _halves(32))
    answer = _review(team, "rita", ana["id"], decision="reject", comment="see\x00here")
    assert answer.status_code == 422, answer.text
    assert "NUL character (U+0000)" in answer.json()["detail"]
    history = _ok(team.client.get(f"/projects/{team.project}/images/{image}/corrections"))
    assert [(c["id"], c["review_status"]) for c in history] == [(ana["id"], "pending")]


def test_a_repeated_multipart_field_of_a_review_is_422_and_records_nothing(team: Team) -> None:
    # Starlette keeps the last of repeated parts: approve then reject was a rejection.
    [image] = _upload(team, 1)
    _require_review(team)
    ana = _correct(team, "ana", image, _halves(32))
    url = f"/projects/{team.project}/corrections/{ana['id']}/review"
    mask = ("mask.png", png_bytes(_halves(16)), "image/png")
    for data, files in (
        ({"decision": ["approve", "reject"]}, {"mask": mask}),
        ({"decision": "approve"}, [("mask", mask), ("mask", mask)]),
    ):
        answer = team.client.post(url, data=data, files=files, headers=team.as_("rita"))
        assert answer.status_code == 422, answer.text
        assert "got 2" in answer.json()["detail"]
    # A mask file under a misspelt name was dropped: the approval went through unedited.
    misspelt = {"maks": mask}
    answer = team.client.post(
        url, data={"decision": "approve"}, files=misspelt, headers=team.as_("rita")
    )
    assert answer.status_code == 422, answer.text
    assert "unknown multipart field(s) 'maks'" in answer.json()["detail"]
    history = _ok(team.client.get(f"/projects/{team.project}/images/{image}/corrections"))
    assert [(c["id"], c["review_status"]) for c in history] == [(ana["id"], "pending")]


def test_review_required_takes_only_json_booleans(team: Team) -> None:
    # Lax parsing read "no" and 0 as false: review turned off by a string.
    url = f"/projects/{team.project}"
    _require_review(team)
    for value in ("no", "false", 0):
        answer = team.client.patch(url, json={"review_required": value}, headers=team.as_("max"))
        assert answer.status_code == 422, answer.text
        assert "review_required" in answer.json()["detail"]
    assert _ok(team.client.get(url, headers=team.as_("max")))["review_required"] is True


def test_review_share_draws_a_binomial_share_of_new_corrections(team: Team) -> None:
    count = 200
    images = _upload(team, count, size=32)
    _require_review(team, review_share=0.5)
    mask = np.zeros((32, 32), np.uint8)
    answers = [_correct(team, "ana", image, mask) for image in images]
    drawn = sum(a["review_status"] == "pending" for a in answers)
    low, high = binom.interval(0.99, count, 0.5)
    assert low <= drawn <= high
    assert {(a["review_status"], a["review_reason"]) for a in answers} == {
        ("pending", "drawn"),
        ("approved", "not_drawn"),
    }


def test_only_approved_corrections_count_in_metrics_with_hand_computed_agreement(
    team: Team,
) -> None:
    shared, alone, other = _upload(team, 3)
    _require_review(team)
    for image in (shared, alone, other):  # an (empty) draft to compare with
        _ok(team.client.get(f"/projects/{team.project}/images/{image}/draft?format=json"))
    ana = _correct(team, "ana", shared, _halves(32))
    bo = _correct(team, "bo", shared, _halves(16))
    ana_alone = _correct(team, "ana", alone, _halves(8))
    _correct(team, "bo", other, _halves(8))  # stays pending
    _ok(_review(team, "rita", bo["id"], decision="reject", comment="too small"))
    _ok(_review(team, "rita", ana_alone["id"], decision="approve", review_time_s=4))
    bo_again = _correct(team, "bo", shared, _halves(32))
    _ok(_review(team, "rita", bo_again["id"], decision="approve", review_time_s=10))

    metrics = _ok(team.client.get(f"/projects/{team.project}/metrics"))
    assert metrics["overall"]["corrections"] == 2  # the pending one waits
    review = metrics["review"]
    assert review["current_by_status"] == {
        "not_required": 0,
        "pending": 1,
        "approved": 2,
        "rejected": 0,
    }
    assert review["by_annotator"]["bo"]["rejection_rate"] == 0.5
    assert review["by_annotator"]["bo"]["mean_agreement_iou"] == 1.0
    assert review["by_annotator"]["ana"]["rejection_rate"] == 0.0
    rita = review["by_reviewer"]["rita"]
    assert (rita["reviews"], rita["approvals"], rita["rejections"]) == (3, 2, 1)
    assert rita["mean_review_time_s"] == pytest.approx(7.0)
    # ana's (top 32 rows, superseded but still her newest) and bo's newest (top 32 rows)
    # of the shared image agree fully.
    iaa = review["inter_annotator"]
    assert (iaa["images"], iaa["pairs"], iaa["mean_iou"]) == (1, 1, 1.0)
    assert ana["review_status"] == "pending"


def test_inter_annotator_agreement_per_class_by_hand(team: Team) -> None:
    [image] = _upload(team, 1)
    _correct(team, "ana", image, _halves(32))
    _correct(team, "bo", image, _halves(16))
    iaa = _ok(team.client.get(f"/projects/{team.project}/metrics"))["review"]["inter_annotator"]
    # class 1: 16 rows shared of 32; background: 32 rows shared of 48.
    assert iaa["by_class"]["1"]["mean_iou"] == pytest.approx(16 / 32)
    assert iaa["by_class"]["0"]["mean_iou"] == pytest.approx(32 / 48)
    assert iaa["by_class"]["2"]["pairs"] == 0
    assert iaa["mean_iou"] == pytest.approx((16 / 32 + 32 / 48) / 2)


def test_inter_annotator_pairs_are_compared_once_then_again_for_a_new_correction(
    team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    [image] = _upload(team, 1)
    _correct(team, "ana", image, _halves(32))
    _correct(team, "bo", image, _halves(16))
    url = f"/projects/{team.project}/metrics"
    first = _ok(team.client.get(url))["review"]["inter_annotator"]
    assert first["mean_iou"] == pytest.approx((16 / 32 + 32 / 48) / 2)

    def no_decoding(*_: Any) -> None:
        raise AssertionError("a kept pair was decoded again")

    with monkeypatch.context() as patched:
        patched.setattr("prelabel.review_metrics.load_mask", no_decoding)
        assert _ok(team.client.get(url))["review"]["inter_annotator"] == first

    _correct(team, "bo", image, _halves(32))  # a new correction: a new pair, compared anew
    again = _ok(team.client.get(url))["review"]["inter_annotator"]
    assert (again["pairs"], again["mean_iou"]) == (1, 1.0)


def test_approved_only_export_means_qa_approved_when_review_is_required(team: Team) -> None:
    import io
    import json
    import zipfile

    first, second = _upload(team, 2)
    _require_review(team)
    pending = _correct(team, "ana", first, _halves(32))
    approved = _correct(team, "ana", second, _halves(16))
    _ok(_review(team, "rita", approved["id"], decision="approve"))
    answer = team.client.get(f"/projects/{team.project}/export?approved_only=true")
    assert answer.status_code == 200, answer.text
    manifest = json.loads(zipfile.ZipFile(io.BytesIO(answer.content)).read("manifest.json"))
    assert manifest["approved_means"] == "qa_approved"
    assert [e["correction_id"] for e in manifest["images"]] == [approved["id"]]
    assert pending["id"] not in answer.text


def test_review_answers_name_what_is_wrong(team: Team) -> None:
    [image] = _upload(team, 1)
    ana = _correct(team, "ana", image, _halves(32))
    not_pending = _review(team, "rita", ana["id"], decision="approve")
    assert not_pending.status_code == 409 and "not_required" in not_pending.json()["detail"]
    missing = _review(team, "rita", "0" * 32, decision="approve")
    assert missing.status_code == 404 and missing.json()["code"] == "correction_not_found"
    bad = _review(team, "rita", ana["id"], decision="maybe")
    assert bad.status_code == 422 and "decision" in bad.json()["detail"]
    status = team.client.get(f"/projects/{team.project}/reviews?status=lost")
    assert status.status_code == 422
