"""Real dataset layouts through the whole chain: VOC and COCO folders at real image sizes.

A dozen images each, drawn with the demo generator's shapes over its backgrounds at the
sizes real datasets have (500×375, 333×500, 480×640, ...), with the demo's tiny models given
as external models (what a user's own checkpoints are) and the baseline CAM network as the
IRN and segmentation backbone. Each layout holds an image without labels; the VOC one puts
every train image in shard 0 of 2, so shard 1 is empty in every per-shard stage. Epochs,
scales and walk steps are cut to the bone: the test is about what runs, not how well.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools import mask as mask_utils

from qaclims.cam_store import read_cams
from qaclims.datasets import demo
from qaclims.images import read_label_map, save_label_png
from qaclims.tables import read_manifest, shard_of

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow

# (height, width) as VOC and COCO store them; each layout cycles through its list.
VOC_SIZES = [(375, 500), (500, 333), (333, 500), (375, 500), (500, 375), (281, 500)]
COCO_SIZES = [(480, 640), (640, 480), (427, 640)]
COCO_CATEGORY_IDS = (1, 3, 18, 44, 90)  # sparse, as COCO's are: one per demo class


def _scene(rng: np.random.Generator, size: tuple[int, int], classes: list[int]):
    """An image and its instance masks: demo shapes of `classes` over a demo background."""
    h, w = size
    image = demo._background(h, w, rng)
    masks = []
    for cls in classes:
        r = rng.uniform(0.15, 0.25) * min(h, w)
        cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
        mask = demo._shape_mask(cls, h, w, cy, cx, r, rng.uniform(0, 2 * np.pi))
        image[mask] = demo._texture(cls, h, w, rng)[mask]
        masks.append((cls, mask))
    return np.clip(image, 0, 255).astype(np.uint8), masks


def _classes_of(i: int, rng: np.random.Generator) -> list[int]:
    """Image 1 has no object; the others one or two of the five classes."""
    if i == 1:
        return []
    return sorted({int(c) for c in rng.integers(0, len(demo.CLASSES), 1 + i % 2)})


def _ids_in_shard(prefix: str, count: int, shard: int, shards: int) -> list[str]:
    ids, k = [], 0
    while len(ids) < count:
        image_id = f"{prefix}{k:06d}"
        if shard_of(image_id, shards) == shard:
            ids.append(image_id)
        k += 1
    return ids


def voc_layout(root: Path) -> dict[str, list[str]]:
    """VOC2012 folders (JPEGImages, SegmentationClass, Annotations, ImageSets, classes.txt).

    train: 8 images, all in shard 0 of 2, one without objects; val: 4 images.
    """
    rng = np.random.default_rng(1)
    for sub in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    splits = {"train": _ids_in_shard("2007_", 8, 0, 2), "val": ["2008_000001", "2008_000002",
              "2008_000003", "2008_000004"]}  # fmt: skip
    kernel = np.ones((3, 3), np.uint8)
    i = 0
    for split, ids in splits.items():
        for image_id in ids:
            classes = _classes_of(i, rng)
            image, masks = _scene(rng, VOC_SIZES[i % len(VOC_SIZES)], classes)
            labels = np.zeros(image.shape[:2], np.uint8)
            for cls, mask in masks:
                labels[mask] = cls + 1
            border = cv2.dilate(labels, kernel) != cv2.erode(labels, kernel)
            labels[border] = 255
            Image.fromarray(image).save(root / "JPEGImages" / f"{image_id}.jpg", quality=90)
            save_label_png(labels, root / "SegmentationClass" / f"{image_id}.png")
            objects = "".join(f"<object><name>{demo.CLASSES[c]}</name></object>" for c in classes)
            (root / "Annotations" / f"{image_id}.xml").write_text(
                f"<annotation>{objects}</annotation>"
            )
            i += 1
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    (root / "classes.txt").write_text("\n".join(demo.CLASSES) + "\n")
    return splits


def coco_layout(root: Path) -> dict[str, list[str]]:
    """COCO 2014 folders: train2014 (6 images, one unannotated), val2014 (3), annotations."""
    rng = np.random.default_rng(2)
    categories = [
        {"id": c, "name": n} for c, n in zip(COCO_CATEGORY_IDS, demo.CLASSES, strict=True)
    ]
    (root / "annotations").mkdir(parents=True)
    stems: dict[str, list[str]] = {}
    i, ann_id = 0, 1
    for split, count in (("train2014", 6), ("val2014", 3)):
        (root / split).mkdir()
        images, anns = [], []
        for k in range(count):
            coco_id = 1000 * (split == "val2014") + 9 + 7 * k
            file_name = f"COCO_{split}_{coco_id:012d}.jpg"
            image, masks = _scene(rng, COCO_SIZES[i % len(COCO_SIZES)], _classes_of(i, rng))
            Image.fromarray(image).save(root / split / file_name, quality=90)
            h, w = image.shape[:2]
            images.append({"id": coco_id, "file_name": file_name, "height": h, "width": w})
            for cls, mask in masks:
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                anns.append({
                    "id": ann_id, "image_id": coco_id, "category_id": COCO_CATEGORY_IDS[cls],
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                    "area": float(mask.sum()), "bbox": [0, 0, w, h], "iscrowd": 0,
                })  # fmt: skip
                ann_id += 1
            i += 1
        data = {"images": images, "annotations": anns, "categories": categories}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
        stems[split] = [Path(im["file_name"]).stem for im in images]
    return stems


def demo_models(folder: Path) -> dict[str, str]:
    """The demo's tiny BLIP and CLIP, built by its CLI as a user would build them once."""
    questions = yaml.safe_load((ROOT / "config.yaml").read_text())["qape"]
    texts = questions["fg_questions"] + questions["bg_questions"]
    paths = {
        "vqa": folder / "blip-vqa-tiny",
        "clip": folder / "clip-tiny.safetensors",
        "clip_config": folder / "clip-tiny.json",
    }
    cmd = [sys.executable, "-m", "qaclims", "demo_models", "--vqa-out", str(paths["vqa"]),
           "--clip-weights", str(paths["clip"]), "--clip-config", str(paths["clip_config"]),
           "--texts", *texts]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    return {k: str(v) for k, v in paths.items()}


def overlay(name: str, dataset: dict, models: dict[str, str]) -> str:
    """Config for a layout: its dataset, external tiny models, the shortest schedules."""
    baseline = f"results/{name}/models/cam_baseline.pt"
    config = {
        "dataset": {"name": name, "verify_images": True, **dataset},
        "models": {
            "vqa": models["vqa"],
            "clip": {"architecture": "clip-tiny", "pretrained": models["clip"]},
            "clip_config": models["clip_config"],
            "ovseg": None,
        },
        "cam": {"batch_size": 4, "epochs": 2},
        "ritc": {"clip_mode": "plain", "batch_size": 4, "epochs": 1},
        "cam_infer": {"scales": [1.0]},
        "cam_eval": {"vis_images": 2},
        "crf": {"iterations": 5},
        "irn": {"weights": baseline, "batch_size": 4, "epochs": 1},
        "pseudo_masks": {"exp_times": 4},
        "seg": {"weights": baseline, "batch_size": 4, "epochs": 1},
    }
    return yaml.safe_dump(config, sort_keys=False)


LAYOUTS = {
    "voc_layout": (voc_layout, "VOC2012", {
        "kind": "voc12", "shards": 2, "train_split": "train_aug", "eval_split": "train",
        "seg_split": "val"}),
    "coco_layout": (coco_layout, "coco2014", {
        "kind": "coco14", "max_images": None, "shards": 1, "train_split": "train2014",
        "eval_split": "train2014", "seg_split": "val2014"}),
}  # fmt: skip


def _copy_workflow(wf: Path) -> None:
    wf.mkdir(parents=True)
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(ROOT / name, wf / name)
    for name in ("rules", "qaclims", "report", "profiles", "envs"):
        shutil.copytree(ROOT / name, wf / name, ignore=shutil.ignore_patterns("__pycache__"))


@pytest.fixture(scope="module")
def chains(tmp_path_factory) -> dict[str, tuple[Path, dict[str, list[str]], int, Path]]:
    """Both layouts run at once, one core each, each in its own copy of the workflow.

    A chain is mostly one job after another, so two chains side by side keep both cores
    busy. Per layout: the workflow copy, the image ids of each split, snakemake's exit
    status and its log.
    """
    work = tmp_path_factory.mktemp("layouts")
    models = demo_models(work / "models")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    running = {}
    for name, (make, folder, dataset) in LAYOUTS.items():
        wf = work / name
        _copy_workflow(wf)
        ids = make(work / folder)
        config = wf / f"{name}.yaml"
        config.write_text(overlay(name, {**dataset, "root": str(work / folder)}, models))
        cmd = [str(BIN / "snakemake"), "-s", str(wf / "Snakefile"), "-d", str(wf), "--cores",
               "1", "--configfile", str(config)]  # fmt: skip
        log = (work / f"{name}.snakemake.log").open("w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        running[name] = (proc, log, wf, ids)
    done = {}
    for name, (proc, log, wf, ids) in running.items():
        proc.wait()
        log.close()
        done[name] = (wf, ids, proc.returncode, work / f"{name}.snakemake.log")
    return done


def _chain(chains, name: str) -> tuple[Path, Path, dict[str, list[str]]]:
    """(results folder, logs folder, split ids) of a layout whose run succeeded."""
    wf, ids, returncode, log = chains[name]
    if returncode != 0:
        stage_logs = "".join(
            f"\n--- {p}\n{p.read_text()[-1500:]}" for p in sorted((wf / "logs").rglob("*.log"))
        )
        pytest.fail(log.read_text()[-4000:] + stage_logs[-8000:])
    return wf / "results" / name, wf / "logs" / name, ids


def _reports(results: Path) -> None:
    for report in ("cam.json", "pseudo_masks.json", "seg.json"):
        stored = json.loads((results / "eval" / report).read_text())
        assert 0.0 <= stored["miou"] <= 1.0, report
    assert (results / "eval" / "summary.md").is_file()


def test_voc_layout_with_an_empty_shard_and_an_unlabelled_image(chains):
    results, logs, splits = _chain(chains, "voc_layout")
    rows = {r["image_id"]: r for r in read_manifest(results / "manifest.parquet").to_pylist()}
    unlabelled = splits["train"][1]
    assert rows[unlabelled]["labels"] == [] and rows[unlabelled]["label_source"] == "xml"
    assert (rows[splits["train"][0]]["height"], rows[splits["train"][0]]["width"]) == (375, 500)
    with read_cams(results / "cams" / "shard-1.npz") as empty:
        assert len(empty) == 0
    with read_cams(results / "cams" / "shard-0.npz") as full:
        assert sorted(full.image_ids) == sorted(splits["train"])
        assert full[unlabelled].high_res.shape[0] == 0
    train = len(splits["train"])
    for stage in ("ir_labels", "pseudo_masks"):
        assert list((results / stage / "shard-1").glob("*.png")) == [], stage
        assert len(list((results / stage / "shard-0").glob("*.png"))) == train, stage
    mask = read_label_map(results / "pseudo_masks" / "shard-0" / f"{unlabelled}.png", 5)
    assert mask.shape == (500, 333) and not mask.any()
    no_labels = f"1 of {train} 'train_aug' images have no labels"
    assert no_labels in (logs / "train_cam.log").read_text()  # left out of the baseline
    assert no_labels not in (logs / "ritc.log").read_text()  # RITC keeps them (ALGORITHM §9)
    assert "foreground_fraction" in (logs / "pseudo_masks" / "shard-0.log").read_text()
    assert "holds no images" in (logs / "pseudo_masks" / "shard-1.log").read_text()
    _reports(results)


def test_coco_layout_with_an_unannotated_image(chains):
    results, logs, stems = _chain(chains, "coco_layout")
    rows = {r["image_id"]: r for r in read_manifest(results / "manifest.parquet").to_pylist()}
    first, unannotated = stems["train2014"][:2]
    assert rows[unannotated]["labels"] == []
    assert (rows[first]["height"], rows[first]["width"]) == (480, 640)
    gt = read_label_map(results.parents[1] / rows[first]["mask_path"], 5)  # under the workdir
    assert gt.shape == (480, 640) and gt.any()
    mask = read_label_map(results / "pseudo_masks" / "shard-0" / f"{unannotated}.png", 5)
    assert mask.shape == (640, 480) and not mask.any()
    train = len(stems["train2014"])
    text = (logs / "train_cam.log").read_text()
    assert f"1 of {train} 'train2014' images have no labels" in text
    _reports(results)
