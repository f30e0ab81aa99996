"""Text features: unique texts encoded once, incremental reruns, schema, loading errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from qaclims import text_features
from qaclims.errors import InputError
from qaclims.models import clip_text
from qaclims.tables import (
    CLASSES_SCHEMA,
    CORPUS_BG_SCHEMA,
    CORPUS_FG_SCHEMA,
    read_table,
    text_features_schema,
    write_table,
)

PROMPT = "a photo of {}."


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models: intra-op threads only add overhead (10x slower on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clip")
    weights, config = folder / "clip-tiny.safetensors", folder / "clip-tiny.json"
    clip_text.tiny_clip("clip-tiny", weights, seed=0)
    config.write_text(json.dumps(clip_text.TINY_CONFIG))
    return {"weights": weights, "config": config}


def _corpus(folder: Path, fg: list[str], bg: list[str | None]) -> dict[str, Path]:
    """Corpus files with one image and class: FG texts per question, BG rows as given."""
    paths = {k: folder / f"{k}.parquet" for k in ("fg", "bg", "classes")}
    fg_table = pa.table(
        {
            "image_id": ["i"] * len(fg),
            "class_id": [0] * len(fg),
            "question_id": list(range(len(fg))),
            "text": fg,
        }
    )
    write_table(fg_table, paths["fg"], CORPUS_FG_SCHEMA)
    bg_table = pa.table({"image_id": ["i"] * len(bg), "class_id": [0] * len(bg), "text": bg})
    write_table(bg_table, paths["bg"], CORPUS_BG_SCHEMA)
    classes = pa.table({"class_id": [0, 1], "name": ["ball", "tent"]})
    write_table(classes, paths["classes"], CLASSES_SCHEMA)
    return paths


def _run(corpus: dict[str, Path], clip: dict[str, Path], out: Path, **kw) -> dict:
    return text_features.run(
        corpus["fg"],
        corpus["bg"],
        corpus["classes"],
        out,
        architecture="clip-tiny",
        pretrained=str(clip["weights"]),
        clip_config=clip["config"],
        **{"prompt": PROMPT, "batch_size": 4, **kw},
    )


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every list of texts handed to the CLIP encoder."""
    calls: list[list[str]] = []
    encode = clip_text.encode_texts

    def spy(model, tokenizer, texts, **kw):
        calls.append(list(texts))
        return encode(model, tokenizer, texts, **kw)

    monkeypatch.setattr(clip_text, "encode_texts", spy)
    return calls


def test_each_unique_text_encoded_once(tmp_path, tiny_clip, counted) -> None:
    fg = ["red ball", "red ball", "ball", "red ball", "toy ball", "ball"]
    corpus = _corpus(tmp_path, fg, ["grass", "sky", "grass", None])
    summary = _run(corpus, tiny_clip, tmp_path / "features.parquet")
    expected = {PROMPT.format(t) for t in ["red ball", "ball", "toy ball", "grass", "sky", "tent"]}
    assert [sorted(c) for c in counted] == [sorted(expected)]
    table = read_table(tmp_path / "features.parquet", text_features_schema(64))
    assert table.column("text").to_pylist() == sorted(expected)
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    meta = table.schema.metadata
    assert meta[b"qaclims.prompt"] == PROMPT.encode()
    assert meta[b"qaclims.clip_model"] == f"clip-tiny:{tiny_clip['weights']}".encode()
    assert summary == {**summary, "texts": 6, "encoded": 6, "reused": 0, "dim": 64}


def test_embeddings_match_open_clip_encode_text(tmp_path, tiny_clip) -> None:
    corpus = _corpus(tmp_path, ["red ball", "a very long answer about a ball"], ["sky"])
    _run(corpus, tiny_clip, tmp_path / "features.parquet")
    table = read_table(tmp_path / "features.parquet", text_features_schema(64)).to_pylist()
    model, tokenizer = clip_text.load_clip(
        "clip-tiny", str(tiny_clip["weights"]), torch.device("cpu"), tiny_clip["config"]
    )
    with torch.inference_mode():  # open_clip's own forward over all 77 positions
        full = model.encode_text(tokenizer([r["text"] for r in table]), normalize=True)
    np.testing.assert_allclose(np.array([r["embedding"] for r in table]), full, atol=1e-5)


def test_rerun_encodes_only_new_texts(tmp_path, tiny_clip, counted) -> None:
    out, cache = tmp_path / "features.parquet", tmp_path / "cache.parquet"
    _run(_corpus(tmp_path, ["red ball", "toy ball"], ["sky"]), tiny_clip, out, cache=cache)
    first = read_table(out, text_features_schema(64)).to_pylist()
    out.unlink()  # Snakemake removes the output before it reruns a job
    summary = _run(
        _corpus(tmp_path, ["red ball", "blue ball"], ["sky", None]), tiny_clip, out, cache=cache
    )
    assert counted[1] == [PROMPT.format("blue ball")]
    assert summary["encoded"] == 1
    rows = read_table(out, text_features_schema(64)).to_pylist()
    second = {r["text"]: r["embedding"] for r in rows}
    assert PROMPT.format("toy ball") not in second  # no longer in the corpus
    for row in first:
        if row["text"] in second:
            assert second[row["text"]] == row["embedding"]
    _run(_corpus(tmp_path, ["red ball", "blue ball"], ["sky"]), tiny_clip, out, cache=cache)
    assert len(counted) == 2  # nothing new: the model is not even loaded


def test_other_prompt_reencodes_everything(tmp_path, tiny_clip, counted) -> None:
    corpus = _corpus(tmp_path, ["red ball"], ["sky"])
    _run(corpus, tiny_clip, tmp_path / "features.parquet")
    summary = _run(corpus, tiny_clip, tmp_path / "features.parquet", prompt="{}")
    assert summary["reused"] == 0
    assert sorted(counted[1]) == ["ball", "red ball", "sky", "tent"]


def test_missing_weights_file_is_named(tmp_path, tiny_clip) -> None:
    corpus = _corpus(tmp_path, ["red ball"], ["sky"])
    missing = tmp_path / "none.safetensors"
    with pytest.raises(InputError, match=str(missing)):
        _run(corpus, {**tiny_clip, "weights": missing}, tmp_path / "features.parquet")


def test_unregistered_architecture_is_named(tmp_path) -> None:
    with pytest.raises(InputError, match="'no-such-clip' is unknown"):
        clip_text.load_clip("no-such-clip", "openai", torch.device("cpu"))
    config = tmp_path / "other-name.json"
    config.write_text(json.dumps(clip_text.TINY_CONFIG))
    with pytest.raises(InputError, match="registers 'other-name'"):
        clip_text.load_clip("clip-tiny", "x.safetensors", torch.device("cpu"), config)


def test_corpus_with_wrong_schema_is_rejected(tmp_path, tiny_clip) -> None:
    corpus = _corpus(tmp_path, ["red ball"], ["sky"])
    pq.write_table(pa.table({"image_id": ["i"], "class_id": [0]}), corpus["bg"])
    with pytest.raises(InputError, match=rf"{corpus['bg']}: column 'class_id' has type int64"):
        _run(corpus, tiny_clip, tmp_path / "features.parquet")


@pytest.fixture(scope="module")
def tiny_siglip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("siglip")
    weights, config = folder / "sig-lip-tiny.safetensors", folder / "sig-lip-tiny.json"
    clip_text.tiny_clip(config.stem, weights, seed=0, config=clip_text.TINY_SIGLIP_CONFIG)
    config.write_text(json.dumps(clip_text.TINY_SIGLIP_CONFIG))
    return {"weights": weights, "config": config}


def test_siglip_loads_with_its_own_pooling_bias_and_normalisation(tiny_siglip) -> None:
    model, tokenizer = clip_text.load_clip(
        "sig-lip-tiny", str(tiny_siglip["weights"]), torch.device("cpu"), tiny_siglip["config"]
    )
    assert model.logit_bias.item() == -10.0  # sigmoid loss, built from init_logit_bias
    assert model.text.pool_type == "last" and model.text.attn_mask is None  # bidirectional
    assert type(model.visual.trunk.attn_pool).__name__ == "AttentionPoolLatent"  # MAP head
    cfg = model.visual.preprocess_cfg
    assert (cfg["mean"], cfg["std"], cfg["resize_mode"]) == ([0.5] * 3, [0.5] * 3, "squash")
    assert clip_text.embed_dim(model) == 64 and tokenizer.context_length == 64


def test_siglip_text_features_equal_its_encode_text(tmp_path, tiny_siglip) -> None:
    corpus = _corpus(tmp_path, ["red ball", "a very long answer about a ball"], ["sky"])
    out = tmp_path / "features.parquet"
    summary = text_features.run(
        corpus["fg"],
        corpus["bg"],
        corpus["classes"],
        out,
        architecture="sig-lip-tiny",
        pretrained=str(tiny_siglip["weights"]),
        clip_config=tiny_siglip["config"],
        prompt=PROMPT,
        batch_size=2,
    )
    assert summary == {**summary, "texts": 5, "encoded": 5, "dim": 64}
    table = read_table(out, text_features_schema(64)).to_pylist()
    model, tokenizer = clip_text.load_clip(
        "sig-lip-tiny", str(tiny_siglip["weights"]), torch.device("cpu"), tiny_siglip["config"]
    )
    with torch.inference_mode():  # every position: SigLIP pools the last one, padding included
        full = model.encode_text(tokenizer([r["text"] for r in table]), normalize=True)
    np.testing.assert_allclose(np.array([r["embedding"] for r in table]), full, atol=1e-5)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"preprocess_cfg": {"mean": [0.5, 0.5]}}, r"preprocess_cfg.mean must list 3"),
        ({"preprocess_cfg": {"std": [0.5, 0.0, 0.5]}}, r"preprocess_cfg.std \[0.5, 0.0, 0.5\]"),
        ({"preprocess_cfg": {"scale": 2}}, "preprocess_cfg must be a mapping of"),
        ({"text_cfg": None}, r"lacks \['text_cfg'\]"),
    ],
)
def test_bad_custom_config_is_named(tmp_path, change, match) -> None:
    config = {**clip_text.TINY_SIGLIP_CONFIG, **change}
    config = {k: v for k, v in config.items() if v is not None}
    path = tmp_path / "sig-lip-bad.json"
    path.write_text(json.dumps(config))
    with pytest.raises(InputError, match=match):
        clip_text.load_clip("sig-lip-bad", "x.safetensors", torch.device("cpu"), path)


def test_hub_style_config_with_preprocess_beside_model_cfg(tmp_path, tiny_siglip) -> None:
    """open_clip's hub repos keep `model_cfg` and `preprocess_cfg` side by side."""
    model_cfg = {k: v for k, v in clip_text.TINY_SIGLIP_CONFIG.items() if k != "preprocess_cfg"}
    preprocess = {**clip_text.TINY_SIGLIP_CONFIG["preprocess_cfg"], "mean": [0.25, 0.5, 0.75]}
    path = tmp_path / "sig-lip-hub.json"
    path.write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}))
    model, _ = clip_text.load_clip(
        "sig-lip-hub", str(tiny_siglip["weights"]), torch.device("cpu"), path
    )
    assert model.visual.preprocess_cfg["mean"] == [0.25, 0.5, 0.75]
