"""Device choice shared by every stage: CUDA when present, the CPU otherwise.

Nothing in qaclims calls `.cuda()` directly; stages ask `pick_device()` and wrap their
forward passes in `autocast(device)`, which is mixed precision on CUDA and a no-op on the
CPU (CPU autocast changes results and is slower on the machines we run on).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from qaclims.errors import InputError
from qaclims.gpu_binding import JOB_GPUS_ENV, gpu_optional


def pick_device() -> torch.device:
    """The current CUDA device when one is visible, else the CPU.

    A job that was given GPUs (qaclims.gpu_binding sets QACLIMS_JOB_GPUS) but whose torch
    cannot use them fails here: days on the CPU are never what was asked for.
    """
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    given = int(os.environ.get(JOB_GPUS_ENV) or 0)
    if given and not gpu_optional(os.environ):
        cards = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        raise InputError(
            f"this job was given {given} GPU(s) (CUDA_VISIBLE_DEVICES={cards!r}) but torch "
            f"sees no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda}); "
            "set the stage's `gpu` config key to 0 to run it on the CPU"
        )
    return torch.device("cpu")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the card supports it, fp16 on older cards, None (full precision) on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def autocast(device: torch.device, enabled: bool = True) -> Iterator[None]:
    """Mixed precision on CUDA; on the CPU (or with `enabled=False`) nothing changes."""
    dtype = autocast_dtype(device) if enabled else None
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def limit_cpu_threads(threads: int | None) -> None:
    """Use at most `threads` intra-op threads (the job's share of the cores; None: torch's).

    Several jobs each using every core slow each other down many times over.
    """
    if threads is not None:
        torch.set_num_threads(max(1, threads))
