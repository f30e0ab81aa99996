"""The training loop shared by every trained stage (baseline CAM, RITC, IRN, segmentation).

SGD with the reference's poly schedule and momentum quirk (ALGORITHM §3: the reference
passes weight decay into SGD's momentum slot, so `momentum` is a config value, 1e-4 by
default), optional torchrun data parallelism, resumable epoch checkpoints and a run that
is bit-identical on CPU whether or not it was killed and restarted.

Design choices:
- `batch_size` is the global batch. Under torchrun each of the N processes takes
  batch_size // N, so the number of steps and the LR schedule never depend on N.
- Gradients are averaged across processes by one all-reduce after backward instead of a
  DistributedDataParallel wrapper: loss functions call model methods other than
  `forward` (RITC uses `activation_maps`), which DDP's forward hook would not see.
- Randomness is re-derived from the seed: shuffling from (seed, epoch) (the loader generator
  or the sampler), each sample's augmentation from (seed, epoch, sample index), drawn with
  the global torch/numpy/python generators seeded for that sample alone (`_SeededSamples`),
  and the training process's own draws from (seed, epoch, rank). So which process loads a
  sample never matters: the weights are the same with any number of loader workers, and
  the checkpoint's seed and epoch fix all random state of the remaining epochs.
- A checkpoint is only resumed when its fingerprint (the initial weights and the schedule
  settings) matches the current run, so a changed config or input never resumes stale
  state from the scratch folder.
- Every optimiser step leaves a row in the run's history (step, epoch, LRs, loss terms),
  kept in each checkpoint as plain dicts of numbers, so a killed and resumed run writes the same
  complete table (`history_path`, Parquet) as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from qaclims.atomic import atomic_path
from qaclims.devices import autocast, autocast_dtype, pick_device
from qaclims.errors import InputError
from qaclims.fingerprint import sha256_file
from qaclims.history import history_row, write_history

log = logging.getLogger(__name__)

CHECKPOINT_GLOB = "epoch-*.pt"
# run() arguments that are no part of a run's identity: where outputs go, and speed knobs
# (results do not depend on the number of loader workers: `_SeededSamples`).
NOT_RUN_SETTINGS = ("out", "out_json", "out_history", "checkpoint_dir", "workers")
RUN_KEY_LENGTH = 16


def _identity(value: Any) -> Any:
    """What a setting contributes to a run key: files by content, never by path or mtime.

    A folder, or a list of folders (the per-shard IR-label or pseudo-mask folders), is the
    set of its files by name and content, whichever folder holds them: another shard layout
    of the same files is the same input.
    """
    paths = list(value) if isinstance(value, (list, tuple)) else [value]
    if paths and all(isinstance(p, Path) and p.is_dir() for p in paths):
        files = {f.name: f for folder in paths for f in folder.rglob("*") if f.is_file()}
        return ("files", tuple((name, sha256_file(files[name])) for name in sorted(files)))
    if isinstance(value, (list, tuple)):
        return tuple(_identity(v) for v in value)
    if isinstance(value, Path) and value.is_file():
        return ("file", sha256_file(value))
    return value if isinstance(value, (int, float, bool)) else str(value)


def run_key(**settings: Any) -> str:
    """Hash naming a run's checkpoint folder: its settings and the content of its inputs.

    Stages put their code digest among the settings. A change of config, code or input
    content then starts from scratch in a new folder, while a job rerun on the same inputs
    (killed and restarted, or rerun by Snakemake after an upstream job rewrote identical
    files, e.g. under another shard layout) finds its own checkpoints: a finished run's
    last checkpoint makes it write the same weights at once.
    """
    parts = [(name, _identity(value)) for name, value in sorted(settings.items())]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:RUN_KEY_LENGTH]


def prune_superseded(run_dir: Path) -> list[Path]:
    """Remove the other run folders beside `run_dir`: runs of superseded settings.

    Only the run being trained can be resumed (its key names the current settings, code
    and inputs), so the others are dead weight: a RITC checkpoint is hundreds of MB.
    """
    removed = []
    parent = run_dir.parent
    for other in sorted(parent.iterdir()) if parent.is_dir() else []:
        name = other.name
        is_run = len(name) == RUN_KEY_LENGTH and all(c in "0123456789abcdef" for c in name)
        if other.is_dir() and is_run and other != run_dir:
            shutil.rmtree(other, ignore_errors=True)
            removed.append(other)
    return removed


def _epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 63-bit seed for (seed, epoch, rank), independent of Python's hash randomisation."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(2, np.uint64)[0] >> 1)


def _seed_everything(value: int) -> None:
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


class _SeededSamples(Dataset):
    """`dataset[i]` with the global generators seeded from (epoch seed, i) for that draw.

    The generators' state is restored afterwards, so the training process's own random
    draws do not depend on whether samples were loaded there (workers=0) or elsewhere.
    """

    def __init__(self, dataset: Dataset, epoch_seed: int) -> None:
        self.dataset, self.epoch_seed = dataset, epoch_seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        states = random.getstate(), np.random.get_state(), torch.get_rng_state()
        _seed_everything(_sample_seed(self.epoch_seed, i))
        try:
            return self.dataset[i]
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])


def _sample_seed(epoch_seed: int, index: int) -> int:
    return int(np.random.SeedSequence([epoch_seed, index]).generate_state(2, np.uint64)[0] >> 1)


def rank_device() -> torch.device:
    """This process's device: under torchrun with CUDA, the card of its LOCAL_RANK.

    Stages call it instead of `pick_device()` so that models they build before `train`
    (RITC's CLIP tower) land on the same card as the trained network.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return pick_device()


def _distributed(device: torch.device) -> tuple[int, int, bool]:
    """(rank, world size, whether this call created the process group) under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), created


def _sync_batchnorm(module: nn.Module) -> nn.Module:
    """Ordinary BatchNorm -> SyncBatchNorm; subclasses (FixedBatchNorm) are left alone."""
    if type(module) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        sync = nn.SyncBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
        sync.load_state_dict(module.state_dict())
        for name in ("weight", "bias"):
            if module.affine:
                getattr(sync, name).requires_grad_(getattr(module, name).requires_grad)
        sync.train(module.training)
        return sync
    for name, child in module.named_children():
        setattr(module, name, _sync_batchnorm(child))
    return module


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _fingerprint(model: nn.Module, settings: dict[str, Any]) -> str:
    """Hash of the initial weights and the schedule: what a resumable checkpoint must share."""
    digest = hashlib.sha256(repr(sorted(settings.items())).encode())
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


def _latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    found = sorted(checkpoint_dir.glob(CHECKPOINT_GLOB))
    return found[-1] if found else None


def _average_gradients(params: list[nn.Parameter], world: int) -> None:
    """All-reduce the gradients as one flat buffer and divide by the world size (= DDP)."""
    for p in params:  # every rank must contribute a buffer of the same layout
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def _batches(loader: DataLoader, device: torch.device) -> Iterator[Any]:
    for batch in loader:
        yield _to_device(batch, device)


def train(
    *,
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], tuple[Tensor, dict[str, float]]],
    dataset: Dataset,
    batch_size: int,
    epochs: int,
    workers: int,
    seed: int,
    param_groups: list[dict],
    weight_decay: float,
    momentum: float,
    poly_power: float = 0.9,
    checkpoint_dir: Path,
    out_path: Path,
    device: torch.device,
    precision: str = "fp32",
    collate_fn: Callable | None = None,
    log_every: int = 10,
    batch_key: str | None = None,
    history_path: Path | None = None,
) -> dict[str, float]:
    """Train `model` with poly-LR SGD; resume from `checkpoint_dir`; save weights to `out_path`.

    `loss_fn(model, batch)` gets the collated batch already on `device` and returns the
    loss and its named terms (floats, for the log). `param_groups` are SGD groups whose
    "lr" is the initial LR of the poly schedule. `batch_key` names the config key of
    `batch_size` (e.g. "cam.batch_size"), so that a dataset smaller than one batch says
    what to lower. `history_path` gets the per-step table (`qaclims.history`), written by
    rank 0 with the terms rank 0 saw. Returns the number of steps, the mean loss terms of
    the last epoch, the wall time and the throughput.
    """
    rank, world, owns_group = _distributed(device)
    if batch_size % world:
        raise InputError(f"global batch {batch_size} is not divisible by {world} processes")
    steps_per_epoch = len(dataset) // batch_size
    if steps_per_epoch == 0:
        limit = len(dataset) // world * world
        hint = (
            f"lower {batch_key or 'the batch size'} to at most {limit}"
            if limit
            else f"{world} processes need at least {world} images"
        )
        raise InputError(
            f"{len(dataset)} training images are fewer than one batch ({batch_size}): {hint}"
        )
    max_step = steps_per_epoch * epochs
    checkpoint_dir = Path(checkpoint_dir)
    settings = {
        "batch_size": batch_size,
        "epochs": epochs,
        "seed": seed,
        "n": len(dataset),
        "lrs": [g["lr"] for g in param_groups],
        "weight_decay": weight_decay,
        "momentum": momentum,
        "poly_power": poly_power,
        "precision": precision,
    }
    fingerprint = _fingerprint(model, settings)
    if rank == 0:
        for old in prune_superseded(checkpoint_dir):
            log.info("removed %s: a run of superseded settings", old)
    autocast_dtype(device, precision)  # an unknown or unsupported precision fails here

    if world > 1 and device.type == "cuda":
        model = _sync_batchnorm(model)
    elif world > 1 and any(type(m) is nn.BatchNorm2d for m in model.modules()):
        log.warning("SyncBatchNorm needs CUDA: BatchNorm statistics stay per process on CPU")
    model.to(device)
    groups = [{**g, "initial_lr": g["lr"]} for g in param_groups]
    params = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.SGD(
        groups, lr=groups[0]["lr"], momentum=momentum, weight_decay=weight_decay
    )

    step, start_epoch = 0, 0
    history: list[dict[str, float]] = []
    latest = _latest_checkpoint(checkpoint_dir)
    if latest is not None:
        state = torch.load(latest, map_location=device, weights_only=True)
        # A checkpoint without its history would leave the table's first epochs out.
        if state["fingerprint"] == fingerprint and "history" in state:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            step, start_epoch = state["step"], state["epoch"]
            history = list(state["history"])
            log.info("resumed from %s (epoch %d, step %d)", latest, start_epoch, step)
            if start_epoch >= epochs:
                log.info("that run had finished: its weights are written again, no step runs")
        else:
            log.warning(
                "ignoring %s: it belongs to another run (weights or settings) or has no "
                "loss history",
                latest,
            )
    if world > 1:
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, 0)

    per_rank = batch_size // world
    sampler = (
        DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        if world > 1
        else None
    )
    log.info(
        "training %d epochs x %d steps (global batch %d = %d x %d processes) on %s",
        epochs,
        steps_per_epoch,
        batch_size,
        per_rank,
        world,
        device,
    )
    started = time.perf_counter()
    seen = 0
    epoch_terms: dict[str, float] = {}
    for epoch in range(start_epoch, epochs):
        _seed_everything(_epoch_seed(seed, epoch, rank))
        generator = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
        if sampler is not None:
            sampler.set_epoch(epoch)
        loader = DataLoader(
            _SeededSamples(dataset, _epoch_seed(seed, epoch)),
            batch_size=per_rank,
            shuffle=sampler is None,
            sampler=sampler,
            num_workers=workers,
            collate_fn=collate_fn,
            drop_last=True,
            generator=generator,
            pin_memory=device.type == "cuda",
        )
        model.train()
        sums: dict[str, float] = {}
        window: dict[str, float] = {}
        window_start, window_steps = time.perf_counter(), 0
        for i, batch in enumerate(_batches(loader, device)):
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * (1 - step / max_step) ** poly_power
            with autocast(device, precision):
                loss, terms = loss_fn(model, batch)
            if rank == 0:  # the terms' .item() already synchronised: loss is computed
                history.append(history_row(step + 1, epoch + 1, optimizer, loss, terms))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1:
                _average_gradients(params, world)
            optimizer.step()
            step += 1
            seen += batch_size
            window_steps += 1
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
                window[k] = window.get(k, 0.0) + v
            if rank == 0 and (window_steps == log_every or i + 1 == steps_per_epoch):
                elapsed = time.perf_counter() - window_start
                rate = window_steps * batch_size / max(elapsed, 1e-9)
                eta = (max_step - step) * batch_size / rate
                parts = " ".join(f"{k} {v / window_steps:.4f}" for k, v in window.items())
                log.info(
                    "epoch %d/%d step %d/%d %s lr %.3g | %.1f img/s, ETA %.0f s",
                    epoch + 1,
                    epochs,
                    step,
                    max_step,
                    parts,
                    optimizer.param_groups[0]["lr"],
                    rate,
                    eta,
                )
                window, window_start, window_steps = {}, time.perf_counter(), 0
        epoch_terms = {k: v / steps_per_epoch for k, v in sums.items()}
        if rank == 0:
            _save_checkpoint(
                checkpoint_dir, model, optimizer, step, epoch + 1, seed, fingerprint, history
            )
        if world > 1:
            dist.barrier()

    if rank == 0:
        if history_path is not None:
            write_history(history, history_path)
            log.info("saved %s (%d steps)", history_path, len(history))
        with atomic_path(out_path) as tmp:
            torch.save(model.state_dict(), tmp)
        log.info("saved %s", out_path)
    seconds = time.perf_counter() - started
    if owns_group:
        dist.destroy_process_group()
    return {
        "steps": float(step),
        "epochs": float(epochs),
        "seconds": seconds,
        "images_per_s": seen / max(seconds, 1e-9),
        **epoch_terms,
    }


def _save_checkpoint(
    checkpoint_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    epoch: int,
    seed: int,
    fingerprint: str,
    history: list[dict[str, float]],
) -> None:
    """Write epoch-NNNN.pt atomically, then drop older ones (they are never read again)."""
    path = checkpoint_dir / f"epoch-{epoch:04d}.pt"
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "epoch": epoch,
        "seed": seed,
        "fingerprint": fingerprint,
        "history": history,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    for old in checkpoint_dir.glob(CHECKPOINT_GLOB):
        if old != path:
            old.unlink(missing_ok=True)
