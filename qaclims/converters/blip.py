"""The original BLIP VQA checkpoint -> a transformers folder that `models.blip.load_vqa` reads.

Why convert rather than use the hub port `Salesforce/blip-vqa-capfilt-large`: that port was
converted at 384 px (the 30×30 position embedding of the 480 px VQA checkpoint resampled to
24×24) and its tokenizer is plain bert-base-uncased, without BLIP's [DEC] (decoder BOS) and
[ENC] (question start). Converting `model_base_vqa_capfilt_large.pth` keeps the embedding as
trained, the ViT's LayerNorm eps of 1e-6 (timm's, not transformers' 1e-5 default) and writes
a tokenizer whose [DEC] / [ENC] ids are the embedding rows BLIP trained them as (30522 /
30523), so questions start with [ENC] as in BLIP (ALGORITHM §1).

Every source tensor is used and every transformers weight filled, with equal shapes. The
sizes are read from the tensors, so a smaller BLIP converts too; transformers' BLIP VQA
holds one width for image tokens and question states, so a ViT-L BLIP (1024 vs 768) cannot.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from qaclims.atomic import atomic_dir
from qaclims.converters.checkpoint import load_checkpoint, tensors
from qaclims.errors import InputError
from qaclims.models import blip  # sets the offline switches before transformers is imported
from qaclims.models.blip import (
    BertTokenizer,
    BlipConfig,
    BlipForQuestionAnswering,
    BlipImageProcessor,
    BlipProcessor,
    BlipTextConfig,
    BlipVisionConfig,
)

log = logging.getLogger(__name__)

HEAD_WIDTH = 64  # BLIP's ViT-B/L and BERT-base attention heads are 64 wide
VISION_LAYER_NORM_EPS = 1e-6  # BLIP's ViT: timm's partial(nn.LayerNorm, eps=1e-6)
SHOWN = 5  # keys named per error message

# Original `visual_encoder.` names (BLIP models/vit.py, timm's layout) -> `vision_model.`.
VISION_RENAMES = (
    (r"cls_token", "embeddings.class_embedding"),
    (r"pos_embed", "embeddings.position_embedding"),
    (r"patch_embed\.proj\.(weight|bias)", r"embeddings.patch_embedding.\1"),
    (r"blocks\.(\d+)\.norm1\.(weight|bias)", r"encoder.layers.\1.layer_norm1.\2"),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"encoder.layers.\1.self_attn.qkv.\2"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"encoder.layers.\1.self_attn.projection.\2"),
    (r"blocks\.(\d+)\.norm2\.(weight|bias)", r"encoder.layers.\1.layer_norm2.\2"),
    (r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"encoder.layers.\1.mlp.\2.\3"),
    (r"norm\.(weight|bias)", r"post_layernorm.\1"),
)
# BLIP's text encoder and decoder (models/med.py, transformers 4.15 BERT) carry the names
# transformers' BLIP text classes use, so `text_encoder.*` / `text_decoder.*` keep theirs.
TEXT_PREFIXES = ("text_encoder.", "text_decoder.")
# BLIP keeps `position_ids` as a persistent buffer; transformers rebuilds it (non-persistent)
# from max_position_embeddings. It is dropped after checking it is that arange.
POSITION_IDS = {
    "text_encoder.embeddings.position_ids": "text_encoder.embeddings.position_embeddings.weight",
    "text_decoder.bert.embeddings.position_ids": (
        "text_decoder.bert.embeddings.position_embeddings.weight"
    ),
}
# The LM head is tied in both codebases (BLIP through BERT's tie_weights and
# `decoder.bias = bias`; transformers through `_tied_weights_keys`): the checkpoint holds each
# pair twice. A pair that differs would lose one tensor to the tie, so it is refused; a
# missing tied copy is taken from its source, as loading into either model would.
TIED = {
    "text_decoder.cls.predictions.decoder.weight": (
        "text_decoder.bert.embeddings.word_embeddings.weight"
    ),
    "text_decoder.cls.predictions.decoder.bias": "text_decoder.cls.predictions.bias",
}


def hf_key(key: str) -> str | None:
    """The transformers name of an original BLIP VQA key; None for a key BLIP VQA lacks."""
    if key.startswith(TEXT_PREFIXES):
        return key
    if key.startswith("visual_encoder."):
        rest = key.removeprefix("visual_encoder.")
        for pattern, target in VISION_RENAMES:
            if re.fullmatch(pattern, rest):
                return "vision_model." + re.sub(pattern, target, rest)
    return None


def _names(keys: list[str]) -> str:
    shown = ", ".join(sorted(keys)[:SHOWN])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > SHOWN else ''})"


def _state_dict(src: Path, trust_pickle: bool) -> dict[str, torch.Tensor]:
    """The model's tensors: `checkpoint['model']` as BLIP saves it, or a bare state dict."""
    state = load_checkpoint(src, trust_pickle=trust_pickle)
    if isinstance(state.get("model"), dict):
        state = state["model"]
    return tensors(state, src)


def _need(state: dict[str, torch.Tensor], key: str, src: Path, dims: int) -> torch.Tensor:
    if key not in state:
        raise InputError(f"{src}: no '{key}': not an original BLIP VQA checkpoint")
    if state[key].dim() != dims:
        raise InputError(f"{src}: '{key}' has shape {tuple(state[key].shape)}, not {dims}-D")
    return state[key]


def _layers(state: dict[str, torch.Tensor], prefix: str, src: Path) -> int:
    """Layer count: one more than the highest `prefix<N>.` index (a gap shows up as missing)."""
    found = [int(m.group(1)) for k in state if (m := re.match(rf"{re.escape(prefix)}(\d+)\.", k))]
    if not found:
        raise InputError(f"{src}: no '{prefix}<N>.*' keys: not an original BLIP VQA checkpoint")
    return max(found) + 1


def _heads(width: int, what: str, src: Path) -> int:
    if width % HEAD_WIDTH:
        raise InputError(f"{src}: {what} width {width} is not a multiple of {HEAD_WIDTH}")
    return width // HEAD_WIDTH


def _image_size(state: dict[str, torch.Tensor], src: Path, asked: int | None) -> int:
    """The size the position embedding was trained at: (tokens - 1) = (size / patch)²."""
    tokens = _need(state, "visual_encoder.pos_embed", src, 3).shape[1]
    proj = _need(state, "visual_encoder.patch_embed.proj.weight", src, 4)
    patch = proj.shape[-1]
    grid = round((tokens - 1) ** 0.5)
    if grid * grid != tokens - 1 or proj.shape[-2] != patch:
        raise InputError(
            f"{src}: pos_embed of {tokens} tokens with {tuple(proj.shape[-2:])} patches "
            "is not a square grid plus the class token"
        )
    size = grid * patch
    if asked is not None and asked != size:
        raise InputError(
            f"{src}: pos_embed holds a {grid}×{grid} grid of {patch} px patches = {size} px, "
            f"not --image-size {asked} (the embedding is kept as trained)"
        )
    return size


def _vision_config(state: dict[str, torch.Tensor], src: Path, size: int) -> BlipVisionConfig:
    width = _need(state, "visual_encoder.pos_embed", src, 3).shape[2]
    fc1 = _need(state, "visual_encoder.blocks.0.mlp.fc1.weight", src, 2)
    return BlipVisionConfig(
        hidden_size=width,
        intermediate_size=fc1.shape[0],
        num_hidden_layers=_layers(state, "visual_encoder.blocks.", src),
        num_attention_heads=_heads(width, "vision", src),
        image_size=size,
        patch_size=_need(state, "visual_encoder.patch_embed.proj.weight", src, 4).shape[-1],
        layer_norm_eps=VISION_LAYER_NORM_EPS,
    )


def _check_widths(state: dict[str, torch.Tensor], src: Path, vision: int, text: int) -> None:
    """The widths the cross-attentions read must be ones transformers' BLIP can hold.

    BLIP's text encoder reads the image tokens (vision width), its decoder the question
    states (text width); transformers gives both one `encoder_hidden_size`, so the two
    widths must agree (true of ViT-B BLIP, 768).
    """
    layer = "encoder.layer.0.crossattention.self.key.weight"
    reads = {
        "text_encoder": (_need(state, f"text_encoder.{layer}", src, 2).shape[1], vision),
        "text_decoder": (_need(state, f"text_decoder.bert.{layer}", src, 2).shape[1], text),
    }
    for module, (width, source) in reads.items():
        if width != source:
            raise InputError(f"{src}: {module}'s cross-attention reads {width} wide, not {source}")
    if vision != text:
        raise InputError(
            f"{src}: vision width {vision} differs from text width {text}; transformers' BLIP "
            "VQA holds one width for the image tokens and the question states"
        )


def _text_config(
    state: dict[str, torch.Tensor], src: Path, tokenizer: BertTokenizer, vision_width: int
) -> BlipTextConfig:
    words = _need(state, "text_encoder.embeddings.word_embeddings.weight", src, 2)
    positions = _need(state, "text_encoder.embeddings.position_embeddings.weight", src, 2)
    ffn = _need(state, "text_encoder.encoder.layer.0.intermediate.dense.weight", src, 2)
    _check_widths(state, src, vision_width, words.shape[1])
    return BlipTextConfig(
        vocab_size=words.shape[0],
        hidden_size=words.shape[1],
        encoder_hidden_size=vision_width,
        intermediate_size=ffn.shape[0],
        num_hidden_layers=_layers(state, "text_encoder.encoder.layer.", src),
        num_attention_heads=_heads(words.shape[1], "text", src),
        max_position_embeddings=positions.shape[0],
        bos_token_id=tokenizer.bos_token_id,
        sep_token_id=tokenizer.sep_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def blip_tokenizer(name: str, rows: int) -> BertTokenizer:
    """bert-base-uncased plus BLIP's bos [DEC] and extra [ENC], as BLIP's init_tokenizer adds them.

    Their ids must be the last two of `rows` word-embedding rows ([DEC] right after the base
    vocabulary: 30522, [ENC] 30523 for the real one): the rows BLIP trained them as.
    """
    try:
        tokenizer = BertTokenizer.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as err:
        raise InputError(f"tokenizer '{name}': cannot load it offline ({err})") from err
    tokenizer.add_special_tokens(
        {"bos_token": blip.DEC_TOKEN, "additional_special_tokens": [blip.ENC_TOKEN]}
    )
    dec = tokenizer.convert_tokens_to_ids(blip.DEC_TOKEN)
    enc = tokenizer.convert_tokens_to_ids(blip.ENC_TOKEN)
    if (len(tokenizer), dec, enc) != (rows, rows - 2, rows - 1):
        raise InputError(
            f"tokenizer '{name}': {len(tokenizer)} tokens with {blip.DEC_TOKEN} = {dec}, "
            f"{blip.ENC_TOKEN} = {enc}; the checkpoint's {rows} word-embedding rows need "
            f"{blip.DEC_TOKEN} = {rows - 2} and {blip.ENC_TOKEN} = {rows - 1} "
            "(bert-base-uncased: 30522 tokens)"
        )
    return tokenizer


def _drop_position_ids(state: dict[str, torch.Tensor], src: Path) -> dict[str, torch.Tensor]:
    """State without BLIP's position_ids buffers, each checked to be arange(max positions)."""
    out = dict(state)
    for key, table in POSITION_IDS.items():
        if key not in out:
            continue
        ids = out.pop(key)
        rows = state[table].shape[0] if table in state else ids.shape[-1]
        if not torch.equal(ids.reshape(-1), torch.arange(rows)):
            raise InputError(f"{src}: '{key}' is not 0..{rows - 1}, which transformers rebuilds")
    return out


def hf_weights(
    state: dict[str, torch.Tensor], src: Path
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """transformers-named tensors and the source keys BLIP VQA lacks; untied copies refused."""
    state = _drop_position_ids(state, src)
    unknown = [k for k in state if hf_key(k) is None]
    weights = {name: v for k, v in state.items() if (name := hf_key(k)) is not None}
    for tied, source in TIED.items():
        if source not in weights:
            continue  # reported as missing with the rest
        if tied not in weights:
            weights[tied] = weights[source]
        elif not torch.equal(weights[tied], weights[source]):
            raise InputError(f"{src}: '{tied}' differs from '{source}', to which it is tied")
    return weights, unknown


def _load(
    config: BlipConfig, weights: dict[str, torch.Tensor], unknown: list[str], src: Path
) -> BlipForQuestionAnswering:
    """The transformers model holding `weights`; every key that does not fit named at once."""
    model = BlipForQuestionAnswering(config).eval()
    expected = model.state_dict()  # persistent entries only: no position_ids
    wrong = [
        f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in weights and weights[k].shape != v.shape
    ]
    problems = [
        f"{label}: {_names(keys)}"
        for label, keys in (
            ("keys BLIP VQA does not have", unknown),
            ("keys the inferred model lacks", [k for k in weights if k not in expected]),
            ("weights missing", [k for k in expected if k not in weights]),
            ("shapes differ from the inferred model's", wrong),
        )
        if keys
    ]
    if problems:
        raise InputError(f"{src}: " + "; ".join(problems))
    model.load_state_dict(weights, strict=True)
    return model


def _check_written(folder: Path, weights: dict[str, torch.Tensor], config: BlipConfig) -> None:
    """Load the folder as QAPE does: every tensor, the image size and [ENC] must come back."""
    model, processor = blip.load_vqa(str(folder), torch.device("cpu"))
    loaded = model.state_dict()
    differ = [k for k, v in weights.items() if not torch.equal(loaded[k], v.to(loaded[k].dtype))]
    got = (
        model.config.vision_config.image_size,
        blip.enc_token_id(processor.tokenizer, model.config.text_config),
    )
    want = (config.vision_config.image_size, config.text_config.vocab_size - 1)
    if differ or got != want:
        raise RuntimeError(
            f"{folder}: reads back wrong: tensors {differ[:SHOWN]}, (size, [ENC]) {got} "
            f"instead of {want}"
        )


def convert_blip(
    src: Path,
    dst: Path,
    *,
    tokenizer: str,
    image_size: int | None = None,
    trust_pickle: bool = False,
) -> None:
    """Write `dst`: BLIP VQA model + processor at the checkpoint's own image size."""
    src, dst = Path(src), Path(dst)
    state = _state_dict(src, trust_pickle)
    size = _image_size(state, src, image_size)
    vision = _vision_config(state, src, size)
    rows = _need(state, "text_encoder.embeddings.word_embeddings.weight", src, 2).shape[0]
    tok = blip_tokenizer(tokenizer, rows)
    text = _text_config(state, src, tok, vision.hidden_size)
    config = BlipConfig(text_config=text.to_dict(), vision_config=vision.to_dict())
    weights, unknown = hf_weights(state, src)
    model = _load(config, weights, unknown, src)
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": size, "width": size}), tokenizer=tok
    )
    with atomic_dir(dst) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        _check_written(tmp, weights, config)
    log.info(
        "%s -> %s: %d px, vision %d×%d, text %d×%d, %d tokens ([DEC] %d, [ENC] %d)",
        src, dst, size, vision.num_hidden_layers, vision.hidden_size, text.num_hidden_layers,
        text.hidden_size, len(tok), tok.bos_token_id, tok.bos_token_id + 1,
    )  # fmt: skip
