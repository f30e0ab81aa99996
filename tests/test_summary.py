"""The summary tables: Markdown and JSON rows that agree with the evaluation reports."""

from __future__ import annotations

import json

import pytest

from qaclims import summary
from qaclims.errors import InputError


def _report(path, split, images, miou):
    path.write_text(json.dumps({"split": split, "images": images, "miou": miou, "sweep": []}))
    return path


def test_rows_agree_with_the_reports_in_markdown_and_json(tmp_path):
    reports = [
        _report(tmp_path / "cam_baseline.json", "train", 64, 0.183117),
        _report(tmp_path / "cam.json", "train", 64, 0.207612),
        _report(tmp_path / "seg.json", "val", 32, None),
    ]
    stages = ["baseline CAM", "RITC CAM", "segmentation"]
    out_md, out_json = tmp_path / "summary.md", tmp_path / "summary.json"
    rows = summary.run(stages=stages, reports=reports, out_md=out_md, out_json=out_json)
    assert json.loads(out_json.read_text()) == rows
    assert rows == [
        {"stage": "baseline CAM", "split": "train", "images": 64, "miou": 18.3117},
        {"stage": "RITC CAM", "split": "train", "images": 64, "miou": 20.7612},
        {"stage": "segmentation", "split": "val", "images": 32, "miou": None},
    ]
    assert out_md.read_text().splitlines()[2:] == [
        "| baseline CAM | train | 64 | 18.31 |",
        "| RITC CAM | train | 64 | 20.76 |",
        "| segmentation | val | 32 | n/a |",
    ]


def test_a_name_per_report_and_complete_reports(tmp_path):
    cam = _report(tmp_path / "cam.json", "train", 1, 0.5)
    out = {"out_md": tmp_path / "s.md", "out_json": tmp_path / "s.json"}
    with pytest.raises(InputError, match="2 stage names for 1 reports"):
        summary.run(stages=["a", "b"], reports=[cam], **out)
    (tmp_path / "bad.json").write_text(json.dumps({"split": "train"}))
    with pytest.raises(InputError, match=r"keys \['images', 'miou'\] missing"):
        summary.run(stages=["a"], reports=[tmp_path / "bad.json"], **out)
    assert not (tmp_path / "s.json").exists()


def test_a_cam_report_gives_its_configured_and_best_threshold_rows(tmp_path):
    cam = tmp_path / "cam.json"
    cam.write_text(
        json.dumps(
            {
                "split": "train",
                "images": 64,
                "bg_threshold": 0.15,
                "miou": 0.207612,
                "best_threshold": 0.12,
                "best_miou": 0.231,
                "sweep": [],
            }
        )
    )
    masks = _report(tmp_path / "pseudo_masks.json", "train", 64, 0.4)
    out_md, out_json = tmp_path / "summary.md", tmp_path / "summary.json"
    rows = summary.run(
        stages=["RITC CAM", "pseudo mask"], reports=[cam, masks], out_md=out_md, out_json=out_json
    )
    assert json.loads(out_json.read_text()) == rows == [
        {"stage": "RITC CAM", "split": "train", "images": 64, "miou": 20.7612, "threshold": 0.15},
        {"stage": "RITC CAM, best t", "split": "train", "images": 64, "miou": 23.1,
         "threshold": 0.12},
        {"stage": "pseudo mask", "split": "train", "images": 64, "miou": 40.0},
    ]  # fmt: skip
    assert out_md.read_text().splitlines() == [
        "| stage | split | images | threshold | mIoU (%) |",
        "|---|---|---|---|---|",
        "| RITC CAM | train | 64 | 0.15 | 20.76 |",
        "| RITC CAM, best t | train | 64 | 0.12 | 23.10 |",
        "| pseudo mask | train | 64 | — | 40.00 |",
    ]
