"""VQA backends: selection from config.json, each tiny model through the interface, a shard."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qaclims import demo_models, manifest, qape, vqa_answers, vqa_backends
from qaclims.datasets import demo
from qaclims.errors import InputError
from qaclims.models import blip, llava
from qaclims.tables import QAPE_SCHEMA, read_table

FG = ["What kind of {} is in the photo?", "What is another name for this {}?"]
BG = ["what is above the {}?", "what is the left side of {}?", "what place is the {} in?"]
CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each backend's tiny random model, written as a real checkpoint folder."""
    base = tmp_path_factory.mktemp("models")
    words = demo_models.vocabulary(FG + BG)
    blip.tiny_vqa(base / "blip", words, seed=0)
    llava.tiny_llava(base / "llava", words, seed=0)
    return {"blip": base / "blip", "llava": base / "llava"}


def _answering(**kw) -> vqa_backends.Answering:
    return vqa_backends.Answering(
        image_size=96,
        decoding=blip.Decoding(num_beams=kw.pop("num_beams", 3), max_length=4, min_length=1),
        enc_token=True,
        max_question_tokens=35,
        **kw,
    )


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40 + 9 * i, 56, 3), np.uint8)) for i in range(n)]


@pytest.mark.parametrize("kind", ["blip", "llava"])
def test_each_tiny_backend_answers_a_batch(folders, kind: str) -> None:
    backend = vqa_backends.load(str(folders[kind]), CPU, _answering())
    assert backend.name == kind
    transform = backend.transform()
    pixels = torch.stack([transform(im) for im in _images(2)])
    questions = [[q.format("boat") for q in FG + BG], [BG[0].format("dog")]]
    answers = backend.answer(pixels, questions)
    assert [len(a) for a in answers] == [len(FG + BG), 1]
    flat = [a for per_image in answers for a in per_image]
    assert all(isinstance(a, str) for a in flat)
    assert sum(1 for a in flat if a) >= len(flat) // 2  # random, but mostly words
    assert len(set(flat)) > 1
    if kind == "llava":  # cleaned replies: lower case, at most answer_words words, no stops
        assert all(a == a.lower() and len(a.split()) <= 3 for a in flat)
        assert not any(a.endswith((".", "?", "!")) for a in flat)


def test_blip_backend_answers_as_blip_asked_directly(folders) -> None:
    """The interface adds nothing to BLIP: the same strings as answer_ids + decode."""
    answering = _answering()
    model, processor = blip.load_vqa(str(folders["blip"]), CPU)
    backend = vqa_backends.BlipBackend(model, processor, answering)
    pixels = torch.stack([backend.transform()(im) for im in _images(2)])
    questions = [[q.format("ring") for q in FG + BG], [q.format("cup") for q in BG]]
    ids = blip.answer_ids(
        model,
        pixels,
        [
            blip.question_ids(
                processor.tokenizer, qs, enc_token=True, max_tokens=35,
                text_config=model.config.text_config,
            )
            for qs in questions
        ],
        answering.decoding,
    )  # fmt: skip
    assert backend.answer(pixels, questions) == [blip.decode(processor.tokenizer, a) for a in ids]


@pytest.mark.parametrize("num_beams", [1, 3])
def test_llava_fast_path_equals_processor_generate_per_question(folders, num_beams) -> None:
    """Image encoded once, equal-length prompts batched: the ids of one processor call each."""
    model, processor = llava.load_llava(str(folders["llava"]), CPU)
    images = _images(2, seed=1)
    pixels = torch.stack([llava.preprocess(processor.image_processor, im) for im in images])
    texts = [llava.prompt_text(processor, q.format(c)) for q in FG + BG for c in ("boat", "dog")]
    per_image = [texts, texts[3:7]]
    asked = [llava.prompt_ids(processor, ts, pixels) for ts in per_image]
    assert len({len(q) for q in asked[0]}) > 1  # several lengths: several groups
    config = llava.generation_config(model, num_beams, 6)
    fast = llava.answer_ids(model, pixels, asked, config)
    for b, ts in enumerate(per_image):
        for j, text in enumerate(ts):
            inputs = processor(images=images[b], text=text, return_tensors="pt")
            assert inputs["input_ids"][0].tolist() == asked[b][j]
            torch.testing.assert_close(inputs["pixel_values"][0], pixels[b])
            alone = model.generate(**inputs, generation_config=config)[0]
            start = inputs["input_ids"].shape[1]
            assert fast[b][j] == llava.strip_answer(alone[start:].tolist(), [config.eos_token_id])
    assert len({tuple(a) for a in fast[0]}) > 1


def test_backend_comes_from_config_json_or_the_override(folders, tmp_path: Path) -> None:
    assert vqa_backends.select(str(folders["blip"])) == "blip"
    assert vqa_backends.select(str(folders["llava"])) == "llava"
    assert vqa_backends.select(str(folders["blip"]), "llava") == "llava"
    with pytest.raises(InputError, match=r"qape\.backend 'qwen' is not one of"):
        vqa_backends.select(str(folders["blip"]), "qwen")


def _with_config(source: Path, folder: Path, **changes) -> Path:
    shutil.copytree(source, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return folder


def test_unknown_model_type_is_named_with_the_supported_ones(folders, tmp_path: Path) -> None:
    other = _with_config(folders["llava"], tmp_path / "qwen", model_type="qwen2_vl")
    message = r"VQA model type 'qwen2_vl' .* supported: blip \(BlipForQuestionAnswering.*llava"
    with pytest.raises(InputError, match=message):
        vqa_backends.select(str(other))
    with pytest.raises(InputError, match="qwen2_vl"):
        vqa_backends.load(str(other), CPU, _answering())
    captioner = _with_config(
        folders["blip"], tmp_path / "caption", architectures=["BlipForConditionalGeneration"]
    )
    with pytest.raises(InputError, match=r"'blip' \(architectures \['BlipForConditionalGen"):
        vqa_backends.select(str(captioner))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(InputError, match=r"broken/config\.json: the VQA model's config is not"):
        vqa_backends.select(str(tmp_path / "broken"))


def test_cached_hub_id_is_selected_from_its_snapshot(tmp_path, monkeypatch) -> None:
    snapshot = tmp_path / "hub/models--llava-hf--llava-1.5-7b-hf/snapshots/abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text('{"model_type": "llava"}')
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs/main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert vqa_backends.select("llava-hf/llava-1.5-7b-hf") == "llava"
    with pytest.raises(InputError, match="not in the local Hugging Face cache"):
        vqa_backends.select("llava-hf/not-cached")


def test_prompt_needs_one_question_slot() -> None:
    assert vqa_backends.Prompting("Q: {} A:").text("why?") == "Q: why? A:"
    for bad in ("no slot", "{} {}", "{} {x}", "{question}"):
        with pytest.raises(InputError, match=r"qape\.prompt .* exactly once"):
            vqa_backends.Prompting(bad)


def test_store_key_holds_what_each_backend_uses() -> None:
    plain, prompted = _answering(), _answering(prompting=vqa_backends.Prompting("Q: {}"))
    beams = _answering(num_beams=1)
    assert vqa_backends.setup("blip", plain) == vqa_backends.setup("blip", prompted)
    assert vqa_backends.setup("llava", plain) != vqa_backends.setup("llava", prompted)
    assert vqa_backends.setup("llava", plain) != vqa_backends.setup("llava", beams)
    assert vqa_backends.setup("blip", plain) != vqa_backends.setup("llava", plain)


@pytest.fixture
def shard_data(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "demo"
    demo.generate(root, seed=1, train_images=3, val_images=1, image_size=64)
    out = {"manifest": tmp_path / "manifest.parquet", "classes": tmp_path / "classes.parquet"}
    manifest.run("demo", root, out["manifest"], out["classes"], workers=1)
    return out


def _run_shard(data: dict[str, Path], model: Path, out: Path, **kw) -> dict:
    return qape.run(
        data["manifest"], data["classes"], out / "fg.parquet", out / "bg.parquet",
        shard=0, shards=1, split="train_aug", model=str(model), fg_questions=FG,
        bg_questions=BG, image_size=96, **{"workers": 0, "batch_images": 2, **kw},
    )  # fmt: skip


def test_llava_shard_end_to_end(shard_data, folders, tmp_path: Path) -> None:
    """A random tiny LLaVA gives words, lemmatised; workers and batching change nothing."""
    summary = _run_shard(shard_data, folders["llava"], tmp_path / "a", max_new_tokens=6)
    assert summary["answered"] == summary["questions"] > 0
    rows = read_table(tmp_path / "a/bg.parquet", QAPE_SCHEMA).to_pylist()
    rows += read_table(tmp_path / "a/fg.parquet", QAPE_SCHEMA).to_pylist()
    answers = [r["answer"] for r in rows]
    assert sum(1 for a in answers if a) > len(answers) // 2 and len(set(answers)) > 2
    lemma = qape.make_lemmatizer("lemminflect")
    assert all(r["lemma"] == lemma(r["answer"]) for r in rows)
    other = _run_shard(
        shard_data, folders["llava"], tmp_path / "b", max_new_tokens=6, batch_images=3, workers=2
    )
    assert other["answered"] == summary["questions"]
    for kind in ("fg", "bg"):
        a = read_table(tmp_path / f"a/{kind}.parquet", QAPE_SCHEMA)
        assert a.equals(read_table(tmp_path / f"b/{kind}.parquet", QAPE_SCHEMA))


def test_prompt_reasks_llava_but_not_blip(shard_data, folders, tmp_path: Path) -> None:
    store = tmp_path / "store"
    for kind in ("blip", "llava"):
        first = _run_shard(shard_data, folders[kind], tmp_path / kind, store=store)
        again = _run_shard(
            shard_data, folders[kind], tmp_path / f"{kind}-2", store=store, prompt="Q: {}"
        )
        assert first["answered"] == first["questions"]
        assert again["answered"] == (first["questions"] if kind == "llava" else 0)


def test_blip_backend_is_what_qape_answered_with_before(folders, tmp_path: Path) -> None:
    """`vqa_answers.answer` (the BLIP entry point) and `ask` on the BLIP backend agree."""
    paths = []
    for i, image in enumerate(_images(3, seed=2)):
        paths.append(str(tmp_path / f"{i}.png"))
        image.save(paths[-1])
    requests = [(p, [q.format("boat") for q in FG + BG][i:]) for i, p in enumerate(paths)]
    answering = _answering()
    model, processor = blip.load_vqa(str(folders["blip"]), CPU)
    direct = vqa_answers.answer(model, processor, requests, answering, batch_images=2, workers=0)
    backend = vqa_backends.load(str(folders["blip"]), CPU, answering)
    asked = vqa_answers.ask(backend, requests, precision="fp32", batch_images=3, workers=0)
    assert direct == asked
