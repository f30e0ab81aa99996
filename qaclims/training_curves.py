"""Training curves: a stage's per-step history table (`qaclims.history`) drawn as one PNG.

One panel per loss column (RITC: L_FRC, L_BRC, L_REG and the weighted total, each on its
own scale), then one for the learning rates. Each loss is drawn raw (faint) and, when the
run has enough steps to be noisy, as a trailing running mean over `window` steps; dotted
lines mark the epoch boundaries. Input: `train_logs/<stage>.parquet`; output: the PNG.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from qaclims.atomic import atomic_path
from qaclims.errors import InputError
from qaclims.history import EPOCH, LR, LR_GROUP, STEP, lr_columns, read_history, term_columns

log = logging.getLogger(__name__)

# How the known loss columns are named on the figure; others keep their column name.
LABELS = {
    "frc": "L_FRC (FG region-text contrast)",
    "brc": "L_BRC (BG region-text contrast)",
    "reg": "L_REG (mean activation)",
    "loss": "total loss",
    "pos": "affinity, positive pairs",
    "neg": "affinity, negative pairs",
    "dp_fg": "displacement, FG",
    "dp_bg": "displacement, BG",
}
# Steps per running-mean window when `window` is 0: about 50 windows per run.
AUTO_WINDOWS = 50
MAX_EPOCH_LINES = 60


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last `window` finite values (fewer at the start).

    Non-finite steps (a diverged loss) are skipped, not spread over the window.
    """
    finite = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    hi = np.arange(1, len(values) + 1)
    lo = np.maximum(hi - window, 0)
    n = counts[hi] - counts[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (sums[hi] - sums[lo]) / np.maximum(n, 1), np.nan)


def auto_window(steps: int) -> int:
    """1 (no smoothing) for short runs, else about `AUTO_WINDOWS` windows over the run."""
    return max(1, steps // AUTO_WINDOWS)


def draw(table: pa.Table, out: str | os.PathLike, title: str, window: int) -> dict[str, float]:
    """Draw the panels of a checked history table to `out`; returns the last smoothed values."""
    columns = table.column_names
    steps = table.column(STEP).to_numpy()
    epochs = table.column(EPOCH).to_numpy()
    terms, lrs = term_columns(columns), lr_columns(columns)
    fig = Figure(figsize=(8, 2.0 * (len(terms) + 1) + 0.6), layout="constrained")
    axes = fig.subplots(len(terms) + 1, 1, sharex=True, squeeze=False)[:, 0]
    boundaries = steps[1:][np.diff(epochs) != 0] - 0.5
    last: dict[str, float] = {}
    for ax, name in zip(axes[:-1], terms, strict=True):
        values = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        smooth = window > 1
        ax.plot(steps, values, color="C0", lw=0.8, alpha=0.35 if smooth else 1.0, label="per step")
        shown = running_mean(values, window) if smooth else values
        if smooth:
            ax.plot(steps, shown, color="C0", lw=1.6, label=f"running mean, {window} steps")
            ax.legend(loc="upper right", fontsize=7, frameon=False)
        ax.set_ylabel(LABELS.get(name, name), fontsize=8)
        last[name] = float(shown[-1])
    lr_ax = axes[-1]
    for i, name in enumerate(lrs):
        label = "group 0" if name == LR else f"group {name.removeprefix(LR_GROUP)}"
        lr_ax.plot(steps, table.column(name).to_numpy(), color=f"C{i + 1}", lw=1.2, label=label)
    if all(table.column(name).to_numpy().min() > 0 for name in lrs):
        lr_ax.set_yscale("log")
    lr_ax.set_ylabel("learning rate", fontsize=8)
    lr_ax.legend(loc="upper right", fontsize=7, frameon=False)
    lr_ax.set_xlabel("optimiser step")
    if len(boundaries) <= MAX_EPOCH_LINES:
        for ax in axes:
            for x in boundaries:
                ax.axvline(x, color="0.6", lw=0.6, ls=":")
    fig.suptitle(f"{title}: {len(steps)} steps, {int(epochs.max())} epochs", fontsize=10)
    FigureCanvasAgg(fig)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return last


def run(*, history: Path, out: Path, title: str, window: int = 0) -> dict[str, float]:
    """Draw `history` (one training stage's table) as a PNG at `out`.

    `window` is the running-mean length in steps; 0 picks it from the run's length.
    """
    if window < 0:
        raise InputError(f"running-mean window {window} is negative")
    table = read_history(history)
    steps = table.column(STEP).to_numpy()
    if np.any(np.diff(steps) <= 0):
        raise InputError(f"{history}: steps are not increasing: a table of several runs?")
    window = window or auto_window(len(steps))
    last = draw(table, out, title, window)
    return {"steps": float(len(steps)), "window": float(window), **last}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--history", type=Path, required=True, help="train_logs/<stage>.parquet")
    p.add_argument("--out", type=Path, required=True, help="PNG of the curves")
    p.add_argument("--title", required=True, help="the training stage, as the report names it")
    p.add_argument("--window", type=int, default=0, help="running mean in steps; 0: automatic")


def main(args: argparse.Namespace) -> None:
    summary = run(history=args.history, out=args.out, title=args.title, window=args.window)
    log.info("training_curves done: %s", {k: round(v, 4) for k, v in summary.items()})
