"""Checking a converted state dict against the model it is meant for, key by key."""

from __future__ import annotations

from pathlib import Path

import torch

from qaclims.errors import InputError


def _few(names: list[str], n: int = 5) -> str:
    shown = ", ".join(names[:n])
    return f"[{shown}{', ...' if len(names) > n else ''}] ({len(names)} in all)"


def check_state(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: Path, target: str
) -> None:
    """Every key of `expected` present with its shape and no other key; else name each gap.

    A strict `load_state_dict` stops at the first kind of error and names no file; a
    converter must say everything that is wrong with its source at once.
    """
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    shapes = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    problems = [
        f"{label} {_few(names)}"
        for label, names in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
        if names
    ]
    if problems:
        raise InputError(f"{path}: does not fit {target}: " + "; ".join(problems))
