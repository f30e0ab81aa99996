"""BLIP converter: an original-layout checkpoint lands where transformers reads it, or is refused.

The synthetic checkpoint is written from BLIP's own module layout (models/vit.py, which is
timm's ViT, and models/med.py, transformers 4.15's BERT with cross-attention), not from the
converter's rename table, so the table is checked against an independent statement of both.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from qaclims import demo_models
from qaclims.converters.blip import convert_blip
from qaclims.errors import InputError
from qaclims.models import blip
from tests.original_files import (
    GRID,
    LAYERS,
    PATCH,
    POSITIONS,
    TEXT,
    TEXT_MLP,
    VISION,
    VISION_MLP,
    blip_state,
    plain_tokenizer,
)

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = ["what is the man's dog doing?", "what is behind the ring?"]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models: intra-op threads only add overhead on a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def words() -> list[str]:
    return demo_models.vocabulary(QUESTIONS)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, words: list[str]) -> Path:
    return plain_tokenizer(tmp_path_factory.mktemp("tok") / "bert", words)


@pytest.fixture(scope="module")
def state(words: list[str]) -> dict[str, torch.Tensor]:
    return blip_state(len(blip.SPECIAL_WORDS) + len(words) + 2)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, state: dict) -> Path:
    path = tmp_path_factory.mktemp("src") / "model_base_vqa_tiny.pth"
    torch.save({"model": state, "epoch": 9}, path)
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory, source: Path, tokenizer_dir: Path):
    dst = tmp_path_factory.mktemp("dst") / "blip-vqa"
    convert_blip(source, dst, tokenizer=str(tokenizer_dir))
    return blip.load_vqa(str(dst), torch.device("cpu"))


# (original BLIP name, transformers name), written from both codebases' module trees.
PLACES = [
    ("visual_encoder.cls_token", "vision_model.embeddings.class_embedding"),
    ("visual_encoder.pos_embed", "vision_model.embeddings.position_embedding"),
    ("visual_encoder.patch_embed.proj.weight", "vision_model.embeddings.patch_embedding.weight"),
    ("visual_encoder.patch_embed.proj.bias", "vision_model.embeddings.patch_embedding.bias"),
    (
        "visual_encoder.blocks.0.attn.qkv.weight",
        "vision_model.encoder.layers.0.self_attn.qkv.weight",
    ),
    ("visual_encoder.blocks.1.attn.qkv.bias", "vision_model.encoder.layers.1.self_attn.qkv.bias"),
    (
        "visual_encoder.blocks.1.attn.proj.weight",
        "vision_model.encoder.layers.1.self_attn.projection.weight",
    ),
    ("visual_encoder.blocks.1.norm1.weight", "vision_model.encoder.layers.1.layer_norm1.weight"),
    ("visual_encoder.blocks.1.norm2.bias", "vision_model.encoder.layers.1.layer_norm2.bias"),
    ("visual_encoder.blocks.1.mlp.fc1.weight", "vision_model.encoder.layers.1.mlp.fc1.weight"),
    ("visual_encoder.blocks.0.mlp.fc2.bias", "vision_model.encoder.layers.0.mlp.fc2.bias"),
    ("visual_encoder.norm.weight", "vision_model.post_layernorm.weight"),
    ("visual_encoder.norm.bias", "vision_model.post_layernorm.bias"),
    (
        "text_decoder.bert.embeddings.word_embeddings.weight",
        "text_decoder.cls.predictions.decoder.weight",
    ),
    ("text_decoder.cls.predictions.bias", "text_decoder.cls.predictions.decoder.bias"),
]


@pytest.mark.parametrize(("original", "hf"), PLACES)
def test_tensor_lands_in_its_transformers_place(converted, state, original: str, hf: str) -> None:
    assert torch.equal(converted[0].state_dict()[hf], state[original])


def test_text_tensors_keep_their_names(converted, state) -> None:
    """med.py and transformers' BLIP text classes share BERT's names; position_ids are rebuilt."""
    loaded = converted[0].state_dict()
    text = [k for k in state if k.startswith("text_") and not k.endswith("position_ids")]
    assert len(text) > 100
    assert all(torch.equal(loaded[k], state[k]) for k in text)
    for module in (converted[0].text_encoder, converted[0].text_decoder.bert):
        assert torch.equal(module.embeddings.position_ids[0], torch.arange(POSITIONS))


def test_config_comes_from_the_shapes(converted, words) -> None:
    model, processor = converted
    vision, text = model.config.vision_config, model.config.text_config
    assert (vision.image_size, vision.patch_size, vision.hidden_size) == (96, PATCH, VISION)
    assert (vision.num_hidden_layers, vision.num_attention_heads) == (LAYERS, 2)
    assert (vision.intermediate_size, vision.layer_norm_eps) == (VISION_MLP, 1e-6)
    assert (text.hidden_size, text.encoder_hidden_size, text.num_attention_heads) == (
        TEXT,
        VISION,
        2,
    )
    assert (text.num_hidden_layers, text.intermediate_size) == (LAYERS, TEXT_MLP)
    assert text.max_position_embeddings == POSITIONS
    base = len(blip.SPECIAL_WORDS) + len(words)
    tokenizer = processor.tokenizer
    assert (text.vocab_size, len(tokenizer)) == (base + 2, base + 2)
    assert (text.bos_token_id, tokenizer.bos_token) == (base, blip.DEC_TOKEN)
    assert tokenizer.convert_tokens_to_ids(blip.ENC_TOKEN) == base + 1
    assert (text.sep_token_id, text.eos_token_id, text.pad_token_id) == (3, 3, 0)
    image = processor.image_processor
    assert (image.size["height"], image.size["width"]) == (96, 96)
    assert tuple(image.image_mean) == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert tuple(image.image_std) == pytest.approx((0.26862954, 0.26130258, 0.27577711))


def test_vision_tower_computes_what_blips_vit_does(converted, state) -> None:
    """BLIP's ViT is timm's (same names, LayerNorm eps 1e-6): same features from its weights."""
    timm = pytest.importorskip("timm.models.vision_transformer")
    vit = timm.VisionTransformer(
        img_size=GRID * PATCH,
        patch_size=PATCH,
        embed_dim=VISION,
        depth=LAYERS,
        num_heads=VISION // 64,
        mlp_ratio=VISION_MLP / VISION,
        qkv_bias=True,
        num_classes=0,
        global_pool="",
    ).eval()
    prefix = "visual_encoder."
    vit.load_state_dict(
        {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    )
    pixels = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = vit.forward_features(pixels)
        got = converted[0].vision_model(pixel_values=pixels)[0]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_converted_model_answers_with_enc_first(converted) -> None:
    model, processor = converted
    text = model.config.text_config
    ids = blip.question_ids(
        processor.tokenizer, QUESTIONS, enc_token=True, max_tokens=35, text_config=text
    )
    assert {q[0] for q in ids} == {text.bos_token_id + 1}
    pixels = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    answers = blip.answer_ids(model, pixels, [ids], blip.Decoding(max_length=5))
    assert len(answers[0]) == len(QUESTIONS)
    assert all(isinstance(a, str) for a in blip.decode(processor.tokenizer, answers[0]))


def test_tokenizer_that_has_dec_and_enc_is_checked_not_duplicated(
    tmp_path: Path, source: Path, words: list[str]
) -> None:
    blip.word_tokenizer(words).save_pretrained(tmp_path / "tok")  # [DEC], [ENC] last
    convert_blip(source, tmp_path / "dst", tokenizer=str(tmp_path / "tok"))
    _, processor = blip.load_vqa(str(tmp_path / "dst"), torch.device("cpu"))
    assert len(processor.tokenizer) == len(blip.SPECIAL_WORDS) + len(words) + 2


def test_trusted_pickle_converts(tmp_path: Path, state: dict, tokenizer_dir: Path) -> None:
    src = tmp_path / "with_args.pth"
    torch.save({"model": state, "args": argparse.Namespace(lr=1e-5)}, src)
    with pytest.raises(InputError, match="--trust-pickle"):
        convert_blip(src, tmp_path / "dst", tokenizer=str(tokenizer_dir))
    assert not (tmp_path / "dst").exists()
    convert_blip(src, tmp_path / "dst", tokenizer=str(tokenizer_dir), trust_pickle=True)
    assert (tmp_path / "dst" / "config.json").is_file()


def _with(**changes: torch.Tensor) -> Callable[[dict], dict]:
    return lambda sd: {**sd, **changes}


def _without(key: str) -> Callable[[dict], dict]:
    return lambda sd: {k: v for k, v in sd.items() if k != key}


UNTIED = "text_decoder.cls.predictions.decoder.bias"
REFUSALS = {
    "unknown vision key": (
        _with(**{"visual_encoder.head.weight": torch.zeros(10, VISION)}),
        r"keys BLIP VQA does not have: 1 \(visual_encoder\.head\.weight\)",
    ),
    "pooler": (
        _with(**{"text_encoder.pooler.dense.weight": torch.zeros(TEXT, TEXT)}),
        r"keys the inferred model lacks: 1 \(text_encoder\.pooler\.dense\.weight\)",
    ),
    "missing weight": (
        _without("visual_encoder.blocks.1.norm2.bias"),
        r"weights missing: 1 \(vision_model\.encoder\.layers\.1\.layer_norm2\.bias\)",
    ),
    "shape": (
        _with(
            **{"text_decoder.bert.encoder.layer.1.intermediate.dense.weight": torch.zeros(7, TEXT)}
        ),
        r"shapes differ from the inferred model's: 1 \(text_decoder\.bert\.encoder\.layer\.1\."
        r"intermediate\.dense\.weight \(7, 128\) vs \(96, 128\)\)",
    ),
    "untied head": (
        lambda sd: {**sd, UNTIED: sd[UNTIED] + 1},
        r"'text_decoder\.cls\.predictions\.decoder\.bias' differs from .*tied",
    ),
    "position ids": (
        _with(
            **{"text_encoder.embeddings.position_ids": torch.zeros(1, POSITIONS, dtype=torch.long)}
        ),
        r"'text_encoder\.embeddings\.position_ids' is not 0\.\.39",
    ),
    "cross-attention width": (
        _with(
            **{"text_encoder.encoder.layer.0.crossattention.self.key.weight": torch.zeros(TEXT, 64)}
        ),
        r"text_encoder's cross-attention reads 64 wide, not 128",
    ),
    "all at once": (
        lambda sd: _without("visual_encoder.norm.bias")(
            {**sd, "visual_encoder.head.bias": sd[UNTIED]}
        ),
        r"does not have: 1 \(visual_encoder\.head\.bias\); weights missing: 1 \(vision_model\.post",
    ),
    "not blip": (_without("visual_encoder.pos_embed"), r"no 'visual_encoder\.pos_embed'"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_bad_checkpoint_is_refused_by_name(
    case: str, state: dict, tokenizer_dir: Path, tmp_path: Path
) -> None:
    change, message = REFUSALS[case]
    src = tmp_path / "bad.pth"
    torch.save(change(state), src)  # a bare state dict is read too
    with pytest.raises(InputError, match=rf"{re.escape(str(src))}: .*{message}"):
        convert_blip(src, tmp_path / "dst", tokenizer=str(tokenizer_dir))
    assert not (tmp_path / "dst").exists()


def test_image_size_must_match_the_position_embedding(
    source: Path, tokenizer_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(
        InputError, match=r"6×6 grid of 16 px patches = 96 px, not --image-size 384"
    ):
        convert_blip(source, tmp_path / "dst", tokenizer=str(tokenizer_dir), image_size=384)
    assert not (tmp_path / "dst").exists()


def test_tokenizer_must_fit_blips_rows(source: Path, words: list[str], tmp_path: Path) -> None:
    base = len(blip.SPECIAL_WORDS) + len(words)
    bigger = plain_tokenizer(tmp_path / "bigger", [*words, "zebra"])
    with pytest.raises(
        InputError, match=rf"\[DEC\] = {base + 1}, \[ENC\] = {base + 2}; .* {base + 2} word"
    ):
        convert_blip(source, tmp_path / "dst", tokenizer=str(bigger))
    swapped = plain_tokenizer(tmp_path / "swapped", words)
    tokenizer = blip.BertTokenizer.from_pretrained(swapped, local_files_only=True)
    tokenizer.add_special_tokens({"additional_special_tokens": [blip.ENC_TOKEN]})
    tokenizer.add_special_tokens({"bos_token": blip.DEC_TOKEN})
    tokenizer.save_pretrained(swapped)
    with pytest.raises(InputError, match=rf"\[DEC\] = {base + 1}, \[ENC\] = {base};"):
        convert_blip(source, tmp_path / "dst", tokenizer=str(swapped))
    with pytest.raises(InputError, match=r"tokenizer .*nope.*: cannot load it offline"):
        convert_blip(source, tmp_path / "dst", tokenizer=str(tmp_path / "nope"))
    assert not (tmp_path / "dst").exists()


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "qaclims", "convert", "blip", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_cli_converts_and_refuses(source: Path, tokenizer_dir: Path, tmp_path: Path) -> None:
    good = _cli(str(source), str(tmp_path / "vqa"), "--tokenizer", str(tokenizer_dir))
    assert good.returncode == 0, good.stderr
    model, _ = blip.load_vqa(str(tmp_path / "vqa"), torch.device("cpu"))
    assert model.config.vision_config.image_size == 96
    bad = _cli(
        str(source), str(tmp_path / "bad"), "--tokenizer", str(tokenizer_dir), "--image-size", "64"
    )
    assert bad.returncode == 2, bad.stderr
    assert "not --image-size 64" in bad.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vqa"]  # no DST, no temporary folder
