"""LLaVA-style instruction VLMs: loading, a tiny offline variant, and answering many questions.

`answer_ids` gives the token ids `LlavaForConditionalGeneration.generate` gives for each
(image, prompt) asked alone through the processor, but runs the vision tower once per
image: the projected image features go to `generate` as `mm_encoder_outputs` (the
library's own pre-encoded input), shared by every question about that image. Prompts
are batched only with prompts of the same token length, so there is no padding and each
answer is the one the question would get alone.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import (
    AutoProcessor,
    CLIPImageProcessor,
    CLIPVisionConfig,
    GenerationConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling

from qaclims import fingerprint
from qaclims.errors import InputError
from qaclims.models import blip

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN)
# llava-hf/llava-1.5 style: "USER: <image>\n{text} ASSISTANT:"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'].upper() + ': ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def load_llava(
    name: str, device: torch.device
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Model (eval mode) and processor from a local folder or a cached hub id, offline."""
    path = Path(name).expanduser()
    local = path.exists() or not fingerprint.looks_like_hub_id(name)
    if local:
        blip.check_folder(path)
    source = str(path) if local else name
    try:
        processor = AutoProcessor.from_pretrained(source)
        model = LlavaForConditionalGeneration.from_pretrained(source, dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise blip.load_failure(name, path, local, err) from err
    if getattr(processor, "chat_template", None) is None:
        raise InputError(
            f"{name}: the VLM's processor has no chat template (chat_template.jinja or "
            "processor_config.json), so the question cannot be put into its prompt format"
        )
    model.to(device).eval()
    return model, processor


def prompt_text(processor: LlavaProcessor, prompt: str) -> str:
    """The user turn `prompt` about one image in the processor's chat template."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def preprocess(image_processor, image: Image.Image) -> torch.Tensor:
    """3×H×W pixel values exactly as the processor makes them for this model."""
    return image_processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]


@torch.inference_mode()
def image_features(model: LlavaForConditionalGeneration, pixel_values: torch.Tensor) -> list:
    """Projected image tokens of each image (one P×D tensor each): the vision tower runs once."""
    config = model.config
    out = model.get_image_features(
        pixel_values=pixel_values,
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        return_dict=True,
    )
    return list(out.pooler_output)


def prompt_ids(
    processor: LlavaProcessor, texts: list[str], pixel_values: torch.Tensor
) -> list[list[int]]:
    """Token ids of chat-formatted prompts about images of `pixel_values`' size, the image
    placeholder expanded by the processor's own rule (`replace_image_token`)."""
    tokens = processor.replace_image_token({"pixel_values": pixel_values.cpu()}, 0)
    expanded = [t.replace(processor.image_token, tokens) for t in texts]
    return [list(ids) for ids in processor.tokenizer(expanded)["input_ids"]]


def generation_config(model: LlavaForConditionalGeneration, num_beams: int, max_new: int):
    """Greedy or beam decoding with the model's stop tokens; nothing else from the checkpoint
    (its sampling, temperature or penalties would change the answers)."""
    own, text = model.generation_config, model.config.text_config
    eos = own.eos_token_id if own.eos_token_id is not None else text.eos_token_id
    pad = own.pad_token_id if own.pad_token_id is not None else text.pad_token_id
    return GenerationConfig(
        eos_token_id=eos,
        pad_token_id=pad if pad is not None else eos,
        num_beams=num_beams,
        max_new_tokens=max_new,
        do_sample=False,
        num_return_sequences=1,
    )


@torch.inference_mode()
def answer_ids(
    model: LlavaForConditionalGeneration,
    pixel_values: torch.Tensor,
    prompts: list[list[list[int]]],
    config: GenerationConfig,
) -> list[list[list[int]]]:
    """Generated token ids (prompt and everything from the first stop token removed) for
    `prompts[b]` about image b; equal-length prompts of all images decode together."""
    features = image_features(model, pixel_values)
    flat = [(b, q) for b, per_image in enumerate(prompts) for q in per_image]
    groups: dict[int, list[int]] = {}
    for i, (_, q) in enumerate(flat):
        groups.setdefault(len(q), []).append(i)
    answers: list[list[int]] = [[] for _ in flat]
    stops = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    for length, members in groups.items():
        ids = torch.tensor([flat[i][1] for i in members], device=pixel_values.device)
        encoded = BaseModelOutputWithPooling(pooler_output=[features[flat[i][0]] for i in members])
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            mm_encoder_outputs={"image": encoded},
            generation_config=config,
        )
        for i, row in zip(members, out[:, length:].tolist(), strict=True):
            answers[i] = strip_answer(row, stops)
    result, start = [], 0
    for per_image in prompts:
        result.append(answers[start : start + len(per_image)])
        start += len(per_image)
    return result


def strip_answer(tokens: list[int], stops: list[int]) -> list[int]:
    """Everything before the first stop token (padding follows it)."""
    for i, token in enumerate(tokens):
        if token in stops:
            return tokens[:i]
    return tokens


def word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A Llama-like tokenizer over whole lower-case `words` (punctuation split off), built
    offline: <s> first, </s> as stop, <image> as the image placeholder."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in sorted(set(words) - set(SPECIAL_TOKENS)):
        vocab[word] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    core.add_special_tokens(list(SPECIAL_TOKENS))
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        model_max_length=512,
    )


def tiny_llava(
    out_dir: Path, words: list[str], *, seed: int, image_size: int = 32
) -> LlavaForConditionalGeneration:
    """Build and save a random LLaVA (CLIP vision tower, Llama text model) + processor.

    Same classes and loading path as llava-hf checkpoints; `initializer_range=0.5` keeps a
    random model's replies varied across questions and images instead of one constant reply.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    words = [*words, "user", "assistant", ":"]
    tokenizer = word_tokenizer(words)
    width, init, patch = 64, 0.5, 16
    vision = CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch,
        projection_dim=width,
        initializer_range=init,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=init,
    )
    config = LlavaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=(image_size // patch) ** 2,
        initializer_range=init,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out_dir)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    ).save_pretrained(out_dir)
    return model
