"""Peak memory and disk of the stages that grow with the dataset, at COCO 2014 size, simulated.

Builds a synthetic COCO 2014 root in a temporary folder: `instances_{train,val}2014.json`
with the real image counts (82,783 + 40,504), sizes drawn around 640×480 as COCO's, the 80
categories with COCO's non-contiguous ids, ~7.3 annotations (~2.9 classes) an image as
28-vertex polygons (~1 % crowd RLEs), and one textured JPEG per distinct image size,
hard-linked under every file name (the manifest reads each header, the CRF decodes its
sample). Each stage then runs as its own child process on the project's code, and the table
gives the child's peak RSS from `os.wait4` (ru_maxrss: the largest single process of the job,
its reaped worker processes included) and, sampled from /proc every 0.1 s, the peak summed
over the job's process tree (what a SLURM memory limit sees):

- manifest: `python -m qaclims manifest` over every image (`max_images` null), GT maps too;
- CAM storage: `cam_store.write_cams` of shard 0 at several sizes, the last the full shard
  `--shards` gives, real sizes and labels from the manifest; maps: a ReLU'd Gaussian field at
  stride 16 (smooth over ~64 px, about half of each map exactly 0 like a CAM's background),
  upsampled bilinearly to H×W and ⌈H/4⌉×⌈W/4⌉, max-normalised; float16 and uint8;
- CAM evaluation: `python -m qaclims eval_cam` with the COCO sweep over 1 and over N shard
  files, against the GT maps the manifest stage painted;
- CRF: `python -m qaclims crf` on a sample of shard 0 with 1 and 2 worker processes;
- pseudo masks: bytes of the palette PNGs `images.save_label_png` writes for
  argmax([bg plane, CAMs]) maps, as the pseudo_masks stage does.

Sizes are projected to all of COCO's 82,783 train images and to per-shard jobs at `--shards`
(configs/coco14.yaml) and `--alt-shards`; the table marks what is measured and what is
projected. GB and MB are 10^9 and 10^6 bytes.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_coco.py [--shards 64 --alt-shards 32 128]

On two busy cores the default run takes ~25 min, ~17 of them the manifest stage painting the
GT maps of all 123,287 images (its real work at this size); it needs ~3 GB of disk and ~4 GB
of RAM. `--train-images`/`--val-images` shrink the dataset to develop.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qaclims.cam_store import CamRecord, read_cams, strided_size, write_cams  # noqa: E402
from qaclims.config import merge  # noqa: E402
from qaclims.images import save_label_png, voc_palette  # noqa: E402
from qaclims.tables import MANIFEST_SCHEMA, read_manifest, read_table, write_table  # noqa: E402

TRAIN, VAL = "train2014", "val2014"
COCO_IMAGES = {TRAIN: 82783, VAL: 40504}
CLASSES_PER_IMAGE = 2.9
ANNOTATIONS_PER_IMAGE = 7.3
POLYGON_VERTICES = 28
CROWD_FRACTION = 0.01
GB, MB = 1e9, 1e6
RSS_GOAL, STORAGE_GOAL = 16 * GB, 40 * GB
PAGE = os.sysconf("SC_PAGE_SIZE")
CATEGORY_NAMES = (  # position + 1 is COCO's category id; "-" marks the ten unused ids
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant "
    "- stop_sign parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe "
    "- backpack umbrella - - handbag tie suitcase frisbee skis snowboard sports_ball kite "
    "baseball_bat baseball_glove skateboard surfboard tennis_racket bottle - wine_glass cup "
    "fork knife spoon bowl banana apple sandwich orange broccoli carrot hot_dog pizza donut "
    "cake chair couch potted_plant bed - dining_table - - toilet - tv laptop mouse remote "
    "keyboard cell_phone microwave oven toaster sink refrigerator - book clock vase scissors "
    "teddy_bear hair_drier toothbrush"
)


def load_config() -> dict:
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    merge(config, yaml.safe_load((ROOT / "configs" / "coco14.yaml").read_text()))
    return config


# --- synthetic COCO root -------------------------------------------------------------------


def categories() -> list[dict]:
    return [
        {"supercategory": "thing", "id": i + 1, "name": name.replace("_", " ")}
        for i, name in enumerate(CATEGORY_NAMES.split())
        if name != "-"
    ]


def image_sizes(count: int, rng: np.random.Generator) -> np.ndarray:
    """count × (height, width): long side 640, short side 480 for half, else 333..479."""
    short = np.where(rng.random(count) < 0.5, 480, rng.integers(333, 480, count))
    landscape = rng.random(count) < 0.75
    return np.stack([np.where(landscape, short, 640), np.where(landscape, 640, short)], 1)


def image_classes(count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Category indices (0..79) of each image: ~1 % none, else 1 + Poisson, Zipf-weighted."""
    weights = 1.0 / np.arange(1, 81) ** 0.8
    weights[0] = 8.0  # person: in ~half of COCO's images
    weights /= weights.sum()
    mean_extra = (CLASSES_PER_IMAGE / 0.99) - 1
    counts = np.where(rng.random(count) < 0.01, 0, 1 + rng.poisson(mean_extra, count))
    return [rng.choice(80, size=min(k, 80), replace=False, p=weights) for k in counts]


def polygons(heights: np.ndarray, widths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """n × 28 × (x, y) star-shaped polygons, radius 8..150 px, clipped to their image."""
    n = len(heights)
    cx, cy = rng.random(n) * widths, rng.random(n) * heights
    radius = np.exp(rng.uniform(np.log(8), np.log(150), n))
    angle = np.sort(rng.uniform(0, 2 * np.pi, (n, POLYGON_VERTICES)), axis=1)
    r = radius[:, None] * rng.uniform(0.6, 1.0, (n, POLYGON_VERTICES))
    x = np.clip(cx[:, None] + r * np.cos(angle), 0, widths[:, None])
    y = np.clip(cy[:, None] + r * np.sin(angle), 0, heights[:, None])
    return np.round(np.stack([x, y], axis=2), 2)


def crowd_rle(height: int, width: int, rng: np.random.Generator) -> tuple[dict, list, float]:
    """An uncompressed, column-major RLE of a random box, as COCO stores crowds."""
    y0, x0 = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
    bh, bw = int(rng.integers(20, height - y0)), int(rng.integers(20, width - x0))
    counts = [x0 * height + y0, bh]
    counts += [height - bh, bh] * (bw - 1)
    counts.append(height * width - sum(counts))
    return {"counts": counts, "size": [height, width]}, [x0, y0, bw, bh], float(bh * bw)


def annotations(
    image_ids: np.ndarray, sizes: np.ndarray, classes: list[np.ndarray], rng: np.random.Generator
) -> Iterator[dict]:
    """COCO annotation dicts: each present class once, the rest spread over the classes."""
    cat_ids = [c["id"] for c in categories()]
    extra = np.maximum(ANNOTATIONS_PER_IMAGE - CLASSES_PER_IMAGE, 0) / CLASSES_PER_IMAGE
    per_image = [np.repeat(c, 1 + rng.poisson(extra, len(c))) for c in classes]
    owner = np.repeat(np.arange(len(image_ids)), [len(c) for c in per_image])
    cats = np.concatenate(per_image)
    heights, widths = sizes[owner, 0], sizes[owner, 1]
    polys = polygons(heights, widths, rng)
    x, y = polys[..., 0], polys[..., 1]
    areas = 0.5 * np.abs((x * np.roll(y, -1, 1) - np.roll(x, -1, 1) * y).sum(1))
    crowd = rng.random(len(owner)) < CROWD_FRACTION
    for k in range(len(owner)):
        ann = {"image_id": int(image_ids[owner[k]]), "category_id": cat_ids[cats[k]]}
        if crowd[k]:
            segm, bbox, area = crowd_rle(int(heights[k]), int(widths[k]), rng)
            ann.update(segmentation=segm, area=area, bbox=bbox, iscrowd=1)
        else:
            x0, y0 = float(x[k].min()), float(y[k].min())
            box = [x0, y0, round(float(x[k].max()) - x0, 2), round(float(y[k].max()) - y0, 2)]
            ann.update(segmentation=[polys[k].ravel().tolist()], area=float(areas[k]))
            ann.update(bbox=box, iscrowd=0)
        yield {**ann, "id": k + 1}


def write_instances(path: Path, images: list[dict], anns: Iterator[dict]) -> int:
    """Stream the annotation file (chunks of annotations); return the annotation count."""
    count = 0
    with path.open("w") as fh:
        fh.write('{"info": {}, "licenses": [], "images": ')
        fh.write(json.dumps(images))
        fh.write(', "annotations": [')
        chunk: list[dict] = []
        for ann in anns:
            chunk.append(ann)
            if len(chunk) == 20000:
                fh.write(("," if count else "") + json.dumps(chunk)[1:-1])
                count += len(chunk)
                chunk = []
        if chunk:
            fh.write(("," if count else "") + json.dumps(chunk)[1:-1])
            count += len(chunk)
        fh.write('], "categories": ' + json.dumps(categories()) + "}")
    return count


def template_jpeg(path: Path, height: int, width: int, rng: np.random.Generator) -> None:
    """A JPEG of smooth colour regions (~48 px) with mild noise (σ 3): the CRF's bilateral
    term costs more the more distinct colours an image has (σ 8 noise: ~2× slower)."""
    coarse = rng.uniform(0, 255, (3, math.ceil(height / 48) + 1, math.ceil(width / 48) + 1))
    smooth = bilinear(coarse.astype(np.float32), height, width)
    pixels = smooth.transpose(1, 2, 0) + rng.normal(0, 3, (height, width, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)


@dataclass(frozen=True)
class Dataset:
    root: Path
    json_bytes: dict[str, int]
    annotations: dict[str, int]


def build_coco(root: Path, counts: dict[str, int], seed: int) -> Dataset:
    """The synthetic COCO root: annotation files, and every image as a hard link."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(600_000, size=sum(counts.values()), replace=False) + 1
    templates = root / "templates"
    templates.mkdir(parents=True)
    (root / "annotations").mkdir()
    json_bytes, n_anns = {}, {}
    for split, count in counts.items():
        split_ids, ids = np.sort(ids[:count]), ids[count:]
        sizes = image_sizes(count, rng)
        images = []
        (root / split).mkdir()
        for image_id, (h, w) in zip(split_ids.tolist(), sizes.tolist(), strict=True):
            name = f"COCO_{split}_{image_id:012d}.jpg"
            template = templates / f"{h}x{w}.jpg"
            if not template.exists():
                template_jpeg(template, h, w, rng)
            os.link(template, root / split / name)
            images.append({"license": 1, "file_name": name, "height": h, "width": w})
            images[-1].update(date_captured="2013-11-14 16:28:13", id=image_id)
        path = root / "annotations" / f"instances_{split}.json"
        anns = annotations(split_ids, sizes, image_classes(count, rng), rng)
        n_anns[split] = write_instances(path, images, anns)
        json_bytes[split] = path.stat().st_size
    return Dataset(root, json_bytes, n_anns)


# --- synthetic CAMs (imported by the CAM-writer child) -------------------------------------


def bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
    """out × in weights of bilinear resampling with align_corners=False (F.interpolate's)."""
    src = np.clip((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0, in_size - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, in_size - 1)
    m = np.zeros((out_size, in_size), np.float32)
    np.add.at(m, (np.arange(out_size), lo), 1 - src + lo)
    np.add.at(m, (np.arange(out_size), hi), src - lo)
    return m


def bilinear(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """K×h×w → K×height×width, bilinear."""
    rows = bilinear_matrix(height, maps.shape[1])
    cols = bilinear_matrix(width, maps.shape[2])
    return rows @ maps @ cols.T


def synthetic_cams(image_id: str, height: int, width: int, keys: Sequence[int]) -> CamRecord:
    """CAM-like maps of the present classes: smooth ReLU'd noise at stride 16, upsampled."""
    rng = np.random.default_rng(zlib.crc32(image_id.encode()))
    k = len(keys)
    coarse = rng.standard_normal((k, math.ceil(height / 64) + 1, math.ceil(width / 64) + 1))
    low = np.maximum(bilinear(coarse.astype(np.float32), -(-height // 16), -(-width // 16)), 0)
    strided = bilinear(low, *strided_size(height, width))
    high_res = bilinear(low, height, width)

    def normalised(maps: np.ndarray) -> np.ndarray:
        return maps / (maps.max(axis=(1, 2), keepdims=True, initial=0) + 1e-5)

    return CamRecord(np.asarray(keys, np.int64), normalised(strided), normalised(high_res))


def shard_rows(manifest: str, shard: int, shards: int, images: int) -> list[dict]:
    """The first `images` train2014 rows of a shard, in the cams stage's order."""
    table = read_manifest(
        manifest,
        split=TRAIN,
        shard=shard,
        shards=shards,
        columns=["image_id", "path", "height", "width", "labels"],
    )
    return table.slice(0, images).to_pylist()


def write_cam_shard(
    manifest: str, out: str, shard: int, shards: int, images: int, storage: str
) -> None:
    """The CAM-writer job: synthetic CAMs of a shard's first images, through write_cams."""
    rows = shard_rows(manifest, shard, shards, images)
    records = (
        (r["image_id"], synthetic_cams(r["image_id"], r["height"], r["width"], r["labels"]))
        for r in rows
    )
    write_cams(out, records, storage=storage)


# --- running and measuring child jobs ------------------------------------------------------


def tree_rss(root: int) -> int:
    """Summed RSS of the descendants of `root` (the job under its measuring wrapper)."""
    parent, rss = {}, {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(entry.name)], rss[int(entry.name)] = int(fields[1]), int(fields[21]) * PAGE
    tree, frontier = set(), {root}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier and p not in tree}
        tree |= frontier
    return sum(rss.get(p, 0) for p in tree)


class TreeSampler(threading.Thread):
    """Peak of `tree_rss(pid)`, sampled every 0.1 s until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self._stop_event = pid, 0, threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.1):
            self.peak = max(self.peak, tree_rss(self.pid))

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


@dataclass(frozen=True)
class Job:
    name: str
    images: int
    seconds: float
    max_rss: int  # bytes, os.wait4 ru_maxrss
    tree_rss: int  # bytes, sampled peak of the process tree's sum

    @property
    def peak(self) -> int:
        return max(self.max_rss, self.tree_rss)


# A child's ru_maxrss starts at the hiwater RSS of the process it was forked from (Linux
# carries the old mm's peak across exec), here this benchmark's, which holds the generated
# annotations. So each job is forked by this small fresh interpreter, which waits for it
# with os.wait4 and writes its ru_maxrss (KiB) to the file argv[1].
WRAPPER = """
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as fh:
    fh.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


def run_job(name: str, images: int, cmd: list[str], log: Path) -> Job:
    """Run one stage as a child process; its time and peak memory."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    log.parent.mkdir(parents=True, exist_ok=True)
    maxrss = log.with_suffix(".maxrss")
    start = time.perf_counter()
    with log.open("w") as fh:
        wrapper = [sys.executable, "-I", "-c", WRAPPER, str(maxrss), *cmd]
        proc = subprocess.Popen(wrapper, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    returncode = proc.wait()
    seconds = time.perf_counter() - start
    peak = sampler.stop()
    if returncode:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"{name} failed with exit status {returncode}:\n{tail}")
    job = Job(name, images, seconds, int(maxrss.read_text()) * 1024, peak)
    print(
        f"  {name}: {images} images, {seconds:.1f} s, peak RSS {job.max_rss / MB:.0f} MB "
        f"(process tree {job.tree_rss / MB:.0f} MB)",
        flush=True,
    )
    return job


def qaclims(stage: str, **flags: object) -> list[str]:
    """`python -m qaclims <stage> --flag value ...`; a list value becomes several values."""
    cmd = [sys.executable, "-m", "qaclims", stage]
    for key, value in flags.items():
        cmd.append(f"--{key.replace('_', '-')}")
        cmd += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return cmd


def cam_writer(
    manifest: Path, out: Path, shard: int, shards: int, images: int, storage: str
) -> list[str]:
    """A `python -c` command running `write_cam_shard` in a fresh interpreter."""
    args = {"manifest": str(manifest), "out": str(out), "shard": shard, "shards": shards}
    args.update(images=images, storage=storage)
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_coco; "
        f"bench_coco.write_cam_shard(**{args!r})"
    )
    return [sys.executable, "-c", code]


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --- the stages ----------------------------------------------------------------------------


def bench_manifest(work: Path, data: Dataset, images: int, args: argparse.Namespace) -> Job:
    """The manifest stage over every image of the synthetic root (max_images null)."""
    out = work / "results"
    cmd = qaclims(
        "manifest",
        kind="coco14",
        root=data.root,
        manifest=out / "manifest.parquet",
        classes=out / "classes.parquet",
        gt_dir=out / "gt_masks",
        workers=args.manifest_workers,
    )
    cmd.append("--verify-images" if args.verify_images else "--no-verify-images")
    verify = "on" if args.verify_images else "off"
    name = f"manifest (max_images null, {args.manifest_workers} threads, verify {verify})"
    return run_job(name, images, cmd, work / "manifest.log")


@dataclass(frozen=True)
class CamFile:
    job: Job
    path: Path
    size: int  # bytes


def write_cam_file(work: Path, shard: int, shards: int, images: int, storage: str) -> CamFile:
    """One CAM-writer job: the first `images` images of `shard` into a new file."""
    path = work / "cams" / f"{storage}-shard{shard}-{images}.npz"
    cmd = cam_writer(work / "results" / "manifest.parquet", path, shard, shards, images, storage)
    job = run_job(f"write_cams {storage}, shard {shard}", images, cmd, path.with_suffix(".log"))
    return CamFile(job, path, path.stat().st_size)


def bench_cam_storage(
    work: Path, shards: int, sizes: Sequence[int], storages: Sequence[str]
) -> dict[str, list[CamFile]]:
    """Shard 0's first images at each size in the first storage, the largest in the others."""
    return {
        storage: [
            write_cam_file(work, 0, shards, n, storage)
            for n in (sizes if storage == storages[0] else sizes[-1:])
        ]
        for storage in storages
    }


def eval_manifest(work: Path, evaluated: set[str], name: str) -> Path:
    """The manifest with masks only for the evaluated images (eval_cam wants CAMs for every
    masked image); every other row stays, so the job reads the full split as on COCO."""
    rows = read_table(work / "results" / "manifest.parquet", MANIFEST_SCHEMA)
    keep = pc.is_in(rows.column("image_id"), value_set=pa.array(sorted(evaluated)))
    rows = rows.set_column(rows.schema.get_field_index("has_mask"), "has_mask", keep)
    path = work / f"{name}.parquet"
    write_table(rows, path, MANIFEST_SCHEMA)
    return path


def eval_job(work: Path, config: dict, files: Sequence[Path]) -> Job:
    """The eval_cam stage (config cam_eval settings) over `files`."""
    ids = set()
    for path in files:
        with read_cams(path) as reader:
            ids.update(reader.image_ids)
    name = f"eval-{len(files)}"
    out = work / name
    cmd = qaclims(
        "eval_cam",
        manifest=eval_manifest(work, ids, f"{name}-manifest"),
        classes=work / "results" / "classes.parquet",
        cams=list(files),
        split=config["dataset"]["eval_split"],
        **config["cam_eval"],
        out_json=out / "cam.json",
        out_csv=out / "cam.csv",
        out_bars=out / "iou.png",
        out_vis=out / "vis",
    )
    label = f"eval_cam, {len(files)} CAM file{'s' if len(files) > 1 else ''}"
    return run_job(label, len(ids), cmd, work / f"{name}.log")


def bench_eval(
    work: Path, config: dict, shards: int, stored: list[CamFile], files: int, images: int
) -> list[Job]:
    """eval_cam over the smallest stored file, then over the largest plus `files` - 1 files
    of `images` images from shards 1, 2, ..."""
    storage = config["cam_infer"]["storage"]
    more = [write_cam_file(work, k, shards, images, storage) for k in range(1, files)]
    return [
        eval_job(work, config, [stored[0].path]),
        eval_job(work, config, [stored[-1].path, *(f.path for f in more)]),
    ]


def bench_crf(
    work: Path, config: dict, shards: int, images: int, workers: Sequence[int]
) -> list[tuple[int, Job, int]]:
    """The crf stage on a sample CAM file: (workers, job, IR-label bytes) per worker count."""
    manifest = work / "results" / "manifest.parquet"
    cams = write_cam_file(work, 0, shards, images, config["cam_infer"]["storage"]).path
    settings = {k: v for k, v in config["crf"].items() if k != "threads"}
    results = []
    for w in workers:
        out = work / "crf" / f"ir-{w}"
        cmd = qaclims(
            "crf", manifest=manifest, cams=cams, out=out, split=TRAIN, workers=w, **settings
        )
        name = f"crf, {w} worker{'s' if w > 1 else ''}"
        results.append((w, run_job(name, images, cmd, work / f"crf-{w}.log"), folder_bytes(out)))
    return results


def pseudo_mask_bytes(work: Path, config: dict, shards: int, images: int) -> int:
    """Bytes of the palette PNGs of argmax([bg plane, CAMs]) for a shard's first images."""
    rows = shard_rows(str(work / "results" / "manifest.parquet"), 0, shards, images)
    out = work / "pseudo_masks"
    out.mkdir()
    palette, bg = voc_palette(), config["pseudo_masks"]["bg_threshold"]
    for r in rows:
        rec = synthetic_cams(r["image_id"], r["height"], r["width"], r["labels"])
        plane = np.full((1, *rec.high_res.shape[1:]), bg, np.float32)
        ids = np.concatenate([[0], rec.keys + 1]).astype(np.uint8)
        mask = ids[np.concatenate([plane, rec.high_res]).argmax(axis=0)]
        save_label_png(mask, out / f"{r['image_id']}.png", palette)
    return folder_bytes(out)


# --- report --------------------------------------------------------------------------------


def projected_peak(points: Sequence[tuple[float, float]], at: float) -> float:
    """A peak at x = at from measured (x, peak) points: the least-squares line there, never
    below the largest measured peak (a falling line is noise: a peak does not shrink)."""
    xs, ys = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    if len(set(xs.tolist())) < 2:
        return float(ys.max())
    slope, intercept = np.polyfit(xs, ys, 1)
    return max(float(slope * at + intercept), float(ys.max()))


def gb(value: float) -> str:
    return f"{value / GB:.2f} GB"


def mb(value: float) -> str:
    return f"{value / MB:,.0f} MB"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )


def declared(config: dict, rule: str, threads: int = 0) -> str:
    """The scheduler memory a rule asks for (config mem_mb), if the config has it."""
    mem = config.get("mem_mb", {})
    if rule not in mem:
        return "-"
    return f"{(mem[rule] + mem.get(f'{rule}_per_thread', 0) * threads) / 1000:.1f} GB"


@dataclass(frozen=True)
class Measured:
    images: dict[str, int]  # per split
    shard_images: int
    classes_per_image: float
    manifest: Job
    manifest_bytes: int
    gt_bytes: int
    cams: dict[str, list[CamFile]]  # per storage, ascending size; the first is the config's
    evals: list[Job]
    crfs: list[tuple[int, Job, int]]  # (workers, job, IR-label bytes)
    crf_seconds_per_image: float  # the stage's own labelling time × workers, first run
    mask_bytes_per_image: float


def crf_cpu_per_image(work: Path, workers: int, images: int) -> float:
    """CPU seconds an image from the labelling time the crf stage logs (start-up excluded)."""
    log = work / f"crf-{workers}.log"
    match = re.search(r"'seconds': ([0-9.]+)", log.read_text())
    if match is None:
        raise SystemExit(f"{log}: no crf summary line")
    return float(match.group(1)) * workers / images


def measure(work: Path, config: dict, args: argparse.Namespace) -> Measured:
    counts = {TRAIN: args.train_images, VAL: args.val_images}
    start = time.perf_counter()
    data = build_coco(work / "coco", counts, args.seed)
    print(
        f"synthetic COCO 2014 in {time.perf_counter() - start:.0f} s: "
        + "; ".join(
            f"{s} {counts[s]:,} images, {data.annotations[s]:,} annotations "
            f"({data.annotations[s] / counts[s]:.2f}/image), JSON {mb(data.json_bytes[s])}"
            for s in counts
        ),
        flush=True,
    )
    print("measuring (each job a child process):", flush=True)
    results = work / "results"
    manifest_job = bench_manifest(work, data, sum(counts.values()), args)
    manifest = results / "manifest.parquet"
    labels = read_table(manifest, MANIFEST_SCHEMA).column("labels")
    shard_images = len(shard_rows(str(manifest), 0, args.shards, 10**9))
    storage = config["cam_infer"]["storage"]
    storages = [storage, *(s for s in ("float16", "uint8") if s != storage)]
    sizes = sorted({*(n for n in args.cam_images if n < shard_images), shard_images})
    cams = bench_cam_storage(work, args.shards, sizes, storages)
    evals = bench_eval(work, config, args.shards, cams[storage], args.eval_files, args.eval_images)
    crfs = bench_crf(work, config, args.shards, args.crf_images, args.crf_workers)
    masks = pseudo_mask_bytes(work, config, args.shards, args.mask_images)
    return Measured(
        images=counts,
        shard_images=shard_images,
        classes_per_image=pc.mean(pc.list_value_length(labels)).as_py(),
        manifest=manifest_job,
        manifest_bytes=manifest.stat().st_size,
        gt_bytes=folder_bytes(results / "gt_masks"),
        cams=cams,
        evals=evals,
        crfs=crfs,
        crf_seconds_per_image=crf_cpu_per_image(work, crfs[0][0], args.crf_images),
        mask_bytes_per_image=masks / args.mask_images,
    )


def job_row(job: Job, disk: str = "-") -> list[str]:
    return [
        job.name,
        f"{job.images:,}",
        f"{job.seconds:.0f}",
        mb(job.max_rss),
        mb(job.tree_rss),
        disk,
    ]


def print_measured(m: Measured, args: argparse.Namespace) -> None:
    images = sum(m.images.values())
    print()
    print(
        f"MEASURED ({os.cpu_count()} CPUs, OMP_NUM_THREADS=1; shard 0 of {args.shards} holds "
        f"{m.shard_images:,} train2014 images; {m.classes_per_image:.2f} classes/image in the "
        "manifest; peak RSS: os.wait4 ru_maxrss; tree peak: sampled sum over the job's processes)"
    )
    gt = m.gt_bytes / images / 1000
    rows = [job_row(m.manifest, f"{m.manifest_bytes / images:.0f} B row + {gt:.1f} kB GT PNG")]
    rows += [
        job_row(f.job, f"{f.size / f.job.images / MB:.3f} MB") for s in m.cams for f in m.cams[s]
    ]
    rows += [job_row(job) for job in m.evals]
    rows += [job_row(job, f"{size / job.images / 1000:.1f} kB IR PNG") for _, job, size in m.crfs]
    rows.append(["pseudo-mask palette PNGs", f"{args.mask_images:,}", "-", "-", "-"])
    rows[-1].append(f"{m.mask_bytes_per_image / 1000:.1f} kB")
    table(["job", "images", "s", "peak RSS", "tree peak", "disk per image"], rows)


def print_projections(m: Measured, config: dict, args: argparse.Namespace) -> list[float]:
    """The projection tables; returns the projected peak RSS of every projected job."""
    full = COCO_IMAGES[TRAIN]
    per_image = {s: files[-1].size / files[-1].job.images for s, files in m.cams.items()}
    ir = m.crfs[-1][2] / m.crfs[-1][1].images
    first, last = m.evals[0], m.evals[-1]
    marginal = (last.seconds - first.seconds) / (last.images - first.images)
    eval_rss = projected_peak([(j.images, j.peak) for j in m.evals], full)
    slope = (last.peak - first.peak) / (last.images - first.images)
    print()
    print(
        f"PROJECTED to all {full:,} train2014 images (linear in images from the jobs above; a "
        "projected peak RSS is never below the largest measured one)"
    )
    rows = [
        [f"CAM storage {s}", gb(b * full), f"{b / MB:.3f} MB/image"] for s, b in per_image.items()
    ]
    rows += [
        [
            "eval_cam, one job over every shard",
            f"{(first.seconds + marginal * (full - first.images)) / 60:.0f} min",
            f"{marginal * 1000:.0f} ms/image; peak RSS {mb(eval_rss)} "
            f"(measured {slope * 1000 / MB:+.1f} MB per 1,000 images)",
        ],
        [
            "crf, CPU time",
            f"{m.crf_seconds_per_image * full / 3600:.0f} CPU-h",
            f"{m.crf_seconds_per_image:.2f} CPU-s/image (the stage's labelling time x workers, "
            f"{m.crfs[0][0]} worker{'s' if m.crfs[0][0] > 1 else ''})",
        ],
        ["IR-label PNGs", gb(ir * full), f"{ir / 1000:.1f} kB/image"],
        [
            "pseudo-mask PNGs",
            gb(m.mask_bytes_per_image * full),
            f"{m.mask_bytes_per_image / 1000:.1f} kB/image",
        ],
        ["GT PNGs (measured, every image)", gb(m.gt_bytes), "train2014 + val2014"],
    ]
    table(["artifact / job", "total", "note"], rows)

    threads = config["crf"]["threads"]
    crf_rss = projected_peak([(w, job.tree_rss) for w, job, _ in m.crfs], threads)
    writer = next(iter(m.cams.values()))
    print()
    print(
        f"PROJECTED per-shard jobs ({full:,} / shards images each; write_cams peak RSS linear in "
        f"images through {len(writer)} sizes, the CAM writer alone: the cams job adds its network "
        f"and DataLoader; crf tree peak linear in workers, at crf.threads = {threads}, from a "
        f"{args.crf_images}-image file; crf wall on {threads} free cores)"
    )
    rows, projected = [], [eval_rss, crf_rss]
    for shards in [args.shards, *args.alt_shards]:
        n = full / shards
        rss = projected_peak([(f.job.images, f.job.peak) for f in writer], n)
        projected.append(rss)
        rows.append(
            [
                f"{shards}{' (config)' if shards == config['dataset']['shards'] else ''}",
                f"{n:,.0f}",
                *(mb(b * n) for b in per_image.values()),
                mb(rss),
                mb(crf_rss),
                f"{m.crf_seconds_per_image * n / threads / 60:.0f} min",
                mb(ir * n),
                mb(m.mask_bytes_per_image * n),
            ]
        )
    header = ["shards", "images/shard", *(f"CAM file {s}" for s in per_image), "write_cams RSS"]
    header += [f"crf RSS x{threads}", f"crf wall x{threads}", "IR labels", "pseudo masks"]
    table(header, rows)
    print(
        f"  scheduler memory declared (config mem_mb): manifest {declared(config, 'manifest')}, "
        f"cams {declared(config, 'cams')}, eval_cam {declared(config, 'eval_cam')}, "
        f"crf {declared(config, 'crf', threads)} at {threads} threads"
    )
    return projected


def print_goals(m: Measured, projected: list[float]) -> None:
    full = COCO_IMAGES[TRAIN]
    jobs = [m.manifest, *(f.job for files in m.cams.values() for f in files), *m.evals]
    jobs += [job for _, job, _ in m.crfs]
    worst = max([job.peak for job in jobs] + projected)
    print()
    verdict = "PASS" if worst < RSS_GOAL else "FAIL"
    print(f"GOAL every job's peak RSS < {gb(RSS_GOAL)}: largest {gb(worst)} -> {verdict}")
    for s, files in m.cams.items():
        total = files[-1].size / files[-1].job.images * full
        verdict = "PASS" if total <= STORAGE_GOAL else "FAIL"
        print(f"GOAL CAM storage <= {gb(STORAGE_GOAL)}: {s} {gb(total)} -> {verdict}")


def report(work: Path, config: dict, args: argparse.Namespace) -> None:
    m = measure(work, config, args)
    print_measured(m, args)
    projected = print_projections(m, config, args)
    print_goals(m, projected)


def main() -> None:
    config = load_config()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", type=int, default=config["dataset"]["shards"])
    p.add_argument("--alt-shards", type=int, nargs="*", default=[32, 128])
    p.add_argument("--train-images", type=int, default=COCO_IMAGES[TRAIN], help="to develop")
    p.add_argument("--val-images", type=int, default=COCO_IMAGES[VAL], help="to develop")
    p.add_argument("--verify-images", action="store_true", help="manifest decodes every image")
    p.add_argument("--manifest-workers", type=int, default=4, help="rule manifest's threads")
    p.add_argument("--cam-images", type=int, nargs="+", default=[100, 400], help="+ full shard")
    p.add_argument("--eval-files", type=int, default=4, help="shard files of the 2nd eval run")
    p.add_argument("--eval-images", type=int, default=100, help="images per eval shard file")
    p.add_argument("--crf-images", type=int, default=10)
    p.add_argument("--crf-workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--mask-images", type=int, default=200)
    p.add_argument("--workdir", type=Path, default=None, help="parent of the temporary folder")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench_coco.") as tmp:
        report(Path(tmp), config, args)


if __name__ == "__main__":
    main()
