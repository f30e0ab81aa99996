"""Throughput of VQA answering and of text features: qaclims vs the reference's way.

VQA: full-size BLIP-base (`BlipConfig()` defaults, random weights), the same images and
questions both ways, beam 3, max_length 10:
- reference (QA-CLIMS get_blip_vqa_results.py): one `generate` per question, the image
  re-encoded every time;
- qaclims: `blip.answer_ids`, the images encoded once in one batch, each image's questions
  through the text encoder together, all answers decoded in one padded beam search.
Text features: CLIP ViT-L-14 text tower (random weights, fp32) on a duplicate-heavy answer
list like the real corpus:
- reference (gen_text_feats_cache.py): one `encode_text` call (77 positions) per answer;
- qaclims: `clip_text.encode_texts`: each unique text once, batched by length, each batch
  cut to the positions its longest text needs.
Both report answers/embeddings equal or not, then the speed ratio.

    PYTHONPATH=. python benchmarks/bench_qape.py [--images 2 --questions 16 --classes 1 --size 384]

The paper's setting: --questions 16 --classes 2 --size 480 (16 questions for each of an
image's classes, VOC/COCO images having about two).
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import open_clip
import torch
from transformers import BlipConfig, BlipForQuestionAnswering

from qaclims import demo_models
from qaclims.models import blip, clip_text

FG = [
    "What kind of {} is in the photo?",
    "What type of {} is in the photo?",
    "What is this {} also called?",
    "What is this {} usually called?",
    "What is another word for this {}?",
    "What is another name for this {}?",
]
BG = [
    "what is above the {}?",
    "what is under the {}?",
    "what is behind the {}?",
    "what is around the {}?",
    "what is next to the {}?",
    "what is the left side of {}?",
    "what is the right side of {}?",
    "what scene is the {} in?",
    "what environment is the {} in?",
    "what place is the {} in?",
]


CLASS_NAMES = ("ball", "dog", "boat", "train")


def bench_vqa(images: int, questions: int, classes: int, size: int) -> float:
    torch.manual_seed(0)
    model = BlipForQuestionAnswering(BlipConfig()).eval()
    blip.fix_cross_attention_mask(model)
    templates = (FG + BG)[:questions]
    names = CLASS_NAMES[:classes]
    tokenizer = blip.word_tokenizer(demo_models.vocabulary(templates + list(names)))
    # The timing does not depend on the first token id; the default config's bos is not
    # next to this word tokenizer's [ENC], so the questions keep [CLS].
    ids = blip.question_ids(
        tokenizer,
        [t.format(name) for name in names for t in templates],
        enc_token=False,
        max_tokens=35,
        text_config=model.config.text_config,
    )
    pixels = torch.randn(images, 3, size, size, generator=torch.Generator().manual_seed(0))
    decoding = blip.Decoding(num_beams=3, max_length=10, min_length=1)
    with torch.inference_mode():
        start = time.perf_counter()
        ours = blip.answer_ids(model, pixels, [ids] * images, decoding)
        t_ours = time.perf_counter() - start
        start = time.perf_counter()
        reference = [
            [
                blip.strip_answer(
                    model.generate(
                        input_ids=torch.tensor([q]),
                        pixel_values=pixels[b : b + 1],
                        interpolate_pos_encoding=size != model.config.vision_config.image_size,
                        num_beams=3,
                        max_length=10,
                        min_length=1,
                    )[0].tolist(),
                    model.config.text_config,
                )
                for q in ids
            ]
            for b in range(images)
        ]
        t_ref = time.perf_counter() - start
    n = images * len(ids)
    print(
        f"VQA BLIP-base {size}px, {images} images x {classes} classes x {questions} "
        f"questions, beam 3: "
        f"reference {t_ref:.1f} s ({t_ref / n:.2f} s/question), qaclims {t_ours:.1f} s "
        f"({t_ours / n:.3f} s/question), identical answers: {ours == reference}, "
        f"speed-up {t_ref / t_ours:.1f}x"
    )
    return t_ref / t_ours


def bench_text(answers: int, unique: int) -> float:
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-L-14-quickgelu").eval()
    tokenizer = open_clip.get_tokenizer("ViT-L-14-quickgelu")
    words = sorted(set(demo_models.ANSWER_WORDS))
    rng = random.Random(0)
    pool = [f"a photo of {' '.join(rng.sample(words, rng.randint(1, 2)))}." for _ in range(unique)]
    # Zipf-like: a few answers ("grass", "sky") make up most of the corpus
    weights = [1 / (k + 1) for k in range(unique)]
    corpus = rng.choices(pool, weights=weights, k=answers)
    start = time.perf_counter()
    distinct = sorted(set(corpus))
    table = dict(zip(distinct, clip_text.encode_texts(model, tokenizer, distinct), strict=True))
    ours = np.stack([table[t] for t in corpus])
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    with torch.inference_mode():
        reference = np.concatenate(
            [model.encode_text(tokenizer([t]), normalize=True).numpy() for t in corpus]
        )
    t_ref = time.perf_counter() - start
    print(
        f"text ViT-L-14, {answers} answers ({len(distinct)} unique): reference {t_ref:.1f} s, "
        f"qaclims {t_ours:.1f} s, max |diff| {np.abs(ours - reference).max():.1e}, "
        f"speed-up {t_ref / t_ours:.1f}x"
    )
    return t_ref / t_ours


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--questions", type=int, default=16, choices=range(1, 17))
    p.add_argument("--classes", type=int, default=1, choices=range(1, len(CLASS_NAMES) + 1))
    p.add_argument("--size", type=int, default=384, help="BLIP input side (paper: 480)")
    p.add_argument("--answers", type=int, default=240, help="answers in the text corpus")
    p.add_argument("--unique", type=int, default=40, help="distinct answers they draw from")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--skip-vqa", action="store_true")
    p.add_argument("--skip-text", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    if not args.skip_vqa:
        bench_vqa(args.images, args.questions, args.classes, args.size)
    if not args.skip_text:
        bench_text(args.answers, args.unique)


if __name__ == "__main__":
    main()
