"""Per-pair text features for RITC (ALGORITHM §1, §3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from qaclims.errors import InputError
from qaclims.pair_text import load_pair_texts
from qaclims.tables import CORPUS_BG_SCHEMA, CORPUS_FG_SCHEMA, text_features_schema, write_table

PROMPT = "a photo of {}."
CLASSES = ["ball", "crate", "star"]


def write_corpus(
    folder: Path,
    fg: dict[tuple[str, int], list[str]],
    bg: dict[tuple[str, int], list[str]],
    dim: int,
    *,
    skip_text: str | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """corpus/fg, corpus/bg and text/features parquet files; returns text -> embedding."""
    texts = set(CLASSES) | {t for v in [*fg.values(), *bg.values()] for t in v}
    rng = np.random.default_rng(seed)
    emb = {}
    for t in sorted(texts - {skip_text}):
        e = rng.normal(size=dim).astype(np.float32)
        emb[t] = e / np.linalg.norm(e)
    fg_rows = [
        {"image_id": i, "class_id": c, "question_id": q, "text": t}
        for (i, c), answers in fg.items()
        for q, t in enumerate(answers)
    ]
    bg_rows = [
        {"image_id": i, "class_id": c, "text": t}
        for (i, c), answers in bg.items()
        for t in (answers or [None])
    ]
    write_table(pa.Table.from_pylist(fg_rows), folder / "fg.parquet", CORPUS_FG_SCHEMA)
    write_table(pa.Table.from_pylist(bg_rows), folder / "bg.parquet", CORPUS_BG_SCHEMA)
    features = pa.table(
        {
            "text": [PROMPT.format(t) for t in emb],
            "embedding": pa.array([e.tolist() for e in emb.values()], pa.list_(pa.float32(), dim)),
        }
    )
    write_table(
        features, folder / "features.parquet", text_features_schema(dim), {"qaclims.prompt": PROMPT}
    )
    return emb


FG = {
    ("a", 0): ["red ball", "red ball"],
    ("a", 2): ["gold star", "star"],
    ("b", 1): ["box crate", "crate"],
}
BG = {("a", 0): ["sky", "grass"], ("a", 2): [], ("b", 1): ["sky"]}
LABELS = torch.tensor([[1.0, 0, 1], [0, 1, 0]])


def _load(folder: Path, labels: torch.Tensor = LABELS):
    return load_pair_texts(
        corpus_fg=folder / "fg.parquet",
        corpus_bg=folder / "bg.parquet",
        features=folder / "features.parquet",
        image_ids=["a", "b"],
        labels=labels,
        class_names=CLASSES,
        prompt=PROMPT,
    )


def test_fg_is_label_plus_answer_mean_and_bg_is_padded(tmp_path):
    emb = write_corpus(tmp_path, FG, BG, dim=8)
    texts = _load(tmp_path)
    assert texts.pair_of.tolist() == [[0, -1, 1], [-1, 2, -1]]
    pairs = torch.tensor([0, 1, 2])
    fg, bg, valid = texts.gather(pairs)
    for p, (key, name) in enumerate([(("a", 0), "ball"), (("a", 2), "star"), (("b", 1), "crate")]):
        want = 0.5 * emb[name] + 0.25 * sum(emb[t] for t in FG[key])  # duplicates count twice
        np.testing.assert_allclose(fg[p].numpy(), want, rtol=1e-6, atol=1e-7)
        got = sorted(bg[p][valid[p]].tolist())
        assert got == sorted(emb[t].tolist() for t in BG[key])
    assert valid.tolist() == [[True, True], [False, False], [True, False]]
    _, bg_one, valid_one = texts.gather(torch.tensor([2]))
    assert valid_one.shape == (1, 1) and torch.allclose(bg_one[0, 0], torch.from_numpy(emb["sky"]))


def test_missing_text_feature_names_image_and_class(tmp_path):
    write_corpus(tmp_path, FG, BG, dim=8, skip_text="gold star")
    with pytest.raises(InputError, match=r"gold star.*image a, class star"):
        _load(tmp_path)
    write_corpus(tmp_path, FG, BG, dim=8, skip_text="grass")
    with pytest.raises(InputError, match=r"grass.*image a, class ball"):
        _load(tmp_path)


def test_pair_absent_from_corpus_names_image_and_class(tmp_path):
    write_corpus(tmp_path, FG, {k: v for k, v in BG.items() if k != ("b", 1)}, dim=8)
    with pytest.raises(InputError, match="image b, class crate is missing from the BG corpus"):
        _load(tmp_path)
    write_corpus(tmp_path, FG, BG, dim=8)
    with pytest.raises(InputError, match="image b, class star has 0 FG answers"):
        _load(tmp_path, torch.tensor([[1.0, 0, 1], [0, 1, 1]]))
