"""BLIP visual question answering: loading, a tiny variant, and fast batched answering.

`answer_ids` gives the token ids `BlipForQuestionAnswering.generate` gives for each question
asked alone, but encodes each image once and decodes many questions in one padded batch.
Padding is only exact with `fix_cross_attention_mask`: transformers 5.24 drops the mask
of the decoder's cross-attention to the question, so a short question would attend to
its padding (notes/OFFLINE_MODELS.md §2). The text encoder gets the image tokens with batch
size 1, broadcast over the image's questions, so the cross-attention keys/values of the
image are projected once per image, not once per question.
"""

from __future__ import annotations

import logging
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForQuestionAnswering,
    BlipImageProcessor,
    BlipProcessor,
    BlipTextConfig,
    BlipVisionConfig,
    GenerationConfig,
)

from qaclims import fingerprint
from qaclims.errors import InputError

log = logging.getLogger(__name__)

ENC_TOKEN = "[ENC]"
DEC_TOKEN = "[DEC]"
SPECIAL_WORDS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


@dataclass(frozen=True)
class Decoding:
    """Decoder settings of ALGORITHM §1 (BLIP's own VQA generate)."""

    num_beams: int = 3
    max_length: int = 10
    min_length: int = 1


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~"))


def check_folder(folder: Path) -> None:
    """A local model folder must hold what from_pretrained needs; name what is missing."""
    if not folder.is_dir():
        raise InputError(f"{folder}: VQA model folder not found")
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES))
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        missing.append(" or ".join(TOKENIZER_FILES))
    if (
        not (folder / "preprocessor_config.json").is_file()
        and not (folder / "processor_config.json").is_file()
    ):
        missing.append("preprocessor_config.json")
    if missing:
        raise InputError(f"{folder}: VQA model folder lacks {', '.join(missing)}")


def load_vqa(name: str, device: torch.device) -> tuple[BlipForQuestionAnswering, BlipProcessor]:
    """Model (eval mode, mask fix applied) and processor from a local folder or a hub id.

    A hub id is read from the local Hugging Face cache only (unless the user set
    HF_HUB_OFFLINE=0), so a missing download fails at once with a message that says so.
    """
    path = Path(name).expanduser()
    local = path.exists() or not _looks_like_hub_id(name)
    if local:
        check_folder(path)
    source = str(path) if local else name
    try:
        processor = BlipProcessor.from_pretrained(source)
        model = BlipForQuestionAnswering.from_pretrained(source, dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise load_failure(name, path, local, err) from err
    model.to(device).eval()
    fix_cross_attention_mask(model)
    return model, processor


def load_failure(name: str, path: Path, local: bool, err: Exception) -> InputError:
    """What a failed from_pretrained of `models.vqa` means: a bad folder or an uncached id."""
    if local:
        return InputError(f"{path}: cannot load the VQA model folder ({err})")
    if not (fingerprint.hf_hub_cache() / f"models--{name.replace('/', '--')}").is_dir():
        return fingerprint.missing_vqa(name)  # a missing folder or an uncached id
    return InputError(f"VQA model '{name}': cannot load it from the local cache ({err})")


def _cross_attention_forward(
    self, hidden_states, attention_mask=None, encoder_hidden_states=None, cache=None, **kwargs
):
    # transformers 5.24 passes the encoder mask as `attention_mask`, which the
    # self-attention module discards for cross-attention; hand it over as the encoder mask.
    context, probs = self.self(
        hidden_states,
        encoder_hidden_states=encoder_hidden_states,
        encoder_attention_mask=attention_mask,
        cache=cache,
    )
    return self.output(context, hidden_states), probs


def fix_cross_attention_mask(model: BlipForQuestionAnswering) -> None:
    """Make the decoder's cross-attention honour the question padding mask (this model only)."""
    for layer in model.text_decoder.bert.encoder.layer:
        attention = layer.crossattention
        attention.forward = types.MethodType(_cross_attention_forward, attention)


def enc_token_id(tokenizer, text_config: BlipTextConfig) -> int:
    """BLIP's [ENC] id for this model: the tokenizer's, else bos + 1 in BLIP's vocabulary layout.

    BLIP's tokenizer is bert-base-uncased plus [DEC] (the decoder's bos, 30522) and then
    [ENC] (30523). The hub tokenizer of Salesforce/blip-vqa-capfilt-large lacks both while its
    model keeps BLIP's 30524 rows with bos 30522, so [ENC] is the row after bos. Either way
    [ENC] must be bos + 1 inside the vocabulary, or the question would start with a token the
    model never saw there.
    """
    bos, rows, size = text_config.bos_token_id, text_config.vocab_size, len(tokenizer)
    enc = tokenizer.convert_tokens_to_ids(ENC_TOKEN)
    if enc is None or enc == tokenizer.unk_token_id:
        enc = bos + 1 if bos is not None and (rows, bos) == (size + 2, size) else None
    if enc is None or bos is None or enc != bos + 1 or enc >= rows:
        raise InputError(
            f"cannot place {ENC_TOKEN} first in the questions: the tokenizer has {size} tokens "
            f"({ENC_TOKEN} = {enc}), the model {rows} rows with {DEC_TOKEN} (bos) = {bos}; "
            f"BLIP's layout is {ENC_TOKEN} = bos + 1 < rows, from the tokenizer or, when it "
            "lacks both, rows = tokens + 2 and bos = tokens (or set qape.enc_token: false)"
        )
    return enc


def question_ids(
    tokenizer,
    questions: list[str],
    *,
    enc_token: bool,
    max_tokens: int,
    text_config: BlipTextConfig,
) -> list[list[int]]:
    """Token ids of each question, `[CLS] q [SEP]`, the first replaced by [ENC] when asked.

    The original BLIP encodes questions with [ENC] first (`enc_token_id`); the HF port keeps
    [CLS]. [ENC] that cannot be placed is an error, not a silent [CLS].
    """
    encoded = tokenizer(questions, truncation=True, max_length=max_tokens)["input_ids"]
    ids = [list(q) for q in encoded]
    if not enc_token:
        return ids
    enc_id = enc_token_id(tokenizer, text_config)
    return [[enc_id, *q[1:]] for q in ids]


def preprocess(image: Image.Image, size: int, mean: tuple, std: tuple) -> torch.Tensor:
    """3×size×size float tensor: PIL bicubic resize (aspect not kept), [0,1], normalised.

    The original BLIP transform (torchvision Resize on PIL + ToTensor + Normalize).
    """
    image = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = (array - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


@torch.inference_mode()
def answer_ids(
    model: BlipForQuestionAnswering,
    pixel_values: torch.Tensor,
    questions: list[list[list[int]]],
    decoding: Decoding,
) -> list[list[list[int]]]:
    """Answer token ids (BOS and EOS/padding removed) for `questions[b]` about image b.

    The vision encoder runs once over the batch of images; each image's questions go
    through the text encoder together, and all questions of all images are decoded in one
    beam search with the question mask honoured.
    """
    device = pixel_values.device
    native = model.config.vision_config.image_size
    interpolate = tuple(pixel_values.shape[-2:]) != (native, native)
    image_embeds = model.vision_model(
        pixel_values=pixel_values, interpolate_pos_encoding=interpolate
    )[0]
    flat = [q for per_image in questions for q in per_image]
    if not flat:
        return [[] for _ in questions]
    length = max(len(q) for q in flat)
    ids = torch.full((len(flat), length), model.config.text_config.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(flat), length), dtype=torch.long)
    for i, q in enumerate(flat):
        ids[i, : len(q)] = torch.tensor(q)
        mask[i, : len(q)] = 1
    ids, mask = ids.to(device), mask.to(device)
    encoded = []
    start = 0
    for b, per_image in enumerate(questions):
        end = start + len(per_image)
        if end > start:
            encoded.append(
                model.text_encoder(
                    input_ids=ids[start:end],
                    attention_mask=mask[start:end],
                    encoder_hidden_states=image_embeds[b : b + 1],
                    return_dict=False,
                )[0]
            )
        start = end
    question_embeds = torch.cat(encoded)
    bos = torch.full((len(flat), 1), model.decoder_start_token_id, device=device)
    text_config = model.config.text_config
    # Only the paper's decoding: nothing may come from the checkpoint's generation settings
    # (a length or repetition penalty, max_new_tokens, ...), which fill every unset value.
    model.text_decoder.generation_config = GenerationConfig()
    out = model.text_decoder.generate(
        input_ids=bos,
        eos_token_id=text_config.sep_token_id,
        pad_token_id=text_config.pad_token_id,
        encoder_hidden_states=question_embeds,
        encoder_attention_mask=mask,
        num_beams=decoding.num_beams,
        max_length=decoding.max_length,
        min_length=decoding.min_length,
        do_sample=False,
        length_penalty=1.0,
        early_stopping=False,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        num_return_sequences=1,
    )
    answers = [strip_answer(row.tolist(), text_config) for row in out]
    result, start = [], 0
    for per_image in questions:
        result.append(answers[start : start + len(per_image)])
        start += len(per_image)
    return result


def strip_answer(tokens: list[int], text_config: BlipTextConfig) -> list[int]:
    """Drop the BOS and everything from the first EOS on (padding follows it)."""
    body = tokens[1:]
    if text_config.sep_token_id in body:
        body = body[: body.index(text_config.sep_token_id)]
    return body


def decode(tokenizer, answers: list[list[int]]) -> list[str]:
    """Answer strings as BLIP prints them: no special tokens, stripped, spaces cleaned up.

    BLIP ran transformers 4.15, whose decode cleans up tokenization spaces by default
    ("man ' s" -> "man's"); transformers 5 does not unless asked.
    """
    texts = tokenizer.batch_decode(
        answers, skip_special_tokens=True, clean_up_tokenization_spaces=True
    )
    return [a.strip() for a in texts]


def word_tokenizer(words: list[str]) -> BertTokenizer:
    """A BERT tokenizer over whole `words` with BLIP's [DEC] (BOS) and [ENC], built offline."""
    vocab = list(SPECIAL_WORDS) + sorted(set(words) - set(SPECIAL_WORDS))
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.txt"
        vocab_file.write_text("\n".join(vocab) + "\n")
        tokenizer = BertTokenizer(vocab=str(vocab_file), model_max_length=512)
    tokenizer.add_special_tokens({"bos_token": DEC_TOKEN, "additional_special_tokens": [ENC_TOKEN]})
    return tokenizer


def tiny_vqa(
    out_dir: Path, words: list[str], *, seed: int, image_size: int = 96
) -> BlipForQuestionAnswering:
    """Build and save a random BLIP VQA model + processor with an offline word vocabulary.

    Same classes and loading path as the real checkpoint (OFFLINE_MODELS.md §1);
    `initializer_range=0.5` keeps random answers varied across questions and images.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = word_tokenizer(words)
    width, init = 64, 0.5
    text = BlipTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        encoder_hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id,
        sep_token_id=tokenizer.sep_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=init,
    )
    vision = BlipVisionConfig(
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=16,
        initializer_range=init,
    )
    config = BlipConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), initializer_range=init
    )
    torch.manual_seed(seed)
    model = BlipForQuestionAnswering(config).eval()
    model.save_pretrained(out_dir)
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)
    return model
