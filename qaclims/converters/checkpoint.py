"""Reading a source checkpoint: weights-only first, a trusted unpickling only when asked.

Research checkpoints are often whole training dicts (detectron2's `trainer` state, an
argparse Namespace, ...), which `torch.load(weights_only=True)` refuses. Unpickling them
runs code from the file, so the converter does it only with `--trust-pickle`, once, with a
warning; every file it writes is a plain tensor file that later loads weights-only.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch

from qaclims.errors import InputError

log = logging.getLogger(__name__)


def load_checkpoint(path: Path, *, trust_pickle: bool = False) -> dict:
    """The object stored in a torch checkpoint file (a dict), weights-only unless trusted."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        if not trust_pickle:
            raise InputError(
                f"{path}: not a weights-only checkpoint ({str(err).splitlines()[0]}); if you "
                "trust where the file comes from, rerun with --trust-pickle to unpickle it once"
            ) from err
        log.warning("%s: unpickling in full (--trust-pickle): this runs code from the file", path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as full_err:  # any unpickling failure: the file is not a checkpoint
            raise InputError(
                f"{path}: cannot be read as a torch checkpoint ({full_err})"
            ) from full_err
    if not isinstance(state, dict):
        raise InputError(f"{path}: holds a {type(state).__name__}, not a dict of tensors")
    return state


def tensors(state: dict, path: Path) -> dict[str, torch.Tensor]:
    """The tensor entries of a state dict; a non-tensor value under a weight name is refused."""
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise InputError(f"{path}: entry '{key}' is a {type(value).__name__}, not a tensor")
        out[key] = value
    return out
