"""IR labels: confident foreground/background from CAMs refined by a dense CRF (ALGORITHM §6).

Input: one CAM shard file (high-res maps) and the images; output: a folder of
`<image_id>.png`, uint8 class ids (0 background, c+1 class c, 255 unsure), written
atomically. Each image is thresholded twice (a high background plane gives the confident
foreground, a low one the confident background), both label maps are refined by a dense CRF
on the original RGB, and the two are combined. Worker processes open the CAM file
themselves and take image ids, so memory stays at one image per worker.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_labels
from tqdm import tqdm

from qaclims.atomic import atomic_dir
from qaclims.cam_store import CamReader, read_cams
from qaclims.errors import InputError
from qaclims.images import read_rgb, save_label_png
from qaclims.metrics import IGNORE
from qaclims.tables import read_manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CRFParams:
    """Dense-CRF settings (labels as unary, Gaussian and bilateral pairwise terms)."""

    gt_prob: float
    iterations: int
    gaussian_sxy: float
    gaussian_compat: float
    bilateral_sxy: float
    bilateral_srgb: float
    bilateral_compat: float


def crf_labels(image: np.ndarray, labels: np.ndarray, n_labels: int, p: CRFParams) -> np.ndarray:
    """Dense-CRF refinement of an H×W map of label indices 0..n_labels-1."""
    height, width = labels.shape
    d = dcrf.DenseCRF2D(width, height, n_labels)
    d.setUnaryEnergy(unary_from_labels(labels, n_labels, gt_prob=p.gt_prob, zero_unsure=False))
    d.addPairwiseGaussian(sxy=p.gaussian_sxy, compat=p.gaussian_compat)
    d.addPairwiseBilateral(
        sxy=p.bilateral_sxy,
        srgb=p.bilateral_srgb,
        rgbim=np.array(image, dtype=np.uint8, order="C"),  # pydensecrf needs a writable copy
        compat=p.bilateral_compat,
    )
    q = np.asarray(d.inference(p.iterations))
    return q.reshape(n_labels, height, width).argmax(axis=0)


def combine(fg_map: np.ndarray, bg_map: np.ndarray) -> np.ndarray:
    """FG map where it says foreground; 255 where only the BG map does; 0 where neither."""
    out = fg_map.astype(np.uint8)
    out[(fg_map == 0) & (bg_map != 0)] = IGNORE
    return out


def ir_label(
    image: np.ndarray,
    high_res: np.ndarray,
    keys: np.ndarray,
    *,
    fg_threshold: float,
    bg_threshold: float,
    params: CRFParams,
) -> np.ndarray:
    """IR label map (0 bg, c+1, 255) of one image from its present-class high-res CAMs."""
    if len(keys) == 0:
        return np.zeros(high_res.shape[1:], dtype=np.uint8)
    ids = np.concatenate([[0], np.asarray(keys) + 1]).astype(np.uint8)
    maps = []
    for threshold in (fg_threshold, bg_threshold):
        plane = np.full((1, *high_res.shape[1:]), threshold, dtype=high_res.dtype)
        labels = np.concatenate([plane, high_res]).argmax(axis=0)
        maps.append(ids[crf_labels(image, labels, len(ids), params)])
    return combine(*maps)


_worker: dict = {}


def _init_worker(cams: Path, out_dir: Path, settings: dict) -> None:
    _worker.update(reader=read_cams(cams), out_dir=out_dir, settings=settings)


def _label_one(task: tuple[str, str]) -> np.ndarray:
    """Write one image's IR label; return its pixel counts of (bg, fg, ignore)."""
    image_id, image_path = task
    reader: CamReader = _worker["reader"]
    rec = reader[image_id]
    image = read_rgb(image_path)
    if image.shape[:2] != rec.high_res.shape[1:]:
        raise InputError(
            f"{image_path}: image is {image.shape[:2]}, its CAMs in {reader.path} are "
            f"{rec.high_res.shape[1:]}"
        )
    label = ir_label(image, rec.high_res, rec.keys, **_worker["settings"])
    save_label_png(label, _worker["out_dir"] / f"{image_id}.png")
    return np.array(
        [(label == 0).sum(), ((label > 0) & (label < IGNORE)).sum(), (label == IGNORE).sum()]
    )


def run(
    *,
    manifest: Path,
    cams: Path,
    out_dir: Path,
    split: str,
    fg_threshold: float,
    bg_threshold: float,
    params: CRFParams,
    workers: int = 1,
) -> dict[str, float | int]:
    """IR labels of every image in a CAM shard file, written into the folder `out_dir`."""
    log.info(
        "crf: %s → %s, fg %.2f, bg %.2f, %s, %d workers",
        cams,
        out_dir,
        fg_threshold,
        bg_threshold,
        params,
        workers,
    )
    paths = {
        r["image_id"]: r["path"]
        for r in read_manifest(manifest, split=split, columns=["image_id", "path"]).to_pylist()
    }
    with read_cams(cams) as reader:
        ids = list(reader.image_ids)
    unknown = [i for i in ids if i not in paths]
    if unknown:
        raise InputError(f"{cams}: image {unknown[0]} is not a '{split}' image of {manifest}")
    tasks = [(i, paths[i]) for i in ids]
    if not tasks:
        log.warning("crf: %s holds no images; writing an empty IR-label folder", cams)
    settings = {"fg_threshold": fg_threshold, "bg_threshold": bg_threshold, "params": params}
    counts = np.zeros(3, dtype=np.int64)
    processes = min(workers, len(tasks))
    start = time.perf_counter()
    with atomic_dir(out_dir) as tmp:
        if processes <= 1:
            _init_worker(cams, tmp, settings)
            results = map(_label_one, tasks)
        else:
            pool = multiprocessing.get_context("spawn").Pool(
                processes, initializer=_init_worker, initargs=(cams, tmp, settings)
            )
            results = pool.imap_unordered(_label_one, tasks)
        try:
            for c in tqdm(results, total=len(tasks), desc="crf", mininterval=30):
                counts += c
        finally:
            if processes <= 1:
                _worker.pop("reader").close()
            else:
                pool.terminate()
                pool.join()
    seconds = time.perf_counter() - start
    total = max(1, int(counts.sum()))
    summary = {
        "images": len(tasks),
        "seconds": round(seconds, 2),
        "images_per_s": round(len(tasks) / max(seconds, 1e-9), 3),
        "background_fraction": round(float(counts[0]) / total, 4),
        "foreground_fraction": round(float(counts[1]) / total, 4),
        "ignore_fraction": round(float(counts[2]) / total, 4),
    }
    log.info("crf: %s", summary)
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--cams", type=Path, required=True, help="CAM shard file")
    p.add_argument("--out", type=Path, required=True, help="folder of <image_id>.png")
    p.add_argument("--split", required=True, help="split the CAM file was made for")
    p.add_argument("--fg-threshold", type=float, required=True)
    p.add_argument("--bg-threshold", type=float, required=True)
    p.add_argument("--gt-prob", type=float, required=True)
    p.add_argument("--iterations", type=int, required=True)
    p.add_argument("--gaussian-sxy", type=float, required=True)
    p.add_argument("--gaussian-compat", type=float, required=True)
    p.add_argument("--bilateral-sxy", type=float, required=True)
    p.add_argument("--bilateral-srgb", type=float, required=True)
    p.add_argument("--bilateral-compat", type=float, required=True)
    p.add_argument("--workers", type=int, default=1, help="CRF processes")


def main(args: argparse.Namespace) -> None:
    run(
        manifest=args.manifest,
        cams=args.cams,
        out_dir=args.out,
        split=args.split,
        fg_threshold=args.fg_threshold,
        bg_threshold=args.bg_threshold,
        params=CRFParams(
            gt_prob=args.gt_prob,
            iterations=args.iterations,
            gaussian_sxy=args.gaussian_sxy,
            gaussian_compat=args.gaussian_compat,
            bilateral_sxy=args.bilateral_sxy,
            bilateral_srgb=args.bilateral_srgb,
            bilateral_compat=args.bilateral_compat,
        ),
        workers=args.workers,
    )
