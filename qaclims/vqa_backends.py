"""VQA backends: one interface over the model families QAPE can ask.

A backend turns a batch of preprocessed images and the questions about each into answer
strings; it encodes each image once for all its questions. `load` picks it from the model's
config.json (`model_type`, checked against `architectures`), or from `qape.backend`:

- `blip`: BlipForQuestionAnswering, the paper's model (models/blip.py): the question as
  BLIP encodes it ([ENC] first), its own decoding (num_beams, max_length, min_length), its
  answer as decoded: already a short answer.
- `llava`: LlavaForConditionalGeneration (models/llava.py), an instruction-following VLM.
  The question goes into `qape.prompt` (`{}` marks where; default LLaVA-1.5's
  short-answer VQA prompt "{} Answer the question using a single word or
  phrase."), which is the user turn of the processor's own chat template, after the
  image. Decoding: `qape.num_beams`, at most `qape.max_new_tokens` tokens, greedy or beam,
  nothing from the checkpoint's sampling settings. Its reply goes through
  `short_answer.clean` (echo, sentence and filler removal, at most `qape.answer_words`
  words) before QAPE lemmatises it. Images are preprocessed by the model's own image
  processor (its size, crop and normalisation; `qape.image_size` is BLIP's).

`setup` is what besides the weights shapes a backend's answers: the answer store's key
(qaclims/answer_store.py), so a BLIP store ignores the prompt and a LLaVA store the BLIP
settings.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image

from qaclims import fingerprint, short_answer
from qaclims.errors import InputError
from qaclims.models import blip, llava

# backend -> (config.json model_type, the class its weights are for)
BACKENDS = {
    "blip": ("blip", "BlipForQuestionAnswering"),
    "llava": ("llava", "LlavaForConditionalGeneration"),
}
CHOICES = ("auto", *BACKENDS)
QUESTION = "{}"
DEFAULT_PROMPT = "{} Answer the question using a single word or phrase."


@dataclass(frozen=True)
class Prompting:
    """How an instruction VLM is asked and its reply shortened (qape.prompt, ...)."""

    template: str = DEFAULT_PROMPT
    max_new_tokens: int = 10
    answer_words: int = 3

    def __post_init__(self) -> None:
        rest = self.template.replace(QUESTION, "")
        if self.template.count(QUESTION) != 1 or "{" in rest or "}" in rest:
            raise InputError(
                f"qape.prompt '{self.template}' must contain {QUESTION} exactly once "
                "and no other braces"
            )

    def text(self, question: str) -> str:
        return self.template.replace(QUESTION, question)


@dataclass(frozen=True)
class Answering:
    """Everything besides the model's weights that shapes an answer (ALGORITHM §1)."""

    image_size: int
    decoding: blip.Decoding
    enc_token: bool
    max_question_tokens: int
    precision: str = "fp32"  # bf16: autocast on CUDA (qaclims/devices.py)
    backend: str = "auto"
    prompting: Prompting = Prompting()


class Backend(Protocol):
    """A loaded VQA model: its images' transform and batched answering."""

    name: str
    device: torch.device

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """Image -> pixel tensor; picklable (it runs in the DataLoader workers)."""
        ...

    def answer(self, pixels: torch.Tensor, questions: list[list[str]]) -> list[list[str]]:
        """Answers to `questions[b]` about image b (`pixels[b]`), in order."""
        ...


def config_file(name: str) -> Path:
    """The config.json of a model folder or of a hub id's cached snapshot."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path / "config.json"
    if path.exists() or not fingerprint.looks_like_hub_id(name):
        raise fingerprint.missing_vqa(name)
    what = "VQA model (models.vqa)"
    revision = fingerprint.hub_revision(name, ("config.json",), what)
    repo = fingerprint.hf_hub_cache() / f"models--{name.replace('/', '--')}"
    return repo / "snapshots" / revision / "config.json"


def select(name: str, choice: str = "auto") -> str:
    """The backend for model `name`: `choice`, or for `auto` the one its config.json names."""
    if choice not in CHOICES:
        raise InputError(f"qape.backend '{choice}' is not one of {list(CHOICES)}")
    if choice != "auto":
        return choice
    path = config_file(name)
    try:
        config = json.loads(path.read_text())
    except OSError as err:
        raise InputError(f"{path}: cannot read the VQA model's config ({err.strerror})") from err
    except ValueError as err:
        raise InputError(f"{path}: the VQA model's config is not JSON ({err})") from err
    config = config if isinstance(config, dict) else {}
    model_type, architectures = config.get("model_type"), config.get("architectures") or []
    supported = ", ".join(f"{b} ({cls}, model_type '{t}')" for b, (t, cls) in BACKENDS.items())
    for backend, (kind, cls) in BACKENDS.items():
        if model_type == kind and (not architectures or cls in architectures):
            return backend
    raise InputError(
        f"{name}: VQA model type '{model_type}' (architectures {architectures}) is not "
        f"supported; supported: {supported}; or force one with qape.backend"
    )


def setup(backend: str, answering: Answering) -> dict:
    """The answering settings that shape `backend`'s answers (the answer store's key)."""
    if backend == "blip":
        return {
            "backend": backend,
            "image_size": answering.image_size,
            "decoding": dataclasses.asdict(answering.decoding),
            "enc_token": answering.enc_token,
            "max_question_tokens": answering.max_question_tokens,
            "precision": answering.precision,
        }
    return {
        "backend": backend,
        "num_beams": answering.decoding.num_beams,
        "prompting": dataclasses.asdict(answering.prompting),
        "precision": answering.precision,
    }


@dataclass(frozen=True)
class _BlipTransform:
    size: int
    mean: tuple
    std: tuple

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return blip.preprocess(image, self.size, self.mean, self.std)


class BlipBackend:
    """BLIP VQA as the paper asks it: `blip.answer_ids` (exact batching) and `blip.decode`."""

    name = "blip"

    def __init__(self, model, processor, answering: Answering) -> None:
        self.model, self.processor, self.answering = model, processor, answering
        self.device = model.device
        self._ids: dict[str, list[int]] = {}

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        image_processor = self.processor.image_processor
        return _BlipTransform(
            self.answering.image_size,
            tuple(image_processor.image_mean),
            tuple(image_processor.image_std),
        )

    def _question_ids(self, questions: list[str]) -> list[list[int]]:
        new = sorted({q for q in questions if q not in self._ids})
        if new:
            ids = blip.question_ids(
                self.processor.tokenizer,
                new,
                enc_token=self.answering.enc_token,
                max_tokens=self.answering.max_question_tokens,
                text_config=self.model.config.text_config,
            )
            self._ids.update(zip(new, ids, strict=True))
        return [self._ids[q] for q in questions]

    def answer(self, pixels: torch.Tensor, questions: list[list[str]]) -> list[list[str]]:
        asked = [self._question_ids(qs) for qs in questions]
        ids = blip.answer_ids(self.model, pixels, asked, self.answering.decoding)
        return [blip.decode(self.processor.tokenizer, per_image) for per_image in ids]


class LlavaBackend:
    """A LLaVA-style VLM asked through its chat template; replies shortened (module doc)."""

    name = "llava"

    def __init__(self, model, processor, answering: Answering) -> None:
        self.model, self.processor, self.prompting = model, processor, answering.prompting
        self.device = model.device
        self.generation = llava.generation_config(
            model, answering.decoding.num_beams, answering.prompting.max_new_tokens
        )

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        return functools.partial(llava.preprocess, self.processor.image_processor)

    def answer(self, pixels: torch.Tensor, questions: list[list[str]]) -> list[list[str]]:
        users = [[self.prompting.text(q) for q in qs] for qs in questions]
        texts = [[llava.prompt_text(self.processor, u) for u in us] for us in users]
        asked = [llava.prompt_ids(self.processor, ts, pixels) for ts in texts]
        ids = llava.answer_ids(self.model, pixels, asked, self.generation)
        tokenizer = self.processor.tokenizer
        return [
            [
                short_answer.clean(
                    reply, echoes=(user, question), max_words=self.prompting.answer_words
                )
                for reply, user, question in zip(
                    tokenizer.batch_decode(per_image, skip_special_tokens=True),
                    us,
                    qs,
                    strict=True,
                )
            ]
            for per_image, us, qs in zip(ids, users, questions, strict=True)
        ]


def load(name: str, device: torch.device, answering: Answering) -> Backend:
    """The backend `select` picks for `name`, its model loaded (offline) on `device`."""
    backend = select(name, answering.backend)
    if backend == "blip":
        model, processor = blip.load_vqa(name, device)
        return BlipBackend(model, processor, answering)
    model, processor = llava.load_llava(name, device)
    return LlavaBackend(model, processor, answering)
