"""A table of headline numbers: mIoU per stage, e.g. baseline and RITC CAMs, pseudo masks and
segmentation (ALGORITHM §10), or the RITC ablations.

Input: the stage names and one evaluation report per stage, in the same order (`eval/cam.json`
and the like, each with "split", "images" and "miou"). A CAM report (one with "bg_threshold")
gives two rows: its mIoU at the configured threshold, and as `<stage>, best t` the best of
its threshold sweep ("best_threshold", "best_miou"; the reference's `--eval_cam_best`).
Output: the table printed to stdout and written as Markdown (`eval/summary.md`, with a
threshold column when some row has one) and as JSON rows `{"stage", "split", "images",
"miou"}` with mIoU in %, plus "threshold" on CAM rows (`eval/summary.json`), so that scripts
need not parse the Markdown.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qaclims.atomic import atomic_path
from qaclims.errors import InputError

log = logging.getLogger(__name__)


def _read(path: Path) -> dict:
    try:
        report = json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise InputError(f"{path}: evaluation report not found") from err
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from err
    missing = [k for k in ("split", "images", "miou") if k not in report]
    if missing:
        raise InputError(f"{path}: keys {missing} missing")
    return report


def row(stage: str, report: dict) -> dict[str, Any]:
    """One row of a report: its split, images and mIoU in % (None where it has none).

    Reports keep six decimals of the fraction: four of the percentage lose nothing.
    """
    miou = report["miou"]
    return {
        "stage": stage,
        "split": report["split"],
        "images": report["images"],
        "miou": None if miou is None else round(100 * miou, 4),
    }


def report_rows(stage: str, report: dict) -> list[dict[str, Any]]:
    """The rows of one report: one, or for a CAM report its configured and best threshold."""
    if "bg_threshold" not in report:
        return [row(stage, report)]
    rows = [{**row(stage, report), "threshold": report["bg_threshold"]}]
    if "best_threshold" in report and "best_miou" in report:
        best = row(f"{stage}, best t", {**report, "miou": report["best_miou"]})
        rows.append({**best, "threshold": report["best_threshold"]})
    return rows


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table: stage, split, images, the threshold if any row has one, mIoU (%)."""
    thresholds = any("threshold" in r for r in rows)
    head = ["stage", "split", "images", *(["threshold"] if thresholds else []), "mIoU (%)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["stage"], r["split"], r["images"]]
        if thresholds:
            cells.append(f"{r['threshold']:g}" if "threshold" in r else "—")
        cells.append("n/a" if r["miou"] is None else f"{r['miou']:.2f}")
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def run(
    *, stages: Sequence[str], reports: Sequence[Path], out_md: Path, out_json: Path
) -> list[dict[str, Any]]:
    """Print the table of `stages` (one report each), write it as Markdown and JSON rows."""
    if len(stages) != len(reports):
        raise InputError(f"{len(stages)} stage names for {len(reports)} reports")
    rows = [
        r
        for stage, path in zip(stages, reports, strict=True)
        for r in report_rows(stage, _read(path))
    ]
    text = table(rows)
    with atomic_path(out_md) as tmp:
        tmp.write_text(text)
    with atomic_path(out_json) as tmp:
        tmp.write_text(json.dumps(rows, indent=2) + "\n")
    print(text, end="")
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stages", nargs="+", required=True, help="row names, one per report")
    p.add_argument("--reports", type=Path, nargs="+", required=True, help="eval/*.json")
    p.add_argument("--out-md", type=Path, required=True, help="Markdown table")
    p.add_argument("--out-json", type=Path, required=True, help="the rows as JSON")


def main(args: argparse.Namespace) -> None:
    rows = run(stages=args.stages, reports=args.reports, out_md=args.out_md, out_json=args.out_json)
    log.info("summary: %s", {r["stage"]: r["miou"] for r in rows})
