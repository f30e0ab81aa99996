"""Text features of every (image, class) pair, ready for RITC's step (ALGORITHM §1, §3).

t_fg = w · e(prompt(class name)) + ((1 − w) / n_questions) · Σ e(prompt(FG text)), summed
over the pair's FG rows (duplicates count, no renormalisation; w = `label_weight`, the
paper's 0.5, one of its ablations); T_bg = the features of the pair's distinct BG texts
(possibly none). Everything is computed once, vectorised over the corpus: a training step
only gathers rows by pair id.

T_bg is stored as indices into the matrix of the unique BG texts (P × L_max, −1 padding)
rather than as a dense P × L_max × D tensor: on COCO (≈ 240k pairs, D = 768, L_max 10) the
dense form would take 7 GB, the indices take 20 MB. `gather` returns the dense slice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch import Tensor

from qaclims.errors import InputError
from qaclims.tables import CORPUS_BG_SCHEMA, CORPUS_FG_SCHEMA, read_table, text_features_schema

log = logging.getLogger(__name__)

PROMPT_KEY = b"qaclims.prompt"


@dataclass(frozen=True)
class PairTexts:
    """Per-pair text features; pair ids come from `pair_of[image row, class]` (−1: no pair)."""

    pair_of: Tensor  # N×C long
    fg: Tensor  # P×D float32
    bg_index: Tensor  # P×L_max long into `bg_features`, −1 = padding
    bg_features: Tensor  # T×D float32, the unique BG texts

    def to(self, device: torch.device) -> PairTexts:
        return PairTexts(
            *(t.to(device) for t in (self.pair_of, self.fg, self.bg_index, self.bg_features))
        )

    def gather(self, pairs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(t_fg K×D, T_bg K×L×D, valid K×L) of K pair ids; L = the most BG texts among them."""
        index = self.bg_index[pairs]
        width = int((index >= 0).sum(1).max()) if len(pairs) else 0
        index = index[:, :width]
        valid = index >= 0
        return self.fg[pairs], self.bg_features[index.clamp(min=0)], valid


def _features(path: Path, prompt: str) -> tuple[pa.Array, np.ndarray]:
    """(prompted texts, T×D embeddings) of text/features.parquet, checking its prompt."""
    if not Path(path).is_file():
        raise InputError(f"{path}: text features not found")
    schema = pq.read_schema(path)
    if "embedding" not in schema.names or not hasattr(schema.field("embedding").type, "list_size"):
        raise InputError(f"{path}: no fixed-size 'embedding' column")
    dim = schema.field("embedding").type.list_size
    table = read_table(path, text_features_schema(dim))
    stored = (schema.metadata or {}).get(PROMPT_KEY)
    if stored is not None and stored.decode() != prompt:
        raise InputError(
            f"{path}: features were made with prompt '{stored.decode()}', not '{prompt}'"
        )
    emb = table.column("embedding").combine_chunks().flatten().to_numpy().reshape(-1, dim)
    return table.column("text").combine_chunks(), emb


def _lookup(texts: list[str], feature_texts: pa.Array) -> np.ndarray:
    """Row of each text in the features (−1 when absent)."""
    found = pc.index_in(pa.array(texts, pa.string()), value_set=feature_texts)
    return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def _pair_rows(
    table: pa.Table, image_row: dict[str, int], pair_of: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(pair id, row number) of the corpus rows that belong to a pair of the training set."""
    images = table.column("image_id").to_pylist()
    rows = np.array([image_row.get(i, -1) for i in images], np.int64)
    classes = table.column("class_id").to_numpy().astype(np.int64)
    keep = (rows >= 0) & (classes >= 0) & (classes < pair_of.shape[1])
    keep[keep] &= pair_of[rows[keep], classes[keep]] >= 0
    picked = np.flatnonzero(keep)
    return pair_of[rows[picked], classes[picked]], picked


def load_pair_texts(
    *,
    corpus_fg: Path,
    corpus_bg: Path,
    features: Path,
    image_ids: list[str],
    labels: Tensor,
    class_names: list[str],
    prompt: str,
    label_weight: float = 0.5,
) -> PairTexts:
    """PairTexts for the present classes (labels > 0, N×C) of `image_ids`, image-major."""
    if not 0.0 <= label_weight <= 1.0:
        raise InputError(f"ritc.label_weight {label_weight} is not within [0, 1]")
    feature_texts, emb = _features(features, prompt)
    emb_t = torch.from_numpy(emb.copy())
    present = labels.numpy() > 0
    img, cls = np.nonzero(present)
    pair_of = np.full(present.shape, -1, np.int64)
    pair_of[img, cls] = np.arange(len(img))
    image_row = {image_id: i for i, image_id in enumerate(image_ids)}

    def name(pair: int) -> str:
        return f"image {image_ids[img[pair]]}, class {class_names[cls[pair]]}"

    label_rows = _lookup([prompt.format(n) for n in class_names], feature_texts)
    for c in np.unique(cls):
        if label_rows[c] < 0:
            raise InputError(
                f"{features}: no feature for class name text '{prompt.format(class_names[c])}'"
            )

    fg_table = read_table(corpus_fg, CORPUS_FG_SCHEMA)
    n_questions = len(pc.unique(fg_table.column("question_id")))
    pairs, picked = _pair_rows(fg_table, image_row, pair_of)
    counts = np.bincount(pairs, minlength=len(img))
    wrong = np.flatnonzero(counts != n_questions)
    if len(wrong):
        raise InputError(
            f"{corpus_fg}: {name(wrong[0])} has {counts[wrong[0]]} FG answers, "
            f"expected {n_questions}"
        )
    fg_texts = fg_table.column("text").take(pa.array(picked)).to_pylist()
    fg_rows = _lookup([prompt.format(t) for t in fg_texts], feature_texts)
    if (fg_rows < 0).any():
        bad = int(np.flatnonzero(fg_rows < 0)[0])
        raise InputError(
            f"{features}: no feature for '{prompt.format(fg_texts[bad])}' ({name(pairs[bad])})"
        )
    fg = label_weight * emb_t[torch.from_numpy(label_rows[cls])]
    fg.index_add_(
        0,
        torch.from_numpy(pairs),
        emb_t[torch.from_numpy(fg_rows)],
        alpha=(1 - label_weight) / n_questions,
    )

    bg_table = read_table(corpus_bg, CORPUS_BG_SCHEMA)
    pairs, picked = _pair_rows(bg_table, image_row, pair_of)
    missing = np.setdiff1d(np.arange(len(img)), pairs)
    if len(missing):
        raise InputError(f"{corpus_bg}: {name(missing[0])} is missing from the BG corpus")
    texts = bg_table.column("text").take(pa.array(picked)).to_pylist()
    has_text = np.array([t is not None for t in texts], bool)
    pairs = pairs[has_text]
    texts = [t for t in texts if t is not None]
    unique, inverse = np.unique(np.array(texts, dtype=object), return_inverse=True)
    rows = _lookup([prompt.format(t) for t in unique], feature_texts)
    if (rows < 0).any():
        bad = int(np.flatnonzero(rows[inverse] < 0)[0])
        raise InputError(
            f"{features}: no feature for '{prompt.format(texts[bad])}' ({name(pairs[bad])})"
        )
    order = np.argsort(pairs, kind="stable")
    sorted_pairs = pairs[order]
    starts = np.searchsorted(sorted_pairs, sorted_pairs, side="left")
    slot = np.arange(len(sorted_pairs)) - starts
    width = int(slot.max()) + 1 if len(slot) else 0
    bg_index = np.full((len(img), width), -1, np.int64)
    bg_index[sorted_pairs, slot] = inverse[order]
    log.info(
        "pair texts: %d pairs, %d FG questions, %d unique BG texts, up to %d per pair, "
        "%d pairs without BG",
        len(img),
        n_questions,
        len(unique),
        width,
        int((bg_index < 0).all(1).sum()),
    )
    return PairTexts(
        pair_of=torch.from_numpy(pair_of),
        fg=fg.float(),
        bg_index=torch.from_numpy(bg_index),
        bg_features=emb_t[torch.from_numpy(rows)].float(),
    )
