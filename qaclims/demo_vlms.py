"""Demo VLMs that know the demo world: a tiny CLIP and BLIP VQA trained on their own renders.

Random tiny models make the QA corpora noise, so RITC learns from nothing. These are trained
offline, seeded, in a few CPU minutes, on scenes of `datasets.demo_world` drawn from their
own generator streams (never the demo's training split, which uses `default_rng(seed)`):

- CLIP: symmetric multi-positive InfoNCE. Region images are made as RITC makes them (the
  normalised crop times the object mask, or times 1 − mask, through the same mask-prompt
  tower); an object region matches the prompts of its class name and of its post-processed
  kind answer ("a photo of canoe boat."), a background region the prompt of its lemmatised
  background word ("a photo of rail."): exactly the texts the text-features stage encodes.
  Whole images match "a photo of a boat on water." against the other whole images.
- BLIP VQA: teacher-forced decoder loss on (image, question, answer) triples from the
  pipeline's FG templates (answer: the kind of that class's object) and BG templates
  (answer: the background word), questions tokenised as QAPE does ([ENC] first).

Training scenes are drawn with `train_cooccurrence` (default 0.2: backgrounds independent of
classes), so the models name what is visible rather than the dataset's bias; accuracy is
measured on held-apart scenes of the demo's own co-occurrence, through the real paths
(`clip_text.encode_texts`, `blip.answer_ids`) on the saved and reloaded files.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN as CLIP_MEAN
from open_clip.constants import OPENAI_DATASET_STD as CLIP_STD
from PIL import Image
from torch import Tensor
from torch.nn import functional as F

from qaclims.augment import IMAGENET_MEAN, IMAGENET_STD
from qaclims.corpus import fg_text
from qaclims.datasets import demo_world
from qaclims.models import blip, clip_text
from qaclims.models.mask_clip import MaskCLIPImage
from qaclims.qape import make_lemmatizer

log = logging.getLogger(__name__)

# Generator streams of the training and the held-apart scenes, and of batch sampling.
TRAIN_STREAM, EVAL_STREAM, SAMPLE_STREAM = 7919, 7920, 7921
WIDTH = 64  # both VQA towers (BLIP needs vision width = text width)
CLIP_SIZE = clip_text.TINY_CONFIG["vision_cfg"]["image_size"]


@dataclass(frozen=True)
class Training:
    """The training knobs (config `demo_vlms`)."""

    renders: int = 1200
    eval_renders: int = 200
    clip_steps: int = 400
    vqa_steps: int = 700
    batch_size: int = 32
    clip_lr: float = 2e-3
    vqa_lr: float = 2e-3
    train_cooccurrence: float = 0.2
    seed: int = 0


@dataclass(frozen=True)
class Usage:
    """How the pipeline uses the models: the models learn and are scored under exactly this."""

    image_size: int  # demo scene side (demo.image_size)
    cooccurrence: float  # demo.cooccurrence: the held-apart scenes'
    prompt: str  # text.prompt
    fg_questions: tuple[str, ...]
    bg_questions: tuple[str, ...]
    vqa_image_size: int  # qape.image_size
    enc_token: bool
    max_question_tokens: int
    decoding: blip.Decoding
    clip_input_norm: str  # ritc.clip_input_norm
    mask_prompt_depth: int  # 0: the plain tower (ritc.clip_mode plain)


@dataclass(frozen=True)
class Sample:
    """One scene as the models see it; masks at CLIP size."""

    scene: demo_world.Scene
    clip_image: Tensor  # 3×S×S, normalised as RITC feeds CLIP
    object_masks: dict[int, Tensor]  # class -> 1×S×S binary mask of its pixels
    background_mask: Tensor  # 1×S×S
    kinds: dict[int, str]  # class -> its kind, for classes whose objects share one kind
    vqa_pixels: Tensor  # 3×V×V, BLIP preprocessing


def render(n: int, size: int, cooccurrence: float, seed: int, stream: int) -> list:
    """`n` scenes from the generator stream (seed, stream)."""
    rng = np.random.default_rng([seed, stream])
    return [demo_world.render_scene(rng, size, cooccurrence=cooccurrence) for _ in range(n)]


def scene_sets(training: Training, usage: Usage) -> tuple[list[Sample], list[Sample]]:
    """Training samples (own stream, `train_cooccurrence`) and held-apart ones (another
    stream, the demo's co-occurrence: what the pipeline's images look like)."""
    size, seed = usage.image_size, training.seed
    train = render(training.renders, size, training.train_cooccurrence, seed, TRAIN_STREAM)
    held = render(training.eval_renders, size, usage.cooccurrence, seed, EVAL_STREAM)
    return samples(train, usage), samples(held, usage)


def _mean_std(norm: str) -> tuple[tuple, tuple]:
    return (CLIP_MEAN, CLIP_STD) if norm == "clip" else (IMAGENET_MEAN, IMAGENET_STD)


def _resized_mask(mask: np.ndarray, size: int) -> Tensor:
    area = cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(area >= 0.5).float()[None]


def sample(scene: demo_world.Scene, usage: Usage, vqa_norm: tuple[tuple, tuple]) -> Sample:
    """The scene's model inputs; the 255 border band counts as its object's (dilated mask)."""
    mean, std = _mean_std(usage.clip_input_norm)
    small = cv2.resize(scene.image, (CLIP_SIZE, CLIP_SIZE), interpolation=cv2.INTER_AREA)
    clip_image = (small.astype(np.float32) / 255 - np.float32(mean)) / np.float32(std)
    kernel = np.ones((3, 3), np.uint8)
    masks, kinds = {}, {}
    for cls in sorted({c for c, _ in scene.objects}):
        grown = cv2.dilate((scene.labels == cls + 1).astype(np.uint8), kernel)
        masks[cls] = _resized_mask(grown, CLIP_SIZE)
        names = {k for c, k in scene.objects if c == cls}
        if len(names) == 1:
            kinds[cls] = names.pop()
    pixels = blip.preprocess(Image.fromarray(scene.image), usage.vqa_image_size, *vqa_norm)
    return Sample(
        scene,
        torch.from_numpy(clip_image.transpose(2, 0, 1).copy()),
        masks,
        _resized_mask(scene.labels == 0, CLIP_SIZE),
        kinds,
        pixels,
    )


def samples(scenes: list[demo_world.Scene], usage: Usage) -> list[Sample]:
    """Model inputs of the scenes; BLIP's normalisation is its image processor's default."""
    processor = blip.BlipImageProcessor()
    vqa_norm = (tuple(processor.image_mean), tuple(processor.image_std))
    return [sample(scene, usage, vqa_norm) for scene in scenes]


class Texts:
    """The corpus texts the pipeline makes from true answers, and their prompts."""

    def __init__(self, prompt: str) -> None:
        lemma = make_lemmatizer("lemminflect")
        self.prompt = prompt
        self.classes = [prompt.format(c) for c in demo_world.CLASSES]
        self.kind_names = [k for c in demo_world.CLASSES for k in demo_world.KINDS[c]]
        self.kinds = [
            prompt.format(fg_text(lemma(k), c, {}))
            for c in demo_world.CLASSES
            for k in demo_world.KINDS[c]
        ]
        self.backgrounds = [prompt.format(lemma(b)) for b in demo_world.BACKGROUNDS]
        self.regions = self.classes + self.kinds + self.backgrounds

    def whole(self, scene: demo_world.Scene) -> str:
        """'a photo of a boat and a cow on grass.'-style caption of a whole scene."""
        names = dict.fromkeys(demo_world.CLASSES[c] for c, _ in scene.objects)
        return self.prompt.format(" and ".join(f"a {n}" for n in names) + f" on {scene.background}")

    def positives(self, s: Sample, cls: int) -> list[int]:
        """Indices in `regions` of the object region's class and (if unique) kind prompts."""
        found = [cls]
        if cls in s.kinds:
            found.append(len(self.classes) + self.kind_names.index(s.kinds[cls]))
        return found

    def background(self, s: Sample) -> int:
        offset = len(self.classes) + len(self.kinds)
        return offset + demo_world.BACKGROUNDS.index(s.scene.background)


def infonce(v: Tensor, t: Tensor, positive: Tensor, scale: Tensor) -> Tensor:
    """Symmetric InfoNCE with several positives per row and column (mean of both directions).

    An object region has two true captions (class and kind), a caption many true regions in
    a batch: each side's positives share the numerator instead of being pushed apart.
    """
    logits = scale * v @ t.T
    hidden = torch.finfo(logits.dtype).min
    image_to_text = logits.logsumexp(1) - logits.masked_fill(~positive, hidden).logsumexp(1)
    used = positive.any(0)
    columns = logits.T[used]
    text_to_image = columns.logsumexp(1) - columns.masked_fill(~positive.T[used], hidden).logsumexp(
        1
    )
    return (image_to_text.mean() + text_to_image.mean()) / 2


def _schedule(step: int, steps: int) -> float:
    """Linear warm-up over the first 10 % of the steps, then cosine decay to zero."""
    warm = max(1, steps // 10)
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))


def build_clip(name: str, seed: int) -> torch.nn.Module:
    """A fresh TINY_CONFIG CLIP registered as `name`, the file stem it is saved under."""
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / f"{name}.json"
        config.write_text(json.dumps(clip_text.TINY_CONFIG))
        open_clip.add_model_config(config)
    torch.manual_seed(seed)
    return open_clip.create_model(name)


def clip_batch(
    batch: list[Sample], texts: Texts
) -> tuple[Tensor, Tensor, Tensor, list[str], Tensor]:
    """Region images with their masks and positives over `texts.regions`; whole-image captions.

    Region images are RITC's: image × mask for each present class, image × (1 − mask) for
    the background, each with the mask the mask-prompt tower gets.
    """
    images, masks, positives = [], [], []
    for s in batch:
        for cls, mask in s.object_masks.items():
            images.append(s.clip_image * mask)
            masks.append(mask)
            positives.append(texts.positives(s, cls))
        images.append(s.clip_image * s.background_mask)
        masks.append(s.background_mask)
        positives.append([texts.background(s)])
    positive = torch.zeros(len(images), len(texts.regions), dtype=torch.bool)
    for row, columns in enumerate(positives):
        positive[row, columns] = True
    wholes = torch.stack([s.clip_image for s in batch])
    return (
        torch.stack(images),
        torch.stack(masks),
        positive,
        [texts.whole(s.scene) for s in batch],
        wholes,
    )


def clip_step(
    model: torch.nn.Module,
    tower: MaskCLIPImage,
    tokenizer,
    batch: list[Sample],
    texts: Texts,
) -> Tensor:
    """Region loss (regions against all region prompts) + whole-image loss (in-batch captions)."""
    images, masks, positive, captions, wholes = clip_batch(batch, texts)
    distinct = list(dict.fromkeys(captions))
    tokens = tokenizer(texts.regions + distinct)
    embedded = clip_text._encode_trimmed(model, tokens)
    regions, whole_texts = embedded[: len(texts.regions)], embedded[len(texts.regions) :]
    scale = model.logit_scale.exp()
    v = F.normalize(tower(images, masks), dim=-1)
    region_loss = infonce(v, regions, positive, scale)
    w = F.normalize(tower(wholes), dim=-1)
    same = torch.tensor([distinct.index(c) for c in captions])
    whole_positive = same[:, None] == torch.arange(len(distinct))[None]
    return region_loss + infonce(w, whole_texts, whole_positive, scale)


def _optimiser(model: torch.nn.Module, lr: float, steps: int):
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda t: _schedule(t, steps))
    return optimiser, schedule


def _batches(samples: list[Sample], size: int, steps: int, rng: np.random.Generator):
    """`steps` batches of `size` samples, each drawn without replacement."""
    for _ in range(steps):
        yield [
            samples[i]
            for i in rng.choice(len(samples), size=min(size, len(samples)), replace=False)
        ]


def train_clip(
    name: str, samples: list[Sample], training: Training, usage: Usage
) -> tuple[torch.nn.Module, dict[str, float]]:
    """The trained CLIP and its training figures (steps/s, mean loss of the last tenth)."""
    model = build_clip(name, training.seed)
    tower = MaskCLIPImage(model.visual, usage.mask_prompt_depth)
    tower.visual.requires_grad_(True)  # MaskCLIPImage freezes the tower it wraps
    tokenizer = open_clip.get_tokenizer(name)
    texts = Texts(usage.prompt)
    optimiser, schedule = _optimiser(model, training.clip_lr, training.clip_steps)
    rng = np.random.default_rng([training.seed, SAMPLE_STREAM])
    losses, start = [], time.perf_counter()
    model.train()
    for step, batch in enumerate(_batches(samples, training.batch_size, training.clip_steps, rng)):
        loss = clip_step(model, tower, tokenizer, batch, texts)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        if step % 50 == 0:
            log.info("clip step %d: loss %.3f", step, loss.item())
    return model.eval(), _figures(losses, time.perf_counter() - start)


def _figures(losses: list[float], seconds: float) -> dict[str, float]:
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "steps_per_s": round(len(losses) / max(seconds, 1e-9), 2),
        "final_loss": round(float(np.mean(tail)), 4),
        "seconds": round(seconds, 1),
    }


@torch.inference_mode()
def clip_accuracy(model: torch.nn.Module, tokenizer, samples: list[Sample], usage: Usage) -> dict:
    """Zero-shot accuracy over the pipeline's prompts: object regions -> class among 5 and
    kind among 10, background regions -> background among 5 (chance 20 %, 10 %, 20 %).

    Texts go through `clip_text.encode_texts`, images through the RITC tower: the real paths.
    """
    texts = Texts(usage.prompt)
    tower = MaskCLIPImage(model.visual, usage.mask_prompt_depth)
    encoded = torch.from_numpy(clip_text.encode_texts(model, tokenizer, texts.regions))
    images, masks, positive, _, _ = clip_batch(samples, texts)
    similarity = F.normalize(tower(images, masks), dim=-1) @ encoded.T
    groups = {"object_class": (0, 5), "object_kind": (5, 15), "background": (15, 20)}
    accuracy = {}
    for name, (lo, hi) in groups.items():
        rows = positive[:, lo:hi].any(1)
        best = similarity[rows, lo:hi].argmax(1)
        hits = positive[rows, lo:hi].gather(1, best[:, None])
        accuracy[f"clip_{name}"] = round(hits.float().mean().item(), 4)
    return accuracy


def build_vqa(tokenizer, image_size: int, seed: int) -> blip.BlipForQuestionAnswering:
    """tiny_vqa's architecture with the default initialisation (0.02), which trains.

    tiny_vqa's 0.5 only serves to make a random model's answers vary.
    """
    text = blip.BlipTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=WIDTH,
        encoder_hidden_size=WIDTH,
        intermediate_size=4 * WIDTH,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id,
        sep_token_id=tokenizer.sep_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = blip.BlipVisionConfig(
        hidden_size=WIDTH,
        intermediate_size=4 * WIDTH,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=16,
    )
    config = blip.BlipConfig(text_config=text.to_dict(), vision_config=vision.to_dict())
    torch.manual_seed(seed)
    return blip.BlipForQuestionAnswering(config)


class Questions:
    """Question and answer token ids as QAPE builds them, by (template, class)."""

    def __init__(self, tokenizer, text_config, usage: Usage) -> None:
        self.fg, self.bg = usage.fg_questions, usage.bg_questions
        texts = [q.format(c) for q in (*self.fg, *self.bg) for c in demo_world.CLASSES]
        ids = blip.question_ids(
            tokenizer,
            texts,
            enc_token=usage.enc_token,
            max_tokens=usage.max_question_tokens,
            text_config=text_config,
        )
        self.ids = dict(zip(texts, ids, strict=True))
        self.tokenizer, self.bos = tokenizer, text_config.bos_token_id

    def answer(self, word: str) -> list[int]:
        """[DEC] answer [SEP]: what the decoder starts from and must produce."""
        return [self.bos, *self.tokenizer(word)["input_ids"][1:]]

    def asked(self, s: Sample, rng: np.random.Generator | None) -> list[tuple[str, str, str]]:
        """(kind, question, true answer) about the sample. With `rng`: a random FG template
        per class of known kind (the kinds are the harder task) and one random BG question;
        without: every template for every present class."""
        fg = [(q, c, s.kinds[c]) for c in s.kinds for q in self.fg]
        bg = [(q, c, s.scene.background) for c in s.object_masks for q in self.bg]
        if rng is not None:
            fg = [(self.fg[rng.integers(len(self.fg))], c, s.kinds[c]) for c in s.kinds]
            bg = [bg[rng.integers(len(bg))]]
        return [
            (kind, q.format(demo_world.CLASSES[c]), truth)
            for kind, group in (("fg", fg), ("bg", bg))
            for q, c, truth in group
        ]


def _padded(rows: list[list[int]], pad: int) -> tuple[Tensor, Tensor]:
    ids = torch.full((len(rows), max(map(len, rows))), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def vqa_step(
    model: blip.BlipForQuestionAnswering,
    batch: list[Sample],
    questions: Questions,
    rng: np.random.Generator,
) -> Tensor:
    """Teacher-forced decoder loss (BLIP's own) of `Questions.asked` with `rng` per scene;
    each image is encoded once for its questions, as `answer_ids` does."""
    pad = model.config.text_config.pad_token_id
    image_of, asked, answers = [], [], []
    for i, s in enumerate(batch):
        for _, question, truth in questions.asked(s, rng):
            image_of.append(i)
            asked.append(questions.ids[question])
            answers.append(questions.answer(truth))
    image_embeds = model.vision_model(pixel_values=torch.stack([s.vqa_pixels for s in batch]))[0]
    ids, mask = _padded(asked, pad)
    encoded = model.text_encoder(
        input_ids=ids,
        attention_mask=mask,
        encoder_hidden_states=image_embeds[torch.tensor(image_of)],
        return_dict=False,
    )[0]
    decoder_ids, decoder_mask = _padded(answers, pad)
    out = model.text_decoder(
        input_ids=decoder_ids,
        attention_mask=decoder_mask,
        encoder_hidden_states=encoded,
        encoder_attention_mask=mask,
        labels=decoder_ids.masked_fill(decoder_mask == 0, -100),
        reduction="mean",
    )
    return out.loss


def train_vqa(
    tokenizer, samples: list[Sample], training: Training, usage: Usage
) -> tuple[blip.BlipForQuestionAnswering, dict[str, float]]:
    """The trained VQA model (question mask honoured, as at answering time) and its figures."""
    model = build_vqa(tokenizer, usage.vqa_image_size, training.seed)
    blip.fix_cross_attention_mask(model)
    questions = Questions(tokenizer, model.config.text_config, usage)
    optimiser, schedule = _optimiser(model, training.vqa_lr, training.vqa_steps)
    rng = np.random.default_rng([training.seed, SAMPLE_STREAM + 1])
    losses, start = [], time.perf_counter()
    model.train()
    for step, batch in enumerate(_batches(samples, training.batch_size, training.vqa_steps, rng)):
        loss = vqa_step(model, batch, questions, rng)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        if step % 50 == 0:
            log.info("vqa step %d: loss %.3f", step, loss.item())
    return model.eval(), _figures(losses, time.perf_counter() - start)


def vqa_answers(
    model: blip.BlipForQuestionAnswering, processor, samples: list[Sample], usage: Usage
) -> list[tuple[str, str, str, str]]:
    """(kind, question, true answer, model answer) for every template about every held-apart
    scene's classes, answered by `blip.answer_ids` with the pipeline's decoding."""
    questions = Questions(processor.tokenizer, model.config.text_config, usage)
    rows = []
    for start in range(0, len(samples), 16):
        chunk = samples[start : start + 16]
        asked = [questions.asked(s, None) for s in chunk]
        ids = blip.answer_ids(
            model,
            torch.stack([s.vqa_pixels for s in chunk]),
            [[questions.ids[q] for _, q, _ in per_image] for per_image in asked],
            usage.decoding,
        )
        for per_image, answer_ids in zip(asked, ids, strict=True):
            said = blip.decode(processor.tokenizer, answer_ids)
            rows += [(*row, a) for row, a in zip(per_image, said, strict=True)]
    return rows


def vqa_accuracy(rows: list[tuple[str, str, str, str]]) -> dict[str, float]:
    """Exact-answer accuracy, FG (chance 50 % between the class's kinds) and BG (20 %)."""
    return {
        f"vqa_{kind}": round(float(np.mean([t == a for k, _, t, a in rows if k == kind])), 4)
        for kind in ("fg", "bg")
    }
