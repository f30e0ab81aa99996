"""The per-step training table: one row per optimiser step of a `qaclims.trainer.train` run.

Columns: `step` (1-based optimiser step), `epoch` (1-based), `lr` (the LR of parameter
group 0 at that step: the backbone; IRN's edge branch), `lr_group_<i>` for any further
group (the head; IRN's displacement branch), then the loss terms in the order the loss
function returns them (RITC: `frc`, `brc`, `reg`, the unweighted L_FRC, L_BRC, L_REG),
then `loss`, the total that was back-propagated (a stage whose only term is `loss` has it
once). Rows are plain dicts of Python numbers, so the trainer keeps them in its
checkpoints (`torch.load(weights_only=True)` reads them back) and a resumed run writes
the whole table.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from qaclims.errors import InputError
from qaclims.tables import write_table

STEP, EPOCH, LR, LOSS = "step", "epoch", "lr", "loss"
LR_GROUP = "lr_group_"


def history_row(
    step: int, epoch: int, optimizer: torch.optim.Optimizer, loss: Tensor, terms: dict
) -> dict[str, float]:
    """The row of one step: its number, epoch, the groups' LRs, the terms and the total.

    `loss.item()` runs only when the terms lack a total; the loss function's own `.item()`
    calls have synchronised already, so it costs no extra wait.
    """
    row: dict[str, float] = {STEP: step, EPOCH: epoch}
    for i, group in enumerate(optimizer.param_groups):
        row[LR if i == 0 else f"{LR_GROUP}{i}"] = float(group["lr"])
    for name, value in terms.items():
        if name in row:
            raise ValueError(f"loss term '{name}' has the name of a history column")
        row[name] = float(value)
    if LOSS not in row:
        row[LOSS] = float(loss.detach().item())
    return row


def history_schema(columns: list[str]) -> pa.Schema:
    """Integer step and epoch, float64 for everything else (LRs and loss terms)."""
    types = {STEP: pa.int64(), EPOCH: pa.int32()}
    return pa.schema(
        [pa.field(c, types.get(c, pa.float64()), nullable=c not in types) for c in columns]
    )


def write_history(rows: list[dict[str, float]], path: str | os.PathLike) -> None:
    """Write the rows as Parquet, atomically; columns in the order the rows first name them."""
    columns = list(dict.fromkeys(name for row in rows for name in row)) or [STEP, EPOCH, LR]
    table = pa.table({c: [row.get(c) for row in rows] for c in columns})
    write_table(table, path, history_schema(columns))


def lr_columns(columns: list[str]) -> list[str]:
    """The LR columns of a history table: `lr`, then `lr_group_<i>`."""
    return [c for c in columns if c == LR or c.startswith(LR_GROUP)]


def term_columns(columns: list[str]) -> list[str]:
    """The loss columns of a history table: every column but step, epoch and the LRs."""
    skip = {STEP, EPOCH, *lr_columns(columns)}
    return [c for c in columns if c not in skip]


def read_history(path: str | os.PathLike) -> pa.Table:
    """A history table, checked: readable, at least one step, and its columns' types."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: training history not found")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"{path}: not a readable Parquet file ({err})") from err
    for name in (STEP, EPOCH, LR):
        if name not in table.column_names:
            raise InputError(f"{path}: column '{name}' is missing: not a training history")
    if table.num_rows == 0:
        raise InputError(f"{path}: the training history has no steps")
    if not term_columns(table.column_names):
        raise InputError(f"{path}: the training history has no loss columns")
    expected = history_schema(table.column_names)
    for field in expected:
        if not table.schema.field(field.name).type.equals(field.type):
            raise InputError(
                f"{path}: column '{field.name}' has type "
                f"{table.schema.field(field.name).type}, expected {field.type}"
            )
    return table
