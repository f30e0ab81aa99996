"""QAPE VQA answers of one shard: every FG and BG question about every present class.

ALGORITHM §1. In: the manifest (train split, one shard), classes.parquet and a VQA model
(BLIP, or an instruction VLM: `qaclims/vqa_backends.py`). Out: qape/fg/shard-K.parquet and
qape/bg/shard-K.parquet (QAPE_SCHEMA, one row per image, class and question, the answer
(an instruction VLM's reply shortened, `qaclims/short_answer.py`) and its noun lemma; the
model id in the file metadata).

Answers are reused per (image content, question) from the answer store
(`qaclims/answer_store.py`), keyed by the model's fingerprint, the answering settings and
code, and library versions, so new images or another shard layout ask only what was never
asked, and a killed job keeps its finished chunks. The log says how many (image, question)
pairs were answered and how many reused.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from qaclims import fingerprint, vqa_answers, vqa_backends
from qaclims.answer_store import AnswerStore, image_sha, store_key
from qaclims.devices import PRECISIONS, limit_cpu_threads, pick_device
from qaclims.digest import code_digest, library_versions
from qaclims.errors import InputError
from qaclims.models import blip
from qaclims.tables import QAPE_SCHEMA, read_class_names, read_manifest, write_table

log = logging.getLogger(__name__)

LEMMATIZERS = ("lemminflect", "wordnet")
KINDS = ("fg", "bg")
MODEL_KEY = "qaclims.vqa_model"
ANSWERING_CODE = "qaclims.vqa_answers"


def make_lemmatizer(kind: str, wordnet_dir: Path | None = None) -> Callable[[str], str]:
    """Noun lemma of a whole answer with NLTK's contract (a multi-word answer is unchanged).

    `wordnet` is NLTK's WordNetLemmatizer on a local WordNet 3.0 folder (the reference);
    `lemminflect` is the installable stand-in (ALGORITHM §1).
    """
    if kind == "lemminflect":
        import lemminflect

        @functools.lru_cache(maxsize=1 << 16)
        def lemma(answer: str) -> str:
            if not answer or " " in answer:
                return answer
            found = lemminflect.getLemma(answer, upos="NOUN")
            return found[0] if found else answer

        return lemma
    if kind == "wordnet":
        try:
            from nltk.corpus.reader.wordnet import WordNetCorpusReader
        except ImportError as err:
            raise InputError(
                "qape.lemmatizer 'wordnet' needs nltk, which is not installed"
            ) from err
        if wordnet_dir is None or not wordnet_dir.is_dir():
            raise InputError(f"{wordnet_dir}: WordNet folder (qape.wordnet_dir) not found")
        reader = WordNetCorpusReader(str(wordnet_dir), None)

        def wordnet_lemma(answer: str) -> str:
            lemmas = reader._morphy(answer, "n")
            return min(lemmas, key=len) if lemmas else answer

        return wordnet_lemma
    raise InputError(f"lemmatizer '{kind}' is not one of {LEMMATIZERS}")


def answer_setup(model: str, answering: vqa_answers.Answering) -> dict:
    """What the answer store is keyed by: model fingerprint, the settings its backend
    uses (`vqa_backends.setup`), code, libraries."""
    backend = vqa_backends.select(model, answering.backend)
    return {
        "model": fingerprint.vqa_identity(model, fingerprint.DigestCache.from_env()),
        **vqa_backends.setup(backend, answering),
        "code": code_digest(ANSWERING_CODE, entry=False),
        "libraries": library_versions(ANSWERING_CODE),
    }


def _image_shas(rows: list[dict]) -> list[str]:
    shas = []
    for row in rows:
        try:
            shas.append(image_sha(row["path"]))
        except OSError as err:
            raise InputError(f"{row['path']}: cannot read image ({err.strerror})") from err
    return shas


def run(
    manifest: Path,
    classes: Path,
    fg_out: Path,
    bg_out: Path,
    *,
    shard: int,
    shards: int,
    split: str,
    model: str,
    fg_questions: list[str],
    bg_questions: list[str],
    image_size: int,
    num_beams: int = 3,
    max_length: int = 10,
    min_length: int = 1,
    enc_token: bool = True,
    max_question_tokens: int = 35,
    precision: str = "fp32",
    backend: str = "auto",
    prompt: str = vqa_backends.DEFAULT_PROMPT,
    max_new_tokens: int = 10,
    answer_words: int = 3,
    lemmatizer: str = "lemminflect",
    wordnet_dir: Path | None = None,
    batch_images: int = 8,
    chunk_images: int = 256,
    workers: int = 2,
    threads: int | None = None,
    store: Path | None = None,
) -> dict[str, float]:
    """Write the FG and BG answer tables of one shard; returns counts and seconds.

    Answers already in the `store` (default: `.answers` beside `fg_out`) are reused;
    only the (image, question) pairs it lacks are asked, and stored chunk by chunk.
    """
    templates = [*fg_questions, *bg_questions]
    for template in templates:
        if template.count("{}") != 1:
            raise InputError(f"question template '{template}' must contain '{{}}' exactly once")
    lemma_of = make_lemmatizer(lemmatizer, wordnet_dir)
    # the job's cores are shared between the decoding workers and the model
    limit_cpu_threads(None if threads is None else max(1, threads - workers))
    names = read_class_names(classes)
    rows = read_manifest(
        manifest, split=split, shard=shard, shards=shards, columns=["image_id", "path", "labels"]
    )
    rows = [r for r in rows.to_pylist() if r["labels"]]  # an image with no class asks nothing
    for row in rows:
        bad = [c for c in row["labels"] if not 0 <= c < len(names)]
        if bad:
            raise InputError(
                f"{manifest}: image {row['image_id']} has class ids {bad} "
                f"outside {classes} (0..{len(names) - 1})"
            )
    answering = vqa_answers.Answering(
        image_size=image_size,
        decoding=blip.Decoding(num_beams=num_beams, max_length=max_length, min_length=min_length),
        enc_token=enc_token,
        max_question_tokens=max_question_tokens,
        precision=precision,
        backend=backend,
        prompting=vqa_backends.Prompting(prompt, max_new_tokens, answer_words),
    )
    start = time.perf_counter()
    answers = AnswerStore(
        store or fg_out.parent / ".answers", store_key(answer_setup(model, answering))
    )
    shas = _image_shas(rows)
    asked = [
        list(dict.fromkeys(t.format(names[c]) for c in row["labels"] for t in templates))
        for row in rows
    ]
    known = answers.lookup(shas)
    todo = [
        (i, missing)
        for i, (sha, questions) in enumerate(zip(shas, asked, strict=True))
        if (missing := [q for q in questions if (sha, q) not in known])
    ]
    to_answer = sum(len(m) for _, m in todo)
    reused = sum(len(q) for q in asked) - to_answer
    log.info(
        "qape shard %d: %d images, %d (image, question) pairs: %d stored, %d to answer (%s)",
        shard, len(rows), reused + to_answer, reused, to_answer, answers.folder,
    )  # fmt: skip
    if todo:
        device = pick_device()
        vqa = vqa_backends.load(model, device, answering)
        log.info("VQA (%s) on %s, %s, %d workers", vqa.name, device, answering, workers)
        with tqdm(total=len(todo), mininterval=30, file=sys.stderr, unit="img") as bar:
            for c in range(0, len(todo), chunk_images):
                chunk = todo[c : c + chunk_images]
                requests = [(rows[i]["path"], missing) for i, missing in chunk]
                replies = vqa_answers.ask(
                    vqa,
                    requests,
                    precision=precision,
                    batch_images=batch_images,
                    workers=workers,
                    progress=bar.update,
                )
                new = {
                    (shas[i], q): a
                    for (i, missing), per_image in zip(chunk, replies, strict=True)
                    for q, a in zip(missing, per_image, strict=True)
                }
                answers.add(new)
                known.update(new)
    _write_tables(
        rows, known, shas, names, fg_questions, bg_questions, lemma_of, fg_out, bg_out, model
    )
    summary = {
        "images": len(rows),
        "pairs": sum(len(r["labels"]) for r in rows),
        "questions": reused + to_answer,
        "answered": to_answer,
        "reused": reused,
        "seconds": round(time.perf_counter() - start, 2),
    }
    log.info(
        "qape shard %d done: %d (image, question) pairs answered, %d reused; %s",
        shard, to_answer, reused, summary,
    )  # fmt: skip
    return summary


def _write_tables(
    rows: list[dict],
    known: dict[tuple[str, str], str],
    shas: list[str],
    names: list[str],
    fg_questions: list[str],
    bg_questions: list[str],
    lemma_of: Callable[[str], str],
    fg_out: Path,
    bg_out: Path,
    model: str,
) -> None:
    """One row per (image, class, question) of each kind, BG first (FG completes the pair)."""
    out: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    for row, sha in zip(rows, shas, strict=True):
        for c in row["labels"]:
            for kind, templates in (("fg", fg_questions), ("bg", bg_questions)):
                for qid, template in enumerate(templates):
                    question = template.format(names[c])
                    answer = known[(sha, question)]
                    out[kind].append(
                        {
                            "image_id": row["image_id"],
                            "class_id": c,
                            "class_name": names[c],
                            "question_id": qid,
                            "question": question,
                            "answer": answer,
                            "lemma": lemma_of(answer),
                        }
                    )
    for kind, path in (("bg", bg_out), ("fg", fg_out)):
        table = pa.Table.from_pylist(out[kind], schema=QAPE_SCHEMA)
        write_table(table, path, QAPE_SCHEMA, {MODEL_KEY: model})


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--classes", type=Path, required=True)
    p.add_argument("--fg-out", type=Path, required=True, help="qape/fg/shard-K.parquet to write")
    p.add_argument("--bg-out", type=Path, required=True, help="qape/bg/shard-K.parquet to write")
    p.add_argument("--shard", type=int, required=True)
    p.add_argument("--shards", type=int, required=True, help="dataset.shards")
    p.add_argument("--split", required=True, help="dataset.train_split")
    p.add_argument("--model", required=True, help="models.vqa: hub id or local folder")
    p.add_argument("--fg-questions", nargs="+", required=True, help="templates, {} = class")
    p.add_argument("--bg-questions", nargs="+", required=True, help="templates, {} = class")
    p.add_argument("--image-size", type=int, required=True)
    p.add_argument("--num-beams", type=int, default=3)
    p.add_argument("--max-length", type=int, default=10)
    p.add_argument("--min-length", type=int, default=1)
    p.add_argument("--enc-token", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--max-question-tokens", type=int, default=35)
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="bf16: CUDA autocast")
    p.add_argument("--backend", choices=vqa_backends.CHOICES, default="auto", help="qape.backend")
    p.add_argument("--prompt", default=vqa_backends.DEFAULT_PROMPT, help="instruction VLMs")
    p.add_argument("--max-new-tokens", type=int, default=10, help="instruction VLMs")
    p.add_argument("--answer-words", type=int, default=3, help="instruction VLMs")
    p.add_argument("--lemmatizer", choices=LEMMATIZERS, default="lemminflect")
    p.add_argument("--wordnet-dir", type=Path, default=None)
    p.add_argument("--batch-images", type=int, default=8)
    p.add_argument("--chunk-images", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="the job's cores (workers included)")
    p.add_argument("--store", type=Path, default=None, help="answer store folder (reuse)")


def main(args: argparse.Namespace) -> None:
    run(
        args.manifest,
        args.classes,
        args.fg_out,
        args.bg_out,
        shard=args.shard,
        shards=args.shards,
        split=args.split,
        model=args.model,
        fg_questions=args.fg_questions,
        bg_questions=args.bg_questions,
        image_size=args.image_size,
        num_beams=args.num_beams,
        max_length=args.max_length,
        min_length=args.min_length,
        enc_token=args.enc_token,
        max_question_tokens=args.max_question_tokens,
        precision=args.precision,
        backend=args.backend,
        prompt=args.prompt,
        max_new_tokens=args.max_new_tokens,
        answer_words=args.answer_words,
        lemmatizer=args.lemmatizer,
        wordnet_dir=args.wordnet_dir,
        batch_images=args.batch_images,
        chunk_images=args.chunk_images,
        workers=args.workers,
        threads=args.threads,
        store=args.store,
    )
