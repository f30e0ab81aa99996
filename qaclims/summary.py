"""One table of the headline numbers: CAM, pseudo-mask and segmentation mIoU (ALGORITHM §10).

Input: `eval/cam.json`, `eval/pseudo_masks.json` and, when segmentation ran, `eval/seg.json`
(each with "split", "images" and "miou"). Output: the table printed to stdout and written as
Markdown (`eval/summary.md`).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

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


def table(rows: list[tuple[str, dict]]) -> str:
    """Markdown table: stage, split, images, mIoU (%)."""
    lines = ["| stage | split | images | mIoU (%) |", "|---|---|---|---|"]
    for name, report in rows:
        miou = report["miou"]
        value = "n/a" if miou is None else f"{100 * miou:.2f}"
        lines.append(f"| {name} | {report['split']} | {report['images']} | {value} |")
    return "\n".join(lines) + "\n"


def run(*, cam: Path, pseudo_masks: Path, seg: Path | None, out: Path) -> dict[str, float]:
    """Print and write the table; return the mIoUs by stage."""
    rows = [("CAM", _read(cam)), ("pseudo mask", _read(pseudo_masks))]
    if seg is not None:
        rows.append(("segmentation", _read(seg)))
    text = table(rows)
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    print(text, end="")
    return {name: report["miou"] for name, report in rows}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cam", type=Path, required=True, help="eval/cam.json")
    p.add_argument("--pseudo-masks", type=Path, required=True, help="eval/pseudo_masks.json")
    p.add_argument("--seg", type=Path, default=None, help="eval/seg.json (if trained)")
    p.add_argument("--out", type=Path, required=True, help="Markdown table")


def main(args: argparse.Namespace) -> None:
    summary = run(cam=args.cam, pseudo_masks=args.pseudo_masks, seg=args.seg, out=args.out)
    log.info("summary: %s", summary)
