"""Throughput of CAM inference (batched vs the reference's loop) and of the IR-label CRF.

CAMs: the same ResNet CAMNet (random weights) on the same pre-decoded images, both ways:
- reference (IRNet/CLIMS make_cam): one image at a time, per scale one forward of
  [image, flip], every class upsampled, present classes picked afterwards;
- qaclims: `cams.multiscale_cams`, each scale with its flip and the other equal-size images
  in one batch, present classes picked before upsampling.
Decoding is left out of both (the reference and qaclims decode in DataLoader workers).
CRF: `crf.ir_label` (two dense CRFs an image) in one process, at demo and VOC image sizes.

    PYTHONPATH=. python benchmarks/bench_cam.py [--images 4 --height 320 --width 480 --depth 50]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from qaclims import cams, crf
from qaclims.models.cam_net import CAMNet

SCALES = (1.0, 0.5, 1.5, 2.0)
PAPER_CRF = crf.CRFParams(
    gt_prob=0.7,
    iterations=10,
    gaussian_sxy=3,
    gaussian_compat=3,
    bilateral_sxy=50,
    bilateral_srgb=5,
    bilateral_compat=10,
)


@torch.no_grad()
def reference_cams(model: CAMNet, image: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """High-res CAMs the reference way (step/make_cam.py), one image, one scale at a time."""
    height, width = image.shape[:2]
    up = (-(-height // 16) * 16, -(-width // 16) * 16)
    small = (-(-height // 4), -(-width // 4))
    outputs = []
    for s in SCALES:
        x = cams.normalise(cams.rescale(image, s))
        out = model.cams(torch.stack([x, x.flip(-1)]))
        outputs.append(out[0] + out[1].flip(-1))
    strided = sum(
        F.interpolate(o[None], small, mode="bilinear", align_corners=False)[0] for o in outputs
    )
    high = [F.interpolate(o[:, None], up, mode="bilinear", align_corners=False) for o in outputs]
    high = torch.stack(high).sum(0)[:, 0, :height, :width]
    idx = torch.as_tensor(keys)
    strided = strided[idx] / (strided[idx].amax(dim=(1, 2), keepdim=True) + 1e-5)
    high = high[idx] / (high[idx].amax(dim=(1, 2), keepdim=True) + 1e-5)
    return high.numpy()


def bench_cams(
    images: int, height: int, width: int, depth: int, classes: int, repeats: int
) -> None:
    torch.manual_seed(0)
    model = CAMNet(classes, depth=depth, weights=None, fixed_bn=False).eval()
    rng = np.random.default_rng(0)
    pics = [rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8) for _ in range(images)]
    keys = [np.sort(rng.choice(classes, size=2, replace=False)) for _ in range(images)]
    scaled = [torch.stack([cams.normalise(cams.rescale(p, s)) for p in pics]) for s in SCALES]
    cpu = torch.device("cpu")
    t_ref = t_ours = t_batch = float("inf")
    for _ in range(repeats):  # best of `repeats`: the machine is shared
        start = time.perf_counter()
        ref = [reference_cams(model, p, k) for p, k in zip(pics, keys, strict=True)]
        t_ref = min(t_ref, time.perf_counter() - start)
        start = time.perf_counter()
        ours = []
        for i in range(images):
            part = [s[i : i + 1] for s in scaled]
            ours += cams.multiscale_cams(model, part, (height, width), keys[i : i + 1], cpu)
        t_ours = min(t_ours, time.perf_counter() - start)
        start = time.perf_counter()
        batched = cams.multiscale_cams(model, scaled, (height, width), keys, cpu)
        t_batch = min(t_batch, time.perf_counter() - start)
    diff = max(
        float(np.abs(r - o.high_res).max())
        for run in (ours, batched)
        for r, o in zip(ref, run, strict=True)
    )
    print(
        f"CAMs, ResNet-{depth}, {images} images {height}x{width}, scales {SCALES} + flips, "
        f"{torch.get_num_threads()} CPU threads, best of {repeats}:\n"
        f"  reference loop             {images / t_ref:7.3f} images/s\n"
        f"  qaclims, 1 image a batch   {images / t_ours:7.3f} images/s  ({t_ref / t_ours:.2f}x; "
        f"what a CPU job runs)\n"
        f"  qaclims, {images} images a batch  {images / t_batch:7.3f} images/s  "
        f"({t_ref / t_batch:.2f}x, what a CUDA job runs; max |difference| {diff:.1e})"
    )


def _blob_cams(height: int, width: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A smooth two-class CAM and an image whose colours roughly follow it."""
    yy, xx = np.mgrid[:height, :width]
    maps = []
    for _ in range(2):
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        r = rng.uniform(0.1, 0.3) * min(height, width)
        maps.append(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)))
    maps = np.stack(maps).astype(np.float32)
    image = (rng.integers(0, 40, size=(height, width, 3)) + 100).astype(np.uint8)
    image[maps[0] > 0.5] = (200, 40, 40)
    image[maps[1] > 0.5] = (40, 40, 200)
    return image, maps


def bench_crf(height: int, width: int, images: int) -> None:
    rng = np.random.default_rng(1)
    data = [_blob_cams(height, width, rng) for _ in range(images)]
    keys = np.array([3, 7])
    start = time.perf_counter()
    for image, maps in data:
        crf.ir_label(image, maps, keys, fg_threshold=0.3, bg_threshold=0.1, params=PAPER_CRF)
    seconds = time.perf_counter() - start
    print(f"CRF IR labels {height}x{width}: {images / seconds:7.2f} images/s per process")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--height", type=int, default=320)
    p.add_argument("--width", type=int, default=480)
    p.add_argument("--depth", type=int, default=50)
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--crf-images", type=int, default=6)
    args = p.parse_args()
    bench_cams(args.images, args.height, args.width, args.depth, args.classes, args.repeats)
    bench_crf(160, 160, args.crf_images)
    bench_crf(375, 500, args.crf_images)


if __name__ == "__main__":
    main()
