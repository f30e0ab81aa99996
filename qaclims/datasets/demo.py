"""Generate the demo dataset: a small, seeded, VOC-layout set a model can really learn.

Two worlds. "cooccurrence" (qaclims/datasets/demo_world.py) shows the problem QA-CLIMS
solves: each class mostly on its own background, objects of two differently looking parts.
"shapes", the first demo, draws five classes, each with its own shape, colour and texture,
1-3 per image over varied textured backgrounds. Ground-truth masks carry a 255 ignore band
on object borders, like VOC's. There is no `Annotations/` folder, so the VOC reader takes
the image labels from the masks. Same seed and library versions, same bytes.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from qaclims.atomic import atomic_dir
from qaclims.datasets import demo_world
from qaclims.errors import InputError
from qaclims.images import save_label_png, voc_palette

log = logging.getLogger(__name__)

WORLDS = ("cooccurrence", "shapes")
CLASSES = ("ball", "crate", "star", "ring", "tent")  # the shapes world's
# Base RGB colour per class; every object jitters around it.
COLOURS = np.array(
    [[220, 40, 40], [150, 90, 30], [240, 210, 40], [40, 80, 220], [40, 170, 70]], np.float32
)


def _shape_mask(cls: int, h: int, w: int, cy: float, cx: float, r: float, angle: float):
    """Binary mask of one object of class `cls` centred at (cy, cx) with radius r."""
    mask = np.zeros((h, w), np.uint8)
    centre = (round(cx), round(cy))
    if cls == 0:
        cv2.circle(mask, centre, round(r), 1, -1, lineType=cv2.LINE_8)
    elif cls == 3:
        cv2.circle(mask, centre, round(r), 1, -1, lineType=cv2.LINE_8)
        cv2.circle(mask, centre, round(r * 0.55), 0, -1, lineType=cv2.LINE_8)
    else:
        if cls == 1:
            t = angle + np.arange(4) * np.pi / 2 + np.pi / 4
            radii = np.full(4, r)
        elif cls == 2:
            t = angle + np.arange(10) * np.pi / 5
            radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        else:
            t = angle * 0.2 - np.pi / 2 + np.arange(3) * 2 * np.pi / 3
            radii = np.full(3, r)
        pts = np.stack([cx + radii * np.cos(t), cy + radii * np.sin(t)], 1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1, lineType=cv2.LINE_8)
    return mask.astype(bool)


def _texture(cls: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """H×W×3 float appearance of class `cls`: base colour, jitter and a class texture."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = COLOURS[cls] + rng.normal(0, 12, 3)
    shade = np.ones((h, w), np.float32)
    if cls == 0:
        shade = 0.8 + 0.2 * np.cos((xx + yy) / 9.0)
    elif cls == 1:
        shade = np.where(((xx // 6) + (yy // 6)) % 2 == 0, 1.0, 0.7)
    elif cls == 2:
        shade = 0.9 + 0.1 * rng.random((h, w))
    elif cls == 3:
        shade = 0.85 + 0.15 * np.sin(xx / 3.0)
    else:
        shade = np.where((yy // 4) % 2 == 0, 1.0, 0.75)
    return base[None, None, :] * shade[..., None]


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """One of four muted textured backgrounds."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c1, c2 = rng.uniform(60, 190, (2, 3))
    kind = rng.integers(4)
    if kind == 0:
        t = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) / max(h, w)
        t = (t - t.min()) / (np.ptp(t) + 1e-6)
    elif kind == 1:
        period = rng.uniform(8, 20)
        t = 0.5 + 0.5 * np.sin((xx * np.cos(rng.uniform(0, np.pi)) + yy) / period)
    elif kind == 2:
        cell = int(rng.integers(10, 24))
        t = (((xx // cell) + (yy // cell)) % 2) * 0.6 + 0.2
    else:
        noise = rng.random((h // 8 + 1, w // 8 + 1)).astype(np.float32)
        t = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
    img = c1 * (1 - t[..., None]) + c2 * t[..., None]
    return img + rng.normal(0, 6, (h, w, 3))


def render(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One image (H×W×3 uint8) and its label map (0 bg, c+1 class c, 255 ignore)."""
    h = int(rng.integers(size - size // 8, size + size // 8 + 1))
    w = int(rng.integers(size - size // 8, size + size // 8 + 1))
    img = _background(h, w, rng)
    labels = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.integers(len(CLASSES)))
        r = rng.uniform(0.12, 0.24) * min(h, w)
        cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
        mask = _shape_mask(cls, h, w, cy, cx, r, rng.uniform(0, 2 * np.pi))
        img[mask] = _texture(cls, h, w, rng)[mask]
        labels[mask] = cls + 1
    kernel = np.ones((3, 3), np.uint8)
    border = cv2.dilate(labels, kernel) != cv2.erode(labels, kernel)
    labels[border] = 255
    img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    return img, labels


def world_classes(world: str) -> tuple[str, ...]:
    """The class names of demo world `world`, in label order."""
    if world not in WORLDS:
        raise InputError(f"unknown demo world {world!r}: one of {', '.join(WORLDS)}")
    return demo_world.CLASSES if world == "cooccurrence" else CLASSES


def generate(
    out_dir: Path,
    *,
    seed: int,
    train_images: int,
    val_images: int,
    image_size: int,
    world: str = "cooccurrence",
    cooccurrence: float = 0.85,
):
    """Write the demo dataset of `world` in VOC layout to `out_dir` (replaced atomically).

    `cooccurrence` is the cooccurrence world's share of objects on their own class's background.
    """
    classes = world_classes(world)
    if not 0.0 <= cooccurrence <= 1.0:
        raise InputError(f"cooccurrence must be in [0, 1], got {cooccurrence}")
    rng = np.random.default_rng(seed)
    palette = voc_palette()
    with atomic_dir(out_dir) as tmp:
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (tmp / sub).mkdir(parents=True)
        splits = {"train": train_images, "val": val_images}
        index = 0
        for split, count in splits.items():
            ids = []
            for _ in range(count):
                image_id = f"demo_{index:05d}"
                index += 1
                if world == "shapes":
                    img, labels = render(rng, image_size)
                else:
                    scene = demo_world.render_scene(rng, image_size, cooccurrence=cooccurrence)
                    img, labels = scene.image, scene.labels
                Image.fromarray(img).save(tmp / "JPEGImages" / f"{image_id}.jpg", quality=95)
                save_label_png(labels, tmp / "SegmentationClass" / f"{image_id}.png", palette)
                ids.append(image_id)
            (tmp / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        (tmp / "classes.txt").write_text("\n".join(classes) + "\n")
    log.info("wrote %d demo images to %s", index, out_dir)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--train-images", type=int, required=True)
    p.add_argument("--val-images", type=int, required=True)
    p.add_argument("--image-size", type=int, required=True)
    p.add_argument("--world", choices=WORLDS, default="cooccurrence")
    p.add_argument(
        "--cooccurrence",
        type=float,
        default=0.85,
        help="cooccurrence world: share of a class's objects on its own background",
    )


def main(args: argparse.Namespace) -> None:
    generate(
        args.out,
        seed=args.seed,
        train_images=args.train_images,
        val_images=args.val_images,
        image_size=args.image_size,
        world=args.world,
        cooccurrence=args.cooccurrence,
    )
