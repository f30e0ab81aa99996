"""VOC2012 test-server export: every test image predicted under the evaluation protocol.

Input: `models/seg.pt`, the class names, the test list (`ImageSets/Segmentation/test.txt`
of the VOC2012 test download) and its `JPEGImages/`. Output: the folder `results/` holding
`VOC2012/Segmentation/comp6_test_cls/<id>.png` (class ids as a palette PNG with the VOC
colours, the image's size; comp6: trained on data beyond VOC's own, here SBD) and
`results.tgz`, that folder packed for upload. Each is written under a temporary name and
renamed only when complete (the folder first, then the archive).
"""

from __future__ import annotations

import argparse
import gzip
import logging
import tarfile
from pathlib import Path

from tqdm import tqdm

from qaclims.atomic import atomic_dir, atomic_path
from qaclims.devices import limit_cpu_threads, pick_device
from qaclims.errors import InputError
from qaclims.images import read_rgb, save_label_png, voc_palette
from qaclims.models.seg_net import load_seg_net
from qaclims.seg_predict import Protocol, add_protocol_arguments, predict_labels, protocol_from_args
from qaclims.tables import read_class_names

log = logging.getLogger(__name__)

SUBMISSION = Path("VOC2012/Segmentation/comp6_test_cls")


def listed_images(test_list: Path, images: Path) -> list[tuple[str, Path]]:
    """(image id, JPEG path) of every id in `test_list`, each image checked to exist."""
    if not Path(test_list).is_file():
        raise InputError(f"{test_list}: VOC test image list not found")
    ids = [line.split()[0] for line in Path(test_list).read_text().splitlines() if line.strip()]
    if not ids:
        raise InputError(f"{test_list}: no image ids")
    pairs = [(i, Path(images) / f"{i}.jpg") for i in ids]
    missing = [str(p) for _, p in pairs if not p.is_file()]
    if missing:
        raise InputError(f"{len(missing)} test images of {test_list} missing (first: {missing[0]})")
    return pairs


def _pack(folder: Path, archive: Path) -> None:
    """`folder` as `results/...` in a gzipped tar; sorted, owner and times zeroed."""

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    with (
        archive.open("wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        tar.add(folder, arcname="results", filter=clean, recursive=False)
        for path in sorted(folder.rglob("*")):
            name = str("results" / path.relative_to(folder))
            tar.add(path, arcname=name, filter=clean, recursive=False)


def run(
    *,
    model: Path,
    classes: Path,
    test_list: Path,
    images: Path,
    out_dir: Path,
    out_tar: Path,
    depth: int,
    protocol: Protocol,
    arch: str = "deeplabv3",
    precision: str = "fp32",
) -> dict[str, object]:
    """Predict every image of `test_list`; write the submission folder and its archive."""
    pairs = listed_images(test_list, images)
    num_classes = len(read_class_names(classes)) + 1
    device = pick_device()
    net = load_seg_net(model, num_classes, depth=depth, arch=arch).eval().to(device)
    palette = voc_palette()
    log.info("export_voc: %d test images on %s, %s", len(pairs), device, protocol.record())
    # The folder is renamed into place first (inner context), the archive last.
    with atomic_path(out_tar, suffix=".tgz") as tar_tmp, atomic_dir(out_dir) as tmp:
        target = tmp / SUBMISSION
        target.mkdir(parents=True)
        for image_id, path in tqdm(pairs, desc="export_voc", mininterval=30):
            labels = predict_labels(net, read_rgb(path), protocol, device, precision)
            save_label_png(labels, target / f"{image_id}.png", palette)
        _pack(tmp, tar_tmp)
    log.info("export_voc: %s, %s", out_dir, out_tar)
    return {"images": len(pairs), "folder": str(out_dir), "archive": str(out_tar)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, help="models/seg.pt")
    p.add_argument("--classes", type=Path, required=True)
    p.add_argument("--test-list", type=Path, required=True, help="ImageSets/Segmentation/test.txt")
    p.add_argument("--images", type=Path, required=True, help="JPEGImages folder of the test set")
    p.add_argument("--out-dir", type=Path, required=True, help="the submission's results/ folder")
    p.add_argument("--out-tar", type=Path, required=True, help="that folder as .tgz")
    add_protocol_arguments(p)


def main(args: argparse.Namespace) -> None:
    limit_cpu_threads(args.threads)
    run(
        model=args.model, classes=args.classes, test_list=args.test_list, images=args.images,
        out_dir=args.out_dir, out_tar=args.out_tar, depth=args.depth,
        protocol=protocol_from_args(args), arch=args.arch, precision=args.precision,
    )  # fmt: skip
