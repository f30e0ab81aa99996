"""Per-class IoU of an evaluation report (pseudo masks, segmentation) for the report: an HTML
table and a bar chart, as eval_cam draws for the CAMs.

Input: a report with "miou" and "per_class_iou" (name → IoU fraction, null where the class is
in neither the ground truth nor the prediction of the split: no data, not a score of 0) and,
when present, "split" and "images". Output: the table (`eval/<what>_per_class.html`, IoU in
%, "no data" for null) and the chart (`eval/<what>_iou.png`, no-data classes hatched).
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import math
from pathlib import Path

import numpy as np

from qaclims import visuals
from qaclims.atomic import atomic_path
from qaclims.errors import InputError

log = logging.getLogger(__name__)

NO_DATA_NOTE = (
    "<em>no data</em>: the class has no ground-truth pixel and no predicted pixel in this "
    "split, so it has no IoU; the mIoU averages the other classes."
)


def read_per_class(path: Path) -> tuple[dict, dict[str, float | None]]:
    """The report and its per-class IoU (fractions, None for no data), checked."""
    try:
        report = json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise InputError(f"{path}: evaluation report not found") from err
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from err
    per_class = report.get("per_class_iou") if isinstance(report, dict) else None
    if not isinstance(per_class, dict) or not per_class:
        raise InputError(f"{path}: no 'per_class_iou' mapping of class name to IoU")
    for name, value in per_class.items():
        ok = value is None or (
            isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1
        )
        if not ok:
            raise InputError(f"{path}: IoU of class '{name}' is {value!r}, not in [0, 1] or null")
    return report, per_class


def _percent(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "<em>no data</em>"
    return f"{100 * value:.2f}"


def html_table(title: str, report: dict, per_class: dict[str, float | None]) -> str:
    """A self-contained HTML page: what was scored, the mIoU, one row per class."""
    where = ""
    if "split" in report and "images" in report:
        where = f" on the {html.escape(str(report['split']))} split ({report['images']} images)"
    rows = "\n".join(
        f"<tr><td>{html.escape(name)}</td><td>{_percent(iou)}</td></tr>"
        for name, iou in per_class.items()
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}: per-class IoU</title>"
        "<style>table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:2px 8px}"
        "td:last-child{text-align:right}</style></head><body>\n"
        f"<h3>{html.escape(title)}: per-class IoU (%){where}</h3>\n"
        f"<p>mIoU: <strong>{_percent(report.get('miou'))}</strong></p>\n"
        f"<table>\n<tr><th>class</th><th>IoU (%)</th></tr>\n{rows}\n</table>\n"
        f"<p>{NO_DATA_NOTE}</p>\n</body></html>\n"
    )


def run(*, report: Path, title: str, out_html: Path, out_bars: Path) -> dict[str, float | None]:
    """Write the per-class table and bar chart of `report`; return its per-class IoU."""
    stored, per_class = read_per_class(report)
    text = html_table(title, stored, per_class)
    iou = np.array([np.nan if v is None else v for v in per_class.values()], dtype=np.float64)
    visuals.iou_bars(out_bars, list(per_class), {title: iou})
    with atomic_path(out_html) as tmp:
        tmp.write_text(text)
    missing = [name for name, v in per_class.items() if v is None]
    log.info("%s: %d classes, %d without data %s", title, len(per_class), len(missing), missing)
    return per_class


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--report", type=Path, required=True, help="eval/<what>.json")
    p.add_argument("--title", required=True, help="what was scored, e.g. 'pseudo masks'")
    p.add_argument("--out-html", type=Path, required=True, help="per-class IoU table")
    p.add_argument("--out-bars", type=Path, required=True, help="per-class IoU bar chart")


def main(args: argparse.Namespace) -> None:
    run(report=args.report, title=args.title, out_html=args.out_html, out_bars=args.out_bars)
