"""RITC step time: the vectorised step against a reference-style step, same models and batch.

The reference-style step follows QA-CLIMS's train_qa_clims.py: labels expanded image by
image, FAT thresholds computed map by map, one CLIP call per region image, text features
looked up and losses computed pair by pair in Python. Both steps include the CAM network's
forward and backward. Also printed: the share of the vectorised step spent outside the two
networks (step time minus a CAM forward+backward and a single CLIP forward+backward on the
same region images).

    python benchmarks/bench_ritc.py [--batch 8] [--crop 96] [--repeats 9]
    python benchmarks/bench_ritc.py --paper --batch 2 --crop 512 --classes 20 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file
from torch.nn import functional as F

from qaclims.models import clip_text
from qaclims.models.cam_net import CAMNet
from qaclims.models.mask_clip import load_image_tower
from qaclims.pair_text import PairTexts
from qaclims.ritc import RITCLoss

PAPER_CLIP = "ViT-L-14-quickgelu"


def _clip_tower(folder: Path, paper: bool, seed: int):
    """The mask-adapted image tower, loaded through `load_image_tower` like a real one:
    the tiny test CLIP, or (paper) a random ViT-L/14 with OV-Seg's 3 prompt layers."""
    if not paper:
        weights, config = folder / "bench-clip-tiny.safetensors", folder / "bench-clip-tiny.json"
        clip_text.tiny_clip(config.stem, weights, seed=seed)
        config.write_text(json.dumps(clip_text.TINY_CONFIG))
        return load_image_tower(
            config.stem, str(weights), torch.device("cpu"), config_json=config, mask_prompt_depth=2
        )
    torch.manual_seed(seed)
    weights = folder / "vit-l-14.safetensors"
    state = open_clip.create_model(PAPER_CLIP).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, weights)
    del state
    return load_image_tower(PAPER_CLIP, str(weights), torch.device("cpu"), mask_prompt_depth=3)


def _setup(batch: int, crop: int, classes: int, paper: bool, seed: int = 0):
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as folder:
        clip = _clip_tower(Path(folder), paper, seed)
    model = CAMNet(classes, depth=50 if paper else 18, fixed_bn=False)
    labels = torch.zeros(batch, classes)
    for b in range(batch):  # 1-3 classes per image, like the demo (≈ 2 pairs per image)
        labels[b, torch.randperm(classes)[: 1 + b % 3]] = 1
    pairs = int(labels.sum())
    pair_of = torch.full((batch, classes), -1, dtype=torch.long)
    pair_of[labels > 0] = torch.arange(pairs)
    dim = clip.output_dim
    features = F.normalize(torch.randn(40, dim), dim=-1)
    bg_index = torch.full((pairs, 10), -1, dtype=torch.long)
    for p in range(pairs):  # 0-10 BG texts; every fifth pair has none
        n = 0 if p % 5 == 4 else 1 + p % 10
        bg_index[p, :n] = torch.randperm(40)[:n]
    texts = PairTexts(pair_of, F.normalize(torch.randn(pairs, dim), dim=-1), bg_index, features)
    batch_dict = {
        "image": torch.randn(batch, 3, crop, crop),
        "label": labels,
        "index": torch.arange(batch),
    }
    return model, clip, texts, batch_dict


def reference_step(model, clip, texts: PairTexts, batch, alpha=0.1, tau=0.7, w=(10, 8, 0.2)):
    """Loops over images, classes and pairs; one CLIP call per region image."""
    x, labels, index = batch["image"], batch["label"], batch["index"]
    maps = model.activation_maps(x)
    size = clip.image_size
    pairs = []
    for b in range(len(x)):  # label expansion, element by element
        for c in range(labels.shape[1]):
            if labels[b, c] == 1:
                pairs.append((b, c))
    frc_total, brc_total = 0.0, 0.0
    for b, c in pairs:
        a = F.interpolate(
            maps[b, c][None, None], size=(size, size), mode="bilinear", align_corners=True
        )
        m = (a >= alpha * a.max()).float().detach()
        xs = F.interpolate(x[b][None], size=(size, size), mode="bilinear", align_corners=True)
        v_fg = F.normalize(clip(a * xs, m), dim=-1)[0]
        v_bg = F.normalize(clip((1 - a) * xs, 1 - m), dim=-1)[0]
        p = int(texts.pair_of[int(index[b]), c])
        t_fg = texts.fg[p]
        bg = [texts.bg_features[i] for i in texts.bg_index[p].tolist() if i >= 0]
        if not bg:
            continue
        pos = torch.exp(v_fg @ t_fg / tau)
        neg = sum(torch.exp(v_fg @ t / tau) for t in bg)
        frc_total = frc_total - torch.log(pos / (pos + neg))
        mean_bg = sum(torch.exp(v_bg @ t / tau) for t in bg) / len(bg)
        brc_total = brc_total - torch.log(mean_bg / (mean_bg + torch.exp(v_bg @ t_fg / tau)))
    return w[0] * frc_total / 2 + w[1] * brc_total / 2 + w[2] * maps.mean()


def _time(
    fns: dict[str, Callable[[], None]], repeats: int, warm_up: bool = True
) -> dict[str, float]:
    """Median seconds of each function, run in turns so that load changes hit all alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values() if warm_up else ():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=96)
    p.add_argument("--classes", type=int, default=9)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument(
        "--paper",
        action="store_true",
        help="paper sizes: ResNet-50 CAMNet, random ViT-L/14 (224, 3 prompt layers); "
        "use with --batch 2 --crop 512 --classes 20 --repeats 1",
    )
    args = p.parse_args()
    model, clip, texts, batch = _setup(args.batch, args.crop, args.classes, args.paper)
    model.eval()  # equal BatchNorm behaviour for both steps and between repeats
    loss_fn = RITCLoss(clip=clip, texts=texts)

    def vectorised():
        model.zero_grad(set_to_none=True)
        loss_fn(model, batch)[0].backward()

    def reference():
        model.zero_grad(set_to_none=True)
        reference_step(model, clip, texts, batch).backward()

    n_pairs = int(batch["label"].sum())
    size = clip.image_size
    regions = torch.randn(2 * n_pairs, 3, size, size, requires_grad=True)
    masks = (torch.rand(2 * n_pairs, 1, size, size) > 0.5).float()

    def networks_only():
        model.zero_grad(set_to_none=True)
        model.activation_maps(batch["image"]).sum().backward()
        clip(regions, masks).sum().backward()

    def clip_batched():
        clip(regions, masks).sum().backward()

    def clip_per_region():
        for i in range(len(regions)):
            clip(regions[i : i + 1], masks[i : i + 1]).sum().backward()

    fns = {
        "ours": vectorised,
        "ref": reference,
        "nets": networks_only,
        "clip_one": clip_batched,
        "clip_each": clip_per_region,
    }
    if args.paper:  # minutes a step on a CPU: no warm-up, no per-region CLIP timing
        del fns["clip_each"]
    times = _time(fns, args.repeats, warm_up=not args.paper)
    ours, ref, nets = times["ours"], times["ref"], times["nets"]
    print(
        f"CAMNet ResNet-{50 if args.paper else 18}, "
        f"{PAPER_CLIP + ' (random)' if args.paper else 'tiny CLIP'}, "
        f"batch {args.batch}, crop {args.crop}, {n_pairs} pairs, CLIP input {size}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print(f"reference-style step: {ref * 1000:8.1f} ms")
    print(f"vectorised step:      {ours * 1000:8.1f} ms   speed-up {ref / ours:.2f}x")
    print(f"networks alone (CAM fwd+bwd, one CLIP fwd+bwd): {nets * 1000:.1f} ms")
    print(f"share of the vectorised step outside the networks: {max(0.0, 1 - nets / ours):.1%}")
    print(f"share of the reference step outside the networks:  {max(0.0, 1 - nets / ref):.1%}")
    each = f", one call each {times['clip_each'] * 1000:.1f} ms" if "clip_each" in times else ""
    print(
        f"CLIP fwd+bwd of the {2 * n_pairs} region images: one call "
        f"{times['clip_one'] * 1000:.1f} ms{each}"
    )


if __name__ == "__main__":
    main()
