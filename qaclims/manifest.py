"""Build `manifest.parquet` and `classes.parquet` from a dataset root.

One row per (image, split), with the image size, the image-level labels (class ids from
0), where they came from and the ground-truth mask if any. No shard is stored: per-shard
stages take an image's shard as a hash of its id (`tables.shard_of`), so the manifest does
not depend on `dataset.shards`, and adding images never moves the ones already there.
Everything is read and checked before anything is written, so bad input leaves no manifest.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from pathlib import Path

import pyarrow as pa

from qaclims.atomic import atomic_dir
from qaclims.datasets import coco, voc
from qaclims.errors import InputError
from qaclims.tables import CLASSES_SCHEMA, MANIFEST_SCHEMA, write_table

log = logging.getLogger(__name__)

KINDS = ("demo", "voc12", "coco14")


def run(
    kind: str,
    root: Path,
    manifest: Path,
    classes: Path,
    *,
    gt_dir: Path | None = None,
    sbd_root: Path | None = None,
    max_images: int | None = None,
    verify_images: bool = True,
    workers: int = 4,
) -> dict[str, int]:
    """Write the manifest and class-name tables (and COCO's GT maps to `gt_dir`).

    Returns the number of images per split.
    """
    if kind not in KINDS:
        raise InputError(f"dataset kind '{kind}' is not one of {KINDS}")
    if not root.is_dir():
        raise InputError(f"{root}: dataset root not found")
    if kind == "coco14":
        if gt_dir is None:
            raise InputError("coco14 needs a folder for its ground-truth label maps (--gt-dir)")
        with atomic_dir(gt_dir) as staging:
            rows, names = coco.read(
                root,
                gt_dir=gt_dir,
                staging_dir=staging,
                max_images=max_images,
                verify_images=verify_images,
                workers=workers,
            )
    else:
        rows, names = voc.read(root, sbd_root, verify_images=verify_images, workers=workers)
    _write(rows, names, manifest, classes)
    counts = dict(Counter(r["split"] for r in rows))
    log.info("manifest of %s: %s images per split, %d classes", root, counts, len(names))
    return counts


def _write(rows: list[dict], names: tuple[str, ...], manifest: Path, classes: Path) -> None:
    if not rows:
        raise InputError("the dataset lists no images")
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    write_table(table, manifest, MANIFEST_SCHEMA)
    names_table = pa.table({"class_id": list(range(len(names))), "name": list(names)})
    write_table(names_table, classes, CLASSES_SCHEMA)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", choices=KINDS, required=True)
    p.add_argument("--root", type=Path, required=True, help="dataset root")
    p.add_argument("--manifest", type=Path, required=True, help="manifest.parquet to write")
    p.add_argument("--classes", type=Path, required=True, help="classes.parquet to write")
    p.add_argument("--gt-dir", type=Path, default=None, help="coco14: GT label maps to write")
    p.add_argument("--sbd-root", type=Path, default=None)
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--verify-images", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--workers", type=int, default=4)


def main(args: argparse.Namespace) -> None:
    run(
        args.kind,
        args.root,
        args.manifest,
        args.classes,
        gt_dir=args.gt_dir,
        sbd_root=args.sbd_root,
        max_images=args.max_images,
        verify_images=args.verify_images,
        workers=args.workers,
    )
