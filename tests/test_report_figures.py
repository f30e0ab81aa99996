"""Report figures and tables: dataset palettes with legends, pseudo-mask samples titled with
their own mIoU, per-class IoU with "no data", the CAM threshold sweep, `make report`'s check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qaclims import class_iou, eval_masks, palette, report_ready, visuals
from qaclims.errors import InputError
from qaclims.images import voc_palette

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["background", "cat", "dog"]


def _min_distance(colours: np.ndarray) -> float:
    c = colours.astype(np.float64)
    d = np.linalg.norm(c[:, None] - c[None], axis=2)
    return float(d[~np.eye(len(c), dtype=bool)].min())


def test_voc_sized_datasets_keep_the_voc_palette():
    voc = np.array(voc_palette(), np.uint8).reshape(256, 3)
    assert np.array_equal(palette.class_palette(21), voc)
    assert np.array_equal(palette.class_palette(3), voc)


def test_coco_sized_datasets_get_colours_far_apart():
    """81 labels: VOC's map has colours 32 apart; the extended one keeps every pair (and the
    ignore colour) at least 48 apart, the same on every call."""
    ids = [*range(81), 255]
    voc = np.array(voc_palette(), np.uint8).reshape(256, 3)
    assert _min_distance(voc[ids]) == 32
    coco = palette.class_palette(81)
    assert _min_distance(coco[ids]) >= 48
    assert np.array_equal(coco[[0, 255]], voc[[0, 255]])  # black background, grey ignore
    assert np.array_equal(coco, palette.class_palette(81))
    with pytest.raises(InputError, match="256 labels"):
        palette.class_palette(256)


def test_the_legend_names_the_labels_present_in_their_colours():
    pal = palette.class_palette(3)
    handles = palette.legend_handles([np.array([[0, 2]]), np.array([[255, 2]])], NAMES, pal)
    assert [h.get_label() for h in handles] == ["background", "dog", "ignore"]
    for h, label in zip(handles, [0, 2, 255], strict=True):
        assert np.allclose(h.get_facecolor()[:3], pal[label] / 255)


def test_sample_title_is_the_images_own_miou_over_the_classes_present():
    gt = np.array([[1, 1], [0, 0]], np.uint8)
    pred = np.array([[1, 255], [0, 0]], np.uint8)  # 255 is scored as background
    # background: 2 right of 3 in the union (2/3); cat: 1 of 2 (1/2); dog: absent.
    title = eval_masks.sample_title("im7", pred, gt, 3)
    assert title == "im7: mIoU 58.3% over the 2 classes present"
    assert eval_masks.sample_title("x", pred, np.full_like(gt, 255), 3).endswith(
        "no labelled pixels"
    )


def test_mask_samples_titles_each_panel_and_shows_a_legend(tmp_path):
    image = np.full((4, 6, 3), 200, np.uint8)
    gt = np.zeros((4, 6), np.uint8)
    gt[:2] = 1
    gt[0, 0] = 255
    pred = gt.copy()
    pred[0, 0] = 0  # under GT ignore: no error
    pred[3, 5] = 2  # a wrong dog pixel
    pred[3, 4] = 255  # ignore, scored as background: right here
    pred[1, 1] = 255  # and wrong here (a cat pixel)
    fig = visuals.mask_samples(tmp_path / "s.png", image, gt, pred, NAMES, title="im0: mIoU")
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == [
        "image", "ground truth", "pseudo mask", "errors (red)",
    ]  # fmt: skip
    assert fig.get_suptitle() == "im0: mIoU"
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["background", "cat", "dog", "ignore"]
    errors = axes[3].get_images()[0].get_array()
    red = np.all(np.isclose(errors, (1, 0, 0)), axis=-1)
    assert np.argwhere(red).tolist() == [[1, 1], [3, 5]]
    assert Image.open(tmp_path / "s.png").size[0] > 0


def test_cam_overlays_colour_coco_labels_apart_with_a_legend(tmp_path):
    names = ["background", *(f"c{k}" for k in range(80))]
    gt = np.zeros((4, 4), np.uint8)
    gt[:2], gt[2:, :2] = 64, 65  # COCO-sized ids, past the VOC palette's 21
    pal = palette.class_palette(len(names))
    fig = visuals.cam_overlays(
        tmp_path / "o.png", np.zeros((4, 4, 3), np.uint8), np.zeros((1, 4, 4)), ["c63"],
        labels=names, gt=gt,
    )  # fmt: skip
    shown = fig.axes[1].get_images()[0].get_array()
    assert np.array_equal(shown[0, 0], pal[64]) and np.array_equal(shown[3, 0], pal[65])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["background", "c63", "c64"]
    assert [ax.get_title() for ax in fig.axes] == ["image", "ground truth", "CAM: c63"]


def test_iou_bars_draw_no_data_apart_from_zero(tmp_path):
    iou = np.array([0.8, np.nan, 0.0, 0.5])
    fig = visuals.iou_bars(tmp_path / "b.png", ["bg", "a", "b", "c"], {"t = 0.1": iou})
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.texts]
    assert labels == [visuals.NO_DATA]
    assert ax.texts[0].get_position()[1] == pytest.approx(1.0)  # on class a's row
    scored = [p for p in ax.patches if p.get_facecolor()[3] > 0]  # hatched slots are hollow
    assert [round(p.get_width(), 6) for p in scored] == [80.0, 0.0, 50.0]
    assert ax.get_legend().get_texts()[0].get_text() == "t = 0.1 (mIoU 43.3)"


def test_threshold_sweep_plots_the_sweep_and_marks_the_best(tmp_path):
    fig = visuals.threshold_sweep(
        tmp_path / "sweep.png", [0.05, 0.1, 0.15], [0.2, 0.35, 0.3],
        best=(0.1, 0.35), fixed=(0.15, 0.3),
    )  # fmt: skip
    sweep, best, _, fixed = fig.axes[0].get_lines()
    assert sweep.get_xdata().tolist() == [0.05, 0.1, 0.15]
    assert sweep.get_ydata() == pytest.approx([20.0, 35.0, 30.0])
    assert (best.get_xdata()[0], best.get_ydata()[0]) == pytest.approx((0.1, 35.0))
    assert (fixed.get_xdata()[0], fixed.get_ydata()[0]) == pytest.approx((0.15, 30.0))
    assert (tmp_path / "sweep.png").stat().st_size > 0


def test_class_iou_writes_a_table_and_bars_with_no_data(tmp_path):
    report = tmp_path / "seg.json"
    per_class = {"background": 0.9, "cat": None, "dog": 0.123456}
    report.write_text(
        json.dumps({"split": "val", "images": 5, "miou": 0.511728, "per_class_iou": per_class})
    )
    out = {"out_html": tmp_path / "t.html", "out_bars": tmp_path / "b.png"}
    assert class_iou.run(report=report, title="segmentation", **out) == per_class
    page = out["out_html"].read_text()
    assert "<tr><td>cat</td><td><em>no data</em></td></tr>" in page
    assert "<tr><td>dog</td><td>12.35</td></tr>" in page
    assert "<strong>51.17</strong>" in page and "val split (5 images)" in page
    assert out["out_bars"].stat().st_size > 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"miou": 0.5}, "no 'per_class_iou'"),
        ({"miou": 0.5, "per_class_iou": {"cat": 1.5}}, r"class 'cat' is 1.5"),
        ({"miou": 0.5, "per_class_iou": {"cat": "high"}}, r"class 'cat' is 'high'"),
    ],
)
def test_class_iou_rejects_a_report_without_per_class_iou(tmp_path, content, message):
    (tmp_path / "r.json").write_text(json.dumps(content))
    out = {"out_html": tmp_path / "t.html", "out_bars": tmp_path / "b.png"}
    with pytest.raises(InputError, match=message):
        class_iou.run(report=tmp_path / "r.json", title="x", **out)
    assert not out["out_html"].exists() and not out["out_bars"].exists()


def _workdir(tmp_path: Path, name: str) -> Path:
    (tmp_path / "config.yaml").write_text("dataset:\n  name: demo\n  shards: 4\n")
    (tmp_path / "other.yaml").write_text(f"dataset:\n  name: {name}\n")
    return tmp_path


def test_report_check_names_what_is_missing(tmp_path):
    work = _workdir(tmp_path, "voc12")
    other = work / "other.yaml"
    run = f"; run `snakemake --configfile {other}` first"
    assert (
        report_ready.missing_results(other, work)
        == f"no results folder results/voc12/ for {other}{run}"
    )
    (work / "results" / "voc12" / "eval").mkdir(parents=True)
    assert report_ready.missing_results(other, work) == (
        f"results/voc12/eval/summary.md missing: the workflow for {other} has not finished{run}"
    )
    (work / "results" / "voc12" / "eval" / "summary.md").write_text("| stage |\n")
    assert report_ready.missing_results(other, work) is None
    default = work / "config.yaml"  # alone: the demo's folder
    assert report_ready.missing_results(default, work).startswith(
        f"no results folder results/demo/ for {default};"
    )
    nowhere = work / "nowhere.yaml"
    assert report_ready.missing_results(nowhere, work) == f"config file {nowhere} not found"


def test_make_report_fails_in_one_line_before_snakemake_starts(tmp_path):
    """`make report CONFIG=...` on a config never run: exit 2 from make (the check's 1), one
    line naming the results folder, and no snakemake command run."""
    config = tmp_path / "fresh.yaml"
    config.write_text("dataset:\n  name: no_such_results_here\n")
    stamp = tmp_path / "stamp"  # newer than pyproject.toml: make installs nothing
    stamp.touch()
    venv = Path(sys.executable).parent.parent
    result = subprocess.run(
        ["make", "-C", str(ROOT), "report", f"CONFIG={config}", f"STAMP={stamp}",
         f"VENV={venv}"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "--report" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith(("make:", "make["))]
    assert lines == [
        f"make report: no results folder results/no_such_results_here/ for {config}; "
        f"run `snakemake --configfile {config}` first"
    ]
