"""Device choice shared by every stage: CUDA when present, the CPU otherwise.

Nothing in qaclims calls `.cuda()` directly; stages ask `pick_device()` and wrap their
forward passes in `autocast(device, precision)`: fp32 (the reference, the default) or bf16
on CUDA, per stage by config (`<stage>.precision`); the CPU always runs fp32.
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


PRECISIONS = ("fp32", "bf16")


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype of `precision` on `device`: bf16 on a CUDA card, else None (fp32).

    fp32 is the reference's precision and the default. bf16 runs only on CUDA (on the CPU
    it is slower and changes results), and only on cards that support it: fp16 would need
    loss scaling, which none of the reference setups use.
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision '{precision}' is not one of {PRECISIONS}")
    if precision == "fp32" or device.type != "cuda":
        return None
    if not torch.cuda.is_bf16_supported():
        raise InputError(f"precision bf16 needs a card with bfloat16 support, not {device}")
    return torch.bfloat16


@contextlib.contextmanager
def autocast(device: torch.device, precision: str = "fp32") -> Iterator[None]:
    """bf16 autocast on CUDA when `precision` is "bf16"; otherwise full precision."""
    dtype = autocast_dtype(device, precision)
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
