"""Answer questions about images with a loaded BLIP VQA model: decoding, batching, workers.

This module is everything between an image file plus question texts and the answer text,
so its code digest (with models/blip.py and images.py) is part of the answer store's key
(`qaclims/answer_store.py`): an edit here invalidates stored answers, an edit to the QAPE
bookkeeping around it (`qaclims/qape.py`) does not. Batching is exact (each question is
decoded as if asked alone, models/blip.py), so answers do not depend on `batch_images` or
the number of decoding workers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from qaclims.devices import autocast
from qaclims.errors import InputError
from qaclims.images import read_rgb
from qaclims.models import blip


@dataclass(frozen=True)
class Answering:
    """Everything besides the model's weights that shapes an answer (ALGORITHM §1)."""

    image_size: int
    decoding: blip.Decoding
    enc_token: bool
    max_question_tokens: int
    precision: str = "fp32"  # bf16: autocast on CUDA (qaclims/devices.py)


class _Images(Dataset):
    """Decoded, resized, normalised images; a bad file comes back as its error message."""

    def __init__(self, paths: list[str], size: int, mean: tuple, std: tuple) -> None:
        self.paths, self.size, self.mean, self.std = paths, size, mean, std

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            image = Image.fromarray(read_rgb(self.paths[i]))
        except InputError as err:
            return i, None, str(err)
        return i, blip.preprocess(image, self.size, self.mean, self.std), None


def _collate(items: list) -> list:
    return items


def answer(
    vqa: blip.BlipForQuestionAnswering,
    processor: blip.BlipProcessor,
    requests: list[tuple[str, list[str]]],
    answering: Answering,
    *,
    batch_images: int,
    workers: int,
    progress: Callable[[int], None] = lambda n: None,
) -> list[list[str]]:
    """The answers to each request's questions about its image (a path), in order.

    Images are decoded by `workers` loader processes, `batch_images` at a time; each
    image is encoded once for all its questions. `progress(n)` follows each batch.
    """
    if not requests:
        return []
    device = vqa.device
    texts = sorted({q for _, questions in requests for q in questions})
    token_ids = blip.question_ids(
        processor.tokenizer,
        texts,
        enc_token=answering.enc_token,
        max_tokens=answering.max_question_tokens,
        text_config=vqa.config.text_config,
    )
    ids_of = dict(zip(texts, token_ids, strict=True))
    image_processor = processor.image_processor
    dataset = _Images(
        [path for path, _ in requests],
        answering.image_size,
        tuple(image_processor.image_mean),
        tuple(image_processor.image_std),
    )
    loader = DataLoader(
        dataset,
        batch_size=batch_images,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )
    answers: list[list[str]] = []
    for items in loader:
        errors = [err for _, _, err in items if err is not None]
        if errors:
            raise InputError(errors[0])
        pixels = torch.stack([x for _, x, _ in items]).to(device, non_blocking=True)
        asked = [[ids_of[q] for q in requests[i][1]] for i, _, _ in items]
        with autocast(device, answering.precision):
            ids = blip.answer_ids(vqa, pixels, asked, answering.decoding)
        answers += [blip.decode(processor.tokenizer, per_image) for per_image in ids]
        progress(len(items))
    return answers
