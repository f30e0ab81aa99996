"""The demo VLMs trained on the co-occurrence world know it; the random ones stay as they were.

The trained models are scored on held-apart scenes through the pipeline's own paths: CLIP
through `load_clip` / `encode_texts` and the RITC tower, BLIP through `load_vqa` and
`vqa_answers.answer` on image files, exactly as QAPE asks. The budget is far below the
defaults, so the bars are well above chance but below what the defaults reach.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qaclims import demo_models, demo_vlms, vqa_answers
from qaclims.datasets import demo_world
from qaclims.errors import InputError
from qaclims.models import blip, clip_text

FG = ["What kind of {} is in the photo?", "What is another name for this {}?"]
BG = ["what is above the {}?", "what is the left side of {}?", "what place is the {} in?"]
USAGE = demo_vlms.Usage(
    image_size=128,
    cooccurrence=0.85,
    prompt="a photo of {}.",
    fg_questions=tuple(FG),
    bg_questions=tuple(BG),
    vqa_image_size=96,
    enc_token=True,
    max_question_tokens=35,
    decoding=blip.Decoding(num_beams=3, max_length=3, min_length=1),
    clip_input_norm="imagenet",
    mask_prompt_depth=2,
)
SMALL = demo_vlms.Training(
    renders=240, eval_renders=40, clip_steps=60, vqa_steps=200, batch_size=16, seed=0
)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models: intra-op threads only add overhead on a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(out: Path, training: demo_vlms.Training, **kwargs) -> dict:
    return demo_models.run(
        out / "vqa",
        out / "clip-tiny.safetensors",
        out / "clip-tiny.json",
        texts=FG + BG,
        world="cooccurrence",
        trained=True,
        training=training,
        usage=USAGE,
        quality=out / "quality.json",
        **kwargs,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo_vlms")
    _run(out, SMALL)
    return out


def test_quality_json_holds_the_accuracies(trained: Path) -> None:
    quality = json.loads((trained / "quality.json").read_text())
    assert quality["trained"] is True
    assert quality["held_apart_scenes"] == SMALL.eval_renders
    assert set(quality["accuracy"]) == {
        "clip_object_class",
        "clip_object_kind",
        "clip_background",
        "vqa_fg",
        "vqa_bg",
    }


def test_clip_ranks_the_true_region_caption_first(trained: Path) -> None:
    """Zero-shot on held-apart regions, reloaded from the files (chance 20 %)."""
    model, tokenizer = clip_text.load_clip(
        "clip-tiny",
        str(trained / "clip-tiny.safetensors"),
        torch.device("cpu"),
        trained / "clip-tiny.json",
    )
    held = demo_vlms.samples(
        demo_vlms.render(40, USAGE.image_size, USAGE.cooccurrence, 5, demo_vlms.EVAL_STREAM),
        USAGE,
    )
    accuracy = demo_vlms.clip_accuracy(model, tokenizer, held, USAGE)
    assert accuracy["clip_object_class"] >= 0.6, accuracy
    assert accuracy["clip_background"] >= 0.6, accuracy


def test_vqa_answers_background_questions_through_qape_path(trained: Path, tmp_path: Path) -> None:
    """Held-apart scenes as image files, asked as QAPE asks ([ENC] first, beam search)."""
    rng = np.random.default_rng([3, demo_vlms.EVAL_STREAM])
    requests, truths = [], []
    for i in range(12):
        scene = demo_world.render_scene(rng, USAGE.image_size, cooccurrence=0.85)
        path = tmp_path / f"{i}.png"
        Image.fromarray(scene.image).save(path)
        name = demo_world.CLASSES[scene.objects[0][0]]
        requests.append((str(path), [q.format(name) for q in BG]))
        truths += [scene.background] * len(BG)
    vqa, processor = blip.load_vqa(str(trained / "vqa"), torch.device("cpu"))
    answering = vqa_answers.Answering(
        image_size=USAGE.vqa_image_size,
        decoding=USAGE.decoding,
        enc_token=True,
        max_question_tokens=35,
    )
    said = vqa_answers.answer(vqa, processor, requests, answering, batch_images=4, workers=0)
    answers = [a for per_image in said for a in per_image]
    accuracy = np.mean([a == t for a, t in zip(answers, truths, strict=True)])
    assert accuracy >= 0.6, list(zip(answers, truths, strict=True))


def test_trained_vocabulary_holds_the_world_words(trained: Path) -> None:
    _, processor = blip.load_vqa(str(trained / "vqa"), torch.device("cpu"))
    tokens = processor.tokenizer.tokenize(" ".join(demo_models.world_words()))
    assert processor.tokenizer.unk_token not in tokens


def test_training_is_deterministic(tmp_path: Path) -> None:
    tiny = demo_vlms.Training(renders=8, eval_renders=1, clip_steps=2, vqa_steps=2, batch_size=4)
    train, _ = demo_vlms.scene_sets(tiny, USAGE)
    states = [demo_vlms.train_clip("clip-tiny", train, tiny, USAGE)[0].state_dict() for _ in "ab"]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_untrained_models_are_todays_random_ones(tmp_path: Path) -> None:
    """trained=False writes the bytes `tiny_vqa` / `tiny_clip` write, the shapes vocabulary."""
    texts = FG + BG
    demo_models.run(
        tmp_path / "vqa",
        tmp_path / "clip-tiny.safetensors",
        tmp_path / "clip-tiny.json",
        texts=texts,
        seed=0,
        world="shapes",
        quality=tmp_path / "quality.json",
    )
    words = demo_models.vocabulary(texts)
    assert "sailboat" not in words and "sailboat" in demo_models.vocabulary(texts, "cooccurrence")
    blip.tiny_vqa(tmp_path / "ref_vqa", words, seed=0, image_size=96)
    clip_text.tiny_clip("clip-tiny", tmp_path / "ref.safetensors", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (tmp_path / "vqa" / name).read_bytes() == (tmp_path / "ref_vqa" / name).read_bytes()
    ref = (tmp_path / "ref.safetensors").read_bytes()
    assert (tmp_path / "clip-tiny.safetensors").read_bytes() == ref
    assert json.loads((tmp_path / "clip-tiny.json").read_text()) == clip_text.TINY_CONFIG
    assert json.loads((tmp_path / "quality.json").read_text())["trained"] is False


def test_shapes_world_refuses_trained_vlms(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"co-occurrence world only.*demo_vlms.trained: false"):
        demo_models.run(
            tmp_path / "vqa",
            tmp_path / "clip-tiny.safetensors",
            tmp_path / "clip-tiny.json",
            texts=FG + BG,
            world="shapes",
            trained=True,
            usage=USAGE,
        )
    assert not (tmp_path / "vqa").exists()
