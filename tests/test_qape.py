"""QAPE VQA stage: exact batched answering, model loading errors, lemmas, a shard end to end."""

from __future__ import annotations

import importlib.util
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from qaclims import demo_models, devices, manifest, qape
from qaclims.answer_store import AnswerStore
from qaclims.datasets import demo
from qaclims.errors import InputError
from qaclims.models import blip
from qaclims.tables import QAPE_SCHEMA, read_manifest, read_table

FG = ["What kind of {} is in the photo?", "What is another name for this {}?"]
BG = ["what is above the {}?", "what is the left side of {}?", "what place is the {} in?"]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models: intra-op threads only add overhead (10x slower on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_vqa(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models") / "blip-vqa-tiny"
    blip.tiny_vqa(folder, demo_models.vocabulary(FG + BG), seed=0)
    return folder


@pytest.fixture(scope="module")
def loaded(tiny_vqa: Path):
    return blip.load_vqa(str(tiny_vqa), torch.device("cpu"))


@pytest.fixture
def shard_data(tmp_path: Path) -> dict[str, Path]:
    """Three demo train images in one shard, with manifest and class table."""
    root = tmp_path / "demo"
    demo.generate(root, seed=1, train_images=3, val_images=1, image_size=64)
    out = {"manifest": tmp_path / "manifest.parquet", "classes": tmp_path / "classes.parquet"}
    manifest.run("demo", root, out["manifest"], out["classes"], workers=1)
    return out


def _run_shard(data: dict[str, Path], model: Path, out: Path, **kw) -> dict:
    return qape.run(
        data["manifest"],
        data["classes"],
        out / "fg.parquet",
        out / "bg.parquet",
        shard=kw.pop("shard", 0),
        shards=kw.pop("shards", 1),
        split="train_aug",
        model=str(model),
        fg_questions=FG,
        bg_questions=BG,
        image_size=kw.pop("image_size", 96),
        **{"workers": 0, "batch_images": 2, **kw},
    )


@pytest.mark.parametrize("num_beams", [1, 3])
def test_batched_answers_equal_separate_generate_calls(loaded, num_beams: int) -> None:
    model = loaded[0]
    questions = [q.format("ring") for q in FG + BG] + ["what is it?"]  # 6 lengths
    ids = _question_ids(loaded, questions)
    assert len({len(q) for q in ids}) > 2  # the batch really is padded
    pixels = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    per_image = [ids, ids[3:5]]
    decoding = blip.Decoding(num_beams=num_beams, max_length=10, min_length=1)
    batched = blip.answer_ids(model, pixels, per_image, decoding)
    separate = [
        [
            blip.strip_answer(
                model.generate(
                    input_ids=torch.tensor([q]),
                    pixel_values=pixels[b : b + 1],
                    num_beams=num_beams,
                    max_length=10,
                    min_length=1,
                )[0].tolist(),
                model.config.text_config,
            )
            for q in qs
        ]
        for b, qs in enumerate(per_image)
    ]
    assert batched == separate
    assert len({tuple(a) for a in batched[0]}) > 1  # answers vary across questions


def test_cross_attention_mask_fix_hides_question_padding(loaded) -> None:
    """Decoder logits of a padded question equal those of the unpadded one."""
    model = loaded[0]
    ids = _question_ids(loaded, ["what is it?"])[0]
    embeds = torch.randn(1, len(ids) + 4, model.config.text_config.hidden_size)
    bos = torch.tensor([[model.decoder_start_token_id]])
    mask = torch.ones(1, len(ids) + 4, dtype=torch.long)
    mask[0, len(ids) :] = 0
    with torch.inference_mode():
        short = model.text_decoder(
            input_ids=bos,
            encoder_hidden_states=embeds[:, : len(ids)],
            encoder_attention_mask=mask[:, : len(ids)],
        ).logits
        padded = model.text_decoder(
            input_ids=bos, encoder_hidden_states=embeds, encoder_attention_mask=mask
        ).logits
    torch.testing.assert_close(short, padded)


def _question_ids(loaded, questions: list[str], *, enc_token: bool = True) -> list[list[int]]:
    model, processor = loaded
    return blip.question_ids(
        processor.tokenizer,
        questions,
        enc_token=enc_token,
        max_tokens=35,
        text_config=model.config.text_config,
    )


def test_question_ids_start_with_enc_only_when_asked(loaded) -> None:
    tokenizer = loaded[1].tokenizer
    with_enc = _question_ids(loaded, ["what is it?"])
    plain = _question_ids(loaded, ["what is it?"], enc_token=False)
    assert with_enc[0][0] == tokenizer.convert_tokens_to_ids(blip.ENC_TOKEN)
    assert with_enc[0][0] == loaded[0].config.text_config.bos_token_id + 1
    assert plain[0][0] == tokenizer.cls_token_id
    assert with_enc[0][1:] == plain[0][1:]
    long = _question_ids(loaded, ["what " * 50])
    assert len(long[0]) == 35


@pytest.fixture(scope="module")
def hub_layout_vqa(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hub port's layout: a plain BERT tokenizer (no [DEC]/[ENC]), the model 2 rows more.

    The tiny model keeps BLIP's vocabulary ([DEC] = bos and [ENC] as its last two rows);
    its tokenizer is replaced by the same words without the two tokens.
    """
    folder = tmp_path_factory.mktemp("models") / "blip-vqa-hub-layout"
    words = demo_models.vocabulary(FG + BG)
    blip.tiny_vqa(folder, words, seed=0)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join([*blip.SPECIAL_WORDS, *words]) + "\n")
    blip.BertTokenizer(vocab=str(vocab), model_max_length=512).save_pretrained(folder)
    vocab.unlink()
    return folder


def test_hub_tokenizer_gets_enc_after_bos_in_the_qape_path(
    shard_data, hub_layout_vqa: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without [ENC] in the tokenizer the question encoder still receives [ENC] = bos + 1 first."""
    seen: list[torch.Tensor] = []
    layout: dict[str, int] = {}
    load = blip.load_vqa

    def load_with_hook(name: str, device: torch.device):
        model, processor = load(name, device)
        layout.update(tokens=len(processor.tokenizer), bos=model.config.text_config.bos_token_id)
        layout.update(rows=model.config.text_config.vocab_size)
        model.text_encoder.embeddings.register_forward_pre_hook(
            lambda module, args, kwargs: seen.append(kwargs["input_ids"]), with_kwargs=True
        )
        return model, processor

    monkeypatch.setattr(blip, "load_vqa", load_with_hook)
    summary = _run_shard(shard_data, hub_layout_vqa, tmp_path / "out", max_length=3)
    assert summary["answered"] > 0 and seen
    assert layout["rows"] == layout["tokens"] + 2 and layout["bos"] == layout["tokens"]
    assert {int(i) for ids in seen for i in ids[:, 0]} == {layout["bos"] + 1}


def test_enc_that_cannot_be_placed_is_refused(hub_layout_vqa: Path) -> None:
    model, processor = blip.load_vqa(str(hub_layout_vqa), torch.device("cpu"))
    tokens = len(processor.tokenizer)
    text = model.config.text_config.to_dict()
    for change in ({"bos_token_id": tokens - 1}, {"vocab_size": tokens + 3}):
        config = blip.BlipTextConfig(**{**text, **change})
        with pytest.raises(InputError, match=rf"{tokens} tokens \(\[ENC\] = None\), the model"):
            blip.question_ids(
                processor.tokenizer, ["what?"], enc_token=True, max_tokens=35, text_config=config
            )
    config = blip.BlipTextConfig(**{**text, "bos_token_id": tokens - 1})
    plain = blip.question_ids(
        processor.tokenizer, ["what?"], enc_token=False, max_tokens=35, text_config=config
    )
    assert plain[0][0] == processor.tokenizer.cls_token_id


# transformers 4.15 `PreTrainedTokenizerBase.clean_up_tokenization`, which BLIP's decode ran
CLEAN_UP_4_15 = (
    (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
    (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
)  # fmt: skip


def test_decode_cleans_up_spaces_as_blip_did() -> None:
    """BLIP ran transformers 4.15, which cleaned up tokenization spaces by default; v5 does not."""
    tokenizer = blip.word_tokenizer(
        ["man", "s", "dog", "don", "t", "i", "m", "a", "b", "##s", *"'.?,!"]
    )
    texts = ["man's dog ?", "don't", "i'm a , b !", "a ' b", "dogs '"]
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert tokenizer.batch_decode(ids[:1]) == ["man ' s dog?"]  # v5 unasked
    expected = []
    for row in ids:
        text = " ".join(tokenizer.convert_ids_to_tokens(row)).replace(" ##", "")
        for before, after in CLEAN_UP_4_15:
            text = text.replace(before, after)
        expected.append(text)
    assert expected[0] == "man's dog?"
    assert blip.decode(tokenizer, ids) == expected
    framed = [tokenizer.bos_token_id, *ids[0], tokenizer.sep_token_id, tokenizer.pad_token_id]
    assert blip.decode(tokenizer, [framed]) == ["man's dog?"]


def test_lemmatizer_keeps_nltk_contract() -> None:
    lemma = qape.make_lemmatizer("lemminflect")
    assert lemma("dogs") == "dog"
    assert lemma("boxes") == "box"
    assert lemma("grass") == "grass"
    assert lemma("two dogs") == "two dogs"  # a space: unchanged, as NLTK's WordNet lemmatiser
    assert lemma("") == ""


def test_wordnet_lemmatizer_needs_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No nltk: the message names nltk. With nltk (or a stand-in): the folder by its path."""
    missing = tmp_path / "no-wordnet"
    if importlib.util.find_spec("nltk") is None:  # the venv as shipped: nltk is not a dependency
        with pytest.raises(
            InputError, match=r"qape\.lemmatizer 'wordnet' needs nltk, which is not"
        ):
            qape.make_lemmatizer("wordnet", missing)
        reader = types.ModuleType("nltk.corpus.reader.wordnet")
        reader.WordNetCorpusReader = object  # type: ignore[attr-defined]
        for name in ("nltk", "nltk.corpus", "nltk.corpus.reader"):
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
        monkeypatch.setitem(sys.modules, reader.__name__, reader)
    folder = rf"{re.escape(str(missing))}: WordNet folder \(qape\.wordnet_dir\) not found"
    with pytest.raises(InputError, match=folder):
        qape.make_lemmatizer("wordnet", missing)


def test_missing_model_folder_names_it(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=str(tmp_path / "nope")):
        blip.load_vqa(str(tmp_path / "nope"), torch.device("cpu"))


def test_model_folder_lacking_weights_names_file(tiny_vqa: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_vqa.iterdir():
        if f.name != "model.safetensors":
            (broken / f.name).write_bytes(f.read_bytes())
    with pytest.raises(InputError, match=rf"{broken}.*model\.safetensors"):
        blip.load_vqa(str(broken), torch.device("cpu"))


def test_uncached_hub_id_fails_fast_with_message() -> None:
    with pytest.raises(InputError, match="not in the local Hugging Face cache"):
        blip.load_vqa("qaclims-test/no-such-model", torch.device("cpu"))


def test_shard_end_to_end(shard_data, tiny_vqa: Path, tmp_path: Path) -> None:
    summary = _run_shard(shard_data, tiny_vqa, tmp_path / "out", num_beams=3, max_length=4)
    fg = read_table(tmp_path / "out/fg.parquet", QAPE_SCHEMA)
    bg = read_table(tmp_path / "out/bg.parquet", QAPE_SCHEMA)
    assert summary["images"] == 3
    assert fg.num_rows == summary["pairs"] * len(FG) > 0
    assert bg.num_rows == summary["pairs"] * len(BG)
    assert fg.schema.metadata[b"qaclims.vqa_model"] == str(tiny_vqa).encode()
    rows = bg.to_pylist()
    assert {r["question_id"] for r in rows} == set(range(len(BG)))
    assert all(r["question"] == BG[r["question_id"]].format(r["class_name"]) for r in rows)
    assert all(r["lemma"] == qape.make_lemmatizer("lemminflect")(r["answer"]) for r in rows)
    assert len({r["answer"] for r in rows}) > 1
    assert summary["answered"] == summary["questions"] and summary["reused"] == 0
    # larger images than the model's: interpolated position encoding, same row layout
    big = _run_shard(shard_data, tiny_vqa, tmp_path / "big", image_size=128, max_length=3)
    assert big["questions"] == summary["questions"]


def test_killed_shard_resumes_to_the_same_files(
    shard_data, tiny_vqa: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean = _run_shard(shard_data, tiny_vqa, tmp_path / "clean", chunk_images=1, max_length=4)
    add = AnswerStore.add
    calls = []

    def add_then_die(self, answers):
        if calls:
            raise KeyboardInterrupt
        calls.append(len(answers))
        return add(self, answers)

    monkeypatch.setattr(AnswerStore, "add", add_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run_shard(shard_data, tiny_vqa, tmp_path / "killed", chunk_images=1, max_length=4)
    assert not (tmp_path / "killed/fg.parquet").exists()
    monkeypatch.setattr(AnswerStore, "add", add)
    summary = _run_shard(shard_data, tiny_vqa, tmp_path / "killed", chunk_images=1, max_length=4)
    assert summary["reused"] == calls[0] > 0  # the first image's answers were kept
    assert summary["answered"] == clean["questions"] - calls[0]
    for kind in ("fg", "bg"):
        a = read_table(tmp_path / f"clean/{kind}.parquet", QAPE_SCHEMA)
        b = read_table(tmp_path / f"killed/{kind}.parquet", QAPE_SCHEMA)
        assert a.equals(b)


def test_answers_do_not_depend_on_batching_or_workers(shard_data, tiny_vqa, tmp_path) -> None:
    one = _run_shard(shard_data, tiny_vqa, tmp_path / "a", batch_images=1, workers=0)
    many = _run_shard(shard_data, tiny_vqa, tmp_path / "b", batch_images=3, workers=2)
    assert one["answered"] == many["answered"] == one["questions"]  # separate stores
    for kind in ("fg", "bg"):
        a = read_table(tmp_path / f"a/{kind}.parquet", QAPE_SCHEMA)
        b = read_table(tmp_path / f"b/{kind}.parquet", QAPE_SCHEMA)
        assert a.equals(b)


def test_store_reuses_answers_across_shard_layouts_but_not_settings(
    shard_data, tiny_vqa: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    first = _run_shard(shard_data, tiny_vqa, tmp_path / "one", store=store, max_length=4)
    again = [
        _run_shard(
            shard_data,
            tiny_vqa,
            tmp_path / f"two-{k}",
            store=store,
            max_length=4,
            shard=k,
            shards=2,
        )
        for k in (0, 1)
    ]
    assert sum(s["answered"] for s in again) == 0
    assert sum(s["reused"] for s in again) == first["questions"]
    other = _run_shard(shard_data, tiny_vqa, tmp_path / "other", store=store, max_length=3)
    assert other["answered"] == first["questions"]  # another decoding: nothing reused


def test_corrupt_image_names_the_image(shard_data, tiny_vqa: Path, tmp_path: Path) -> None:
    bad = Path(read_manifest(shard_data["manifest"], split="train_aug").column("path")[1].as_py())
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(InputError, match=str(bad)):
        _run_shard(shard_data, tiny_vqa, tmp_path / "out", workers=1)


def test_bad_question_template_is_rejected(shard_data, tiny_vqa: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="exactly once"):
        qape.run(
            shard_data["manifest"],
            shard_data["classes"],
            tmp_path / "fg.parquet",
            tmp_path / "bg.parquet",
            shard=0,
            shards=1,
            split="train_aug",
            model=str(tiny_vqa),
            fg_questions=["what is this?"],
            bg_questions=BG,
            image_size=96,
        )


def test_demo_models_are_deterministic(tmp_path: Path) -> None:
    for name in ("a", "b"):
        demo_models.run(
            tmp_path / name / "vqa",
            tmp_path / name / "clip-tiny.safetensors",
            tmp_path / name / "clip-tiny.json",
            texts=FG + BG,
            seed=0,
        )
    for rel in ("vqa/model.safetensors", "vqa/tokenizer.json", "clip-tiny.safetensors"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    _, processor = blip.load_vqa(str(tmp_path / "a/vqa"), torch.device("cpu"))
    tokens = processor.tokenizer.tokenize(" ".join(q.format("crate") for q in FG + BG))
    assert processor.tokenizer.unk_token not in tokens


def test_cpu_device_runs_full_precision() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    device = devices.pick_device()
    assert device.type == "cpu"
    with devices.autocast(device):
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_checkpoint_generation_settings_do_not_change_the_decoding(loaded) -> None:
    """BLIP's decoding is the paper's (beam 3, length 10, no penalties), whatever the checkpoint."""
    model = loaded[0]
    questions = [q.format("ring") for q in FG + BG]
    ids = _question_ids(loaded, questions)
    pixels = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    decoding = blip.Decoding(num_beams=3, max_length=10, min_length=1)
    plain = blip.answer_ids(model, pixels, [ids], decoding)
    config = model.text_decoder.generation_config
    for name, value in {
        "repetition_penalty": 50.0, "no_repeat_ngram_size": 1, "length_penalty": -10.0,
        "early_stopping": True, "max_new_tokens": 2,
    }.items():  # fmt: skip
        setattr(config, name, value)
    try:
        assert blip.answer_ids(model, pixels, [ids], decoding) == plain
    finally:
        model.text_decoder.generation_config = type(config)()


def test_missing_relative_model_folder_is_named_as_a_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local_models").mkdir()
    with pytest.raises(InputError, match=r"local_models/vqa: VQA model folder .* does not exist"):
        blip.load_vqa("local_models/vqa", torch.device("cpu"))
