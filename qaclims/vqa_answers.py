"""Answer questions about images with a loaded VQA backend: image decoding, batching, workers.

This module is everything between an image file plus question texts and the answer text,
so its code digest (with qaclims/vqa_backends.py, models/blip.py, models/llava.py,
short_answer.py and images.py) is part of the answer store's key
(`qaclims/answer_store.py`): an edit here invalidates stored answers, an edit to the QAPE
bookkeeping around it (`qaclims/qape.py`) does not. Batching is exact (each question is
decoded as if asked alone, models/blip.py and models/llava.py), so answers do not depend on
`batch_images` or the number of decoding workers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from qaclims.devices import autocast
from qaclims.errors import InputError
from qaclims.images import read_rgb
from qaclims.models import blip
from qaclims.vqa_backends import Answering, Backend, BlipBackend


class _Images(Dataset):
    """Decoded, transformed images; a bad file comes back as its error message."""

    def __init__(self, paths: list[str], transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            image = Image.fromarray(read_rgb(self.paths[i]))
        except InputError as err:
            return i, None, str(err)
        return i, self.transform(image), None


def _collate(items: list) -> list:
    return items


def ask(
    backend: Backend,
    requests: list[tuple[str, list[str]]],
    *,
    precision: str,
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
    device = backend.device
    dataset = _Images([path for path, _ in requests], backend.transform())
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
        with autocast(device, precision):
            answers += backend.answer(pixels, [requests[i][1] for i, _, _ in items])
        progress(len(items))
    return answers


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
    """`ask` a loaded BLIP VQA model (`blip.load_vqa`) as QAPE does."""
    return ask(
        BlipBackend(vqa, processor, answering),
        requests,
        precision=answering.precision,
        batch_images=batch_images,
        workers=workers,
        progress=progress,
    )
