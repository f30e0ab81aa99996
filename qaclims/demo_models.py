"""Tiny demo models: a BLIP VQA folder and an open_clip checkpoint, built offline.

Random (`trained=False`) or trained on the co-occurrence world (`qaclims.demo_vlms`), seeded:
the same seed gives the same files. The demo loads them through the same `from_pretrained` /
`create_model` paths as the real checkpoints. The BLIP tokenizer's vocabulary is every word
of the given texts (the question templates), the demo class names, a list of common VQA
answer words and, for the co-occurrence world, its class, kind and background words, so
questions tokenise without [UNK] and answers are words. The trained models' accuracies on
held-apart scenes go to the quality JSON (and the log).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from qaclims import demo_vlms
from qaclims.atomic import atomic_dir, atomic_path
from qaclims.datasets import demo_world
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


WORLDS = ("cooccurrence", "shapes")


def world_words() -> list[str]:
    """The co-occurrence world's class, kind and background words: its true answers."""
    kinds = [kind for pair in demo_world.KINDS.values() for kind in pair]
    return [*demo_world.CLASSES, *kinds, *demo_world.BACKGROUNDS]


def vocabulary(texts: list[str], world: str = "shapes") -> list[str]:
    """Sorted lower-case words of `texts`, the demo classes and ANSWER_WORDS, with punctuation,
    and the co-occurrence world's words when that is the world (the shapes world's vocabulary
    is the one its random models have always had)."""
    words = set(ANSWER_WORDS) | set(PUNCTUATION)
    extra = world_words() if world == "cooccurrence" else []
    for text in [*texts, *CLASSES, *extra]:
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
    world: str = "shapes",
    trained: bool = False,
    training: demo_vlms.Training | None = None,
    usage: demo_vlms.Usage | None = None,
    quality: Path | None = None,
) -> dict:
    """Write the BLIP folder, the CLIP weights, its config JSON (and the quality JSON).

    `trained` needs the co-occurrence world and `usage` (how the pipeline asks and encodes);
    `training` defaults to `demo_vlms.Training()` with this seed. Returns sizes (and, when
    trained, the training figures and accuracies).
    """
    if clip_weights.suffix != ".safetensors":
        raise InputError(f"{clip_weights}: CLIP weights are written as .safetensors")
    if world not in WORLDS:
        raise InputError(f"demo world '{world}' is not one of {WORLDS}")
    if trained and world != "cooccurrence":
        raise InputError(
            f"demo_vlms.trained: the trained demo VLMs know the co-occurrence world only, but "
            f"demo.world is '{world}'; set demo_vlms.trained: false (random models) or "
            "demo.world: cooccurrence"
        )
    words = vocabulary(texts, world)
    if trained:
        if usage is None:
            raise InputError("trained demo VLMs need the pipeline's usage settings")
        training = training or demo_vlms.Training(seed=seed)
        summary = _trained(vqa_out, clip_weights, clip_config, words, training, usage)
    else:
        summary = _random(vqa_out, clip_weights, clip_config, words, seed, vqa_image_size)
    summary = {"vocabulary": len(words), "trained": trained, **summary}
    log.info("demo models: %s", summary)
    if quality is not None:
        with atomic_path(quality) as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _random(
    vqa_out: Path, clip_weights: Path, clip_config: Path, words: list[str], seed: int, size: int
) -> dict:
    """Random tiny models (`blip.tiny_vqa`, `clip_text.tiny_clip`); returns their sizes."""
    with atomic_dir(vqa_out) as tmp:
        vqa = blip.tiny_vqa(tmp, words, seed=seed, image_size=size)
    with atomic_path(clip_weights) as tmp_weights:
        clip = clip_text.tiny_clip(clip_config.stem, tmp_weights, seed=seed)
    _write_clip_config(clip_config)
    return {
        "vqa_params": sum(p.numel() for p in vqa.parameters()),
        "clip_params": sum(p.numel() for p in clip.parameters()),
    }


def _write_clip_config(clip_config: Path) -> None:
    with atomic_path(clip_config) as tmp_config:
        tmp_config.write_text(json.dumps(clip_text.TINY_CONFIG, indent=2) + "\n")


def _trained(
    vqa_out: Path,
    clip_weights: Path,
    clip_config: Path,
    words: list[str],
    training: demo_vlms.Training,
    usage: demo_vlms.Usage,
) -> dict:
    """Train both models on their own renders, save them, then score the saved files.

    Scoring what `load_clip` / `load_vqa` read back checks what the pipeline will load.
    """
    train, held = demo_vlms.scene_sets(training, usage)
    clip, clip_figures = demo_vlms.train_clip(clip_config.stem, train, training, usage)
    with atomic_path(clip_weights) as tmp_weights:
        save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, tmp_weights)
    _write_clip_config(clip_config)
    tokenizer = blip.word_tokenizer(words)
    vqa, vqa_figures = demo_vlms.train_vqa(tokenizer, train, training, usage)
    with atomic_dir(vqa_out) as tmp:
        vqa.save_pretrained(tmp)
        size = {"height": usage.vqa_image_size, "width": usage.vqa_image_size}
        image_processor = blip.BlipImageProcessor(size=size)
        blip.BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(
            tmp
        )
    return {
        "clip_params": sum(p.numel() for p in clip.parameters()),
        "vqa_params": sum(p.numel() for p in vqa.parameters()),
        "clip_training": clip_figures,
        "vqa_training": vqa_figures,
        "held_apart_scenes": len(held),
        "accuracy": _score(vqa_out, clip_weights, clip_config, held, usage),
    }


def _score(
    vqa_out: Path,
    clip_weights: Path,
    clip_config: Path,
    held: list[demo_vlms.Sample],
    usage: demo_vlms.Usage,
) -> dict[str, float]:
    """Accuracies of the saved models on the held-apart scenes; logs some real answers."""
    cpu = torch.device("cpu")
    clip, tokenizer = clip_text.load_clip(clip_config.stem, str(clip_weights), cpu, clip_config)
    accuracy = demo_vlms.clip_accuracy(clip, tokenizer, held, usage)
    vqa, processor = blip.load_vqa(str(vqa_out), cpu)
    rows = demo_vlms.vqa_answers(vqa, processor, held, usage)
    accuracy |= demo_vlms.vqa_accuracy(rows)
    for kind, question, truth, said in rows[:: max(1, len(rows) // 12)]:
        log.info("%s %r: %r (true: %r)", kind, question, said, truth)
    log.info("demo VLM accuracy on %d held-apart scenes: %s", len(held), accuracy)
    return accuracy


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vqa-out", type=Path, required=True, help="BLIP VQA folder to write")
    p.add_argument("--clip-weights", type=Path, required=True, help=".safetensors to write")
    p.add_argument("--clip-config", type=Path, required=True, help="<architecture>.json to write")
    p.add_argument("--quality", type=Path, help="JSON of sizes, training figures and accuracies")
    p.add_argument("--texts", nargs="*", default=[], help="texts whose words the vocabulary holds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vqa-image-size", type=int, default=96)
    p.add_argument("--world", choices=WORLDS, default="shapes")
    p.add_argument("--trained", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    defaults = demo_vlms.Training()
    p.add_argument("--renders", type=int, default=defaults.renders)
    p.add_argument("--eval-renders", type=int, default=defaults.eval_renders)
    p.add_argument("--clip-steps", type=int, default=defaults.clip_steps)
    p.add_argument("--vqa-steps", type=int, default=defaults.vqa_steps)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--clip-lr", type=float, default=defaults.clip_lr)
    p.add_argument("--vqa-lr", type=float, default=defaults.vqa_lr)
    p.add_argument("--train-cooccurrence", type=float, default=defaults.train_cooccurrence)
    # How the pipeline uses the models (for training and scoring them).
    p.add_argument("--image-size", type=int, default=160, help="demo scene side")
    p.add_argument("--cooccurrence", type=float, default=0.85, help="held-apart scenes'")
    p.add_argument("--prompt", default="a photo of {}.")
    p.add_argument("--fg-questions", nargs="*", default=[])
    p.add_argument("--bg-questions", nargs="*", default=[])
    p.add_argument("--enc-token", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--max-question-tokens", type=int, default=35)
    p.add_argument("--num-beams", type=int, default=3)
    p.add_argument("--max-length", type=int, default=10)
    p.add_argument("--min-length", type=int, default=1)
    p.add_argument("--clip-input-norm", choices=("imagenet", "clip"), default="imagenet")
    p.add_argument("--mask-prompt-depth", type=int, default=0, help="0: plain CLIP tower")


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    training = demo_vlms.Training(
        renders=args.renders,
        eval_renders=args.eval_renders,
        clip_steps=args.clip_steps,
        vqa_steps=args.vqa_steps,
        batch_size=args.batch_size,
        clip_lr=args.clip_lr,
        vqa_lr=args.vqa_lr,
        train_cooccurrence=args.train_cooccurrence,
        seed=args.seed,
    )
    usage = demo_vlms.Usage(
        image_size=args.image_size,
        cooccurrence=args.cooccurrence,
        prompt=args.prompt,
        fg_questions=tuple(args.fg_questions),
        bg_questions=tuple(args.bg_questions),
        vqa_image_size=args.vqa_image_size,
        enc_token=args.enc_token,
        max_question_tokens=args.max_question_tokens,
        decoding=blip.Decoding(args.num_beams, args.max_length, args.min_length),
        clip_input_norm=args.clip_input_norm,
        mask_prompt_depth=args.mask_prompt_depth,
    )
    run(
        args.vqa_out,
        args.clip_weights,
        args.clip_config,
        texts=args.texts,
        seed=args.seed,
        vqa_image_size=args.vqa_image_size,
        world=args.world,
        trained=args.trained,
        training=training,
        usage=usage,
        quality=args.quality,
    )
