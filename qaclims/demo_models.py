"""Tiny demo models: a BLIP VQA folder and an open_clip checkpoint, built offline.

Random weights, seeded: the same seed gives the same files. The demo loads them through
the same `from_pretrained` / `create_model` paths as the real checkpoints. The BLIP
tokenizer's vocabulary is every word of the given texts (the question templates), the
demo class names and a list of common VQA answer words, so questions tokenise without
[UNK] and answers are words.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

from qaclims.atomic import atomic_dir, atomic_path
from qaclims.datasets.demo import CLASSES
from qaclims.errors import InputError
from qaclims.models import blip, clip_text

log = logging.getLogger(__name__)

# Common short VQA answers (objects, places, colours): what a random decoder may say.
ANSWER_LINES = (
    "a an the of in on at and or with no yes one two three",
    "sky grass tree trees water road street wall floor field room table chair sand snow",
    "beach forest park garden building house kitchen window door ground dirt rock rocks",
    "fence car person people dog cat bird boat plant flower flowers light shadow cloud",
    "clouds mountain hill river lake sea ocean city yard desert background outside inside",
    "red blue green yellow white black brown orange gray pink purple",
    "toy thing object box circle shape tent camping ball sport basketball soccer football",
    "star sun donut ring wooden cardboard crate container",
)
ANSWER_WORDS = [word for line in ANSWER_LINES for word in line.split()]
PUNCTUATION = list("?.,'!-")


def vocabulary(texts: list[str]) -> list[str]:
    """Sorted lower-case words of `texts`, the demo classes and ANSWER_WORDS, with punctuation."""
    words = set(ANSWER_WORDS) | set(PUNCTUATION)
    for text in [*texts, *CLASSES]:
        words.update(re.findall(r"[a-z0-9]+", text.lower()))
    return sorted(words)


def run(
    vqa_out: Path,
    clip_weights: Path,
    clip_config: Path,
    *,
    texts: list[str],
    seed: int = 0,
    vqa_image_size: int = 96,
) -> dict[str, int]:
    """Write the BLIP folder, the CLIP weights and its config JSON; returns sizes."""
    if clip_weights.suffix != ".safetensors":
        raise InputError(f"{clip_weights}: CLIP weights are written as .safetensors")
    words = vocabulary(texts)
    with atomic_dir(vqa_out) as tmp:
        vqa = blip.tiny_vqa(tmp, words, seed=seed, image_size=vqa_image_size)
    with atomic_path(clip_weights) as tmp_weights:
        clip = clip_text.tiny_clip(clip_config.stem, tmp_weights, seed=seed)
    with atomic_path(clip_config) as tmp_config:
        tmp_config.write_text(json.dumps(clip_text.TINY_CONFIG, indent=2) + "\n")
    summary = {
        "vocabulary": len(words),
        "vqa_params": sum(p.numel() for p in vqa.parameters()),
        "clip_params": sum(p.numel() for p in clip.parameters()),
    }
    log.info("demo models: %s", summary)
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vqa-out", type=Path, required=True, help="BLIP VQA folder to write")
    p.add_argument("--clip-weights", type=Path, required=True, help=".safetensors to write")
    p.add_argument("--clip-config", type=Path, required=True, help="<architecture>.json to write")
    p.add_argument("--texts", nargs="*", default=[], help="texts whose words the vocabulary holds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vqa-image-size", type=int, default=96)


def main(args: argparse.Namespace) -> None:
    run(
        args.vqa_out,
        args.clip_weights,
        args.clip_config,
        texts=args.texts,
        seed=args.seed,
        vqa_image_size=args.vqa_image_size,
    )
