"""QAPE VQA answers of one shard: every FG and BG question about every present class.

ALGORITHM §1. In: the manifest (train split, one shard), classes.parquet and a BLIP VQA
model. Out: qape/fg/shard-K.parquet and qape/bg/shard-K.parquet (QAPE_SCHEMA, one row
per image, class and question, raw answer and its noun lemma; the model id in the file
metadata). Each image is encoded once for all its questions (models/blip.py).

Resume: images are taken in fixed chunks (sorted image ids). Each finished chunk is kept
in a partial folder under a name that hashes the settings and the chunk's images, so a
rerun after a kill redoes only the unfinished chunks and writes the same files.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from qaclims.devices import autocast, limit_cpu_threads, pick_device
from qaclims.errors import InputError
from qaclims.images import read_rgb
from qaclims.models import blip
from qaclims.tables import QAPE_SCHEMA, read_class_names, read_manifest, read_table, write_table

log = logging.getLogger(__name__)

LEMMATIZERS = ("lemminflect", "wordnet")
KINDS = ("fg", "bg")
MODEL_KEY = "qaclims.vqa_model"


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


class _Images(Dataset):
    """Decoded, resized, normalised images; a bad file comes back as its error message."""

    def __init__(self, paths: list[str], size: int, mean: tuple, std: tuple) -> None:
        self.paths, self.size, self.mean, self.std = paths, size, mean, std

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            image = Image.fromarray(read_rgb(self.paths[i]))
        except InputError as err:
            return i, None, str(err)
        return i, blip.preprocess(image, self.size, self.mean, self.std), None


def _collate(items: list) -> list:
    return items


def _chunk_key(settings: dict, rows: list[dict]) -> str:
    payload = json.dumps([settings, [(r["image_id"], r["path"], r["labels"]) for r in rows]])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def run(
    manifest: Path,
    classes: Path,
    fg_out: Path,
    bg_out: Path,
    *,
    shard: int,
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
    lemmatizer: str = "lemminflect",
    wordnet_dir: Path | None = None,
    batch_images: int = 8,
    chunk_images: int = 256,
    workers: int = 2,
    threads: int | None = None,
    partial_dir: Path | None = None,
) -> dict[str, float]:
    """Write the FG and BG answer tables of one shard; returns counts and seconds."""
    for template in (*fg_questions, *bg_questions):
        if template.count("{}") != 1:
            raise InputError(f"question template '{template}' must contain '{{}}' exactly once")
    lemma_of = make_lemmatizer(lemmatizer, wordnet_dir)
    # the job's cores are shared between the decoding workers and the model
    limit_cpu_threads(None if threads is None else max(1, threads - workers))
    names = read_class_names(classes)
    rows = read_manifest(manifest, split=split, shard=shard, columns=["image_id", "path", "labels"])
    rows = [r for r in rows.to_pylist() if r["labels"]]  # an image with no class asks nothing
    for row in rows:
        bad = [c for c in row["labels"] if not 0 <= c < len(names)]
        if bad:
            raise InputError(
                f"{manifest}: image {row['image_id']} has class ids {bad} "
                f"outside {classes} (0..{len(names) - 1})"
            )
    decoding = blip.Decoding(num_beams=num_beams, max_length=max_length, min_length=min_length)
    settings = {
        "model": model,
        "fg": fg_questions,
        "bg": bg_questions,
        "image_size": image_size,
        "decoding": [num_beams, max_length, min_length],
        "enc_token": enc_token,
        "max_question_tokens": max_question_tokens,
        "lemmatizer": lemmatizer,
        "wordnet_dir": str(wordnet_dir),
        "batch_images": batch_images,
        "classes": names,
    }
    partial_dir = partial_dir or fg_out.parent / f".{fg_out.stem}.partial"
    chunks = [rows[i : i + chunk_images] for i in range(0, len(rows), chunk_images)]
    stems = [partial_dir / f"chunk-{i:05d}-{_chunk_key(settings, c)}" for i, c in enumerate(chunks)]
    pending = [
        i for i, stem in enumerate(stems) if not all(_part(stem, k).is_file() for k in KINDS)
    ]
    log.info(
        "qape shard %d: %d images, %d chunks, %d to do", shard, len(rows), len(chunks), len(pending)
    )
    start = time.perf_counter()
    if pending:
        device = pick_device()
        vqa, processor = blip.load_vqa(model, device)
        log.info("VQA on %s, %s, %d px, %d workers", device, decoding, image_size, workers)
        templates = [*fg_questions, *bg_questions]
        texts = {c: [t.format(name) for t in templates] for c, name in enumerate(names)}
        questions = _Questions(
            texts=texts,
            ids={
                c: blip.question_ids(
                    processor.tokenizer, qs, enc_token=enc_token, max_tokens=max_question_tokens
                )
                for c, qs in texts.items()
            },
            n_fg=len(fg_questions),
        )
        done = len(rows) - sum(len(chunks[i]) for i in pending)
        with tqdm(
            total=len(rows), initial=done, mininterval=30, file=sys.stderr, unit="img"
        ) as bar:
            _answer_chunks(
                [chunks[i] for i in pending],
                [stems[i] for i in pending],
                vqa,
                processor,
                questions,
                names=names,
                image_size=image_size,
                decoding=decoding,
                lemma_of=lemma_of,
                batch_images=batch_images,
                workers=workers,
                bar=bar,
            )
    for kind, out in zip(KINDS, (fg_out, bg_out), strict=True):
        parts = [read_table(_part(stem, kind), QAPE_SCHEMA) for stem in stems]
        table = pa.concat_tables(parts) if parts else QAPE_SCHEMA.empty_table()
        write_table(table, out, QAPE_SCHEMA, {MODEL_KEY: model})
    shutil.rmtree(partial_dir, ignore_errors=True)
    pairs = sum(len(r["labels"]) for r in rows)
    summary = {
        "images": len(rows),
        "pairs": pairs,
        "questions": pairs * (len(fg_questions) + len(bg_questions)),
        "reused_chunks": len(chunks) - len(pending),
        "seconds": round(time.perf_counter() - start, 2),
    }
    log.info("qape shard %d done: %s", shard, summary)
    return summary


@dataclass(frozen=True)
class _Questions:
    """The questions about each class id, FG ones first, as text and as token ids."""

    texts: dict[int, list[str]]
    ids: dict[int, list[list[int]]]
    n_fg: int


def _part(stem: Path, kind: str) -> Path:
    return stem.with_name(f"{stem.name}.{kind}.parquet")


def _answer_chunks(
    chunks: list[list[dict]],
    stems: list[Path],
    vqa: blip.BlipForQuestionAnswering,
    processor: blip.BlipProcessor,
    questions: _Questions,
    *,
    names: list[str],
    image_size: int,
    decoding: blip.Decoding,
    lemma_of: Callable[[str], str],
    batch_images: int,
    workers: int,
    bar: tqdm,
) -> None:
    """Answer every question about the chunks' images, saving each chunk once it is done."""
    device = vqa.device
    flat = [row for chunk in chunks for row in chunk]
    plan = []  # (chunk, its image indices in this batch, last batch of the chunk)
    first = 0
    for k, chunk in enumerate(chunks):
        for b in range(0, len(chunk), batch_images):
            end = min(b + batch_images, len(chunk))
            plan.append((k, list(range(first + b, first + end)), end == len(chunk)))
        first += len(chunk)
    image_processor = processor.image_processor
    dataset = _Images(
        [r["path"] for r in flat],
        image_size,
        tuple(image_processor.image_mean),
        tuple(image_processor.image_std),
    )
    loader = DataLoader(
        dataset,
        batch_sampler=[indices for _, indices, _ in plan],
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )
    answers: list[list[str]] = []
    for (k, _, last), items in zip(plan, loader, strict=True):
        errors = [err for _, _, err in items if err is not None]
        if errors:
            raise InputError(errors[0])
        pixels = torch.stack([x for _, x, _ in items]).to(device, non_blocking=True)
        asked = [[q for c in flat[i]["labels"] for q in questions.ids[c]] for i, _, _ in items]
        with autocast(device):
            ids = blip.answer_ids(vqa, pixels, asked, decoding)
        answers += [blip.decode(processor.tokenizer, per_image) for per_image in ids]
        bar.update(len(items))
        if last:
            _save_chunk(chunks[k], answers, questions, names, lemma_of, stems[k])
            answers = []


def _save_chunk(
    chunk: list[dict],
    answers: list[list[str]],
    questions: _Questions,
    names: list[str],
    lemma_of: Callable[[str], str],
    stem: Path,
) -> None:
    """Write one chunk's FG and BG rows (BG first: the FG file marks the chunk done)."""
    out: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    for row, per_image in zip(chunk, answers, strict=True):
        asked = [(c, q, text) for c in row["labels"] for q, text in enumerate(questions.texts[c])]
        for (c, q, text), answer in zip(asked, per_image, strict=True):
            kind, qid = ("fg", q) if q < questions.n_fg else ("bg", q - questions.n_fg)
            out[kind].append(
                {
                    "image_id": row["image_id"],
                    "class_id": c,
                    "class_name": names[c],
                    "question_id": qid,
                    "question": text,
                    "answer": answer,
                    "lemma": lemma_of(answer),
                }
            )
    for kind in reversed(KINDS):
        write_table(
            pa.Table.from_pylist(out[kind], schema=QAPE_SCHEMA), _part(stem, kind), QAPE_SCHEMA
        )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--classes", type=Path, required=True)
    p.add_argument("--fg-out", type=Path, required=True, help="qape/fg/shard-K.parquet to write")
    p.add_argument("--bg-out", type=Path, required=True, help="qape/bg/shard-K.parquet to write")
    p.add_argument("--shard", type=int, required=True)
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
    p.add_argument("--lemmatizer", choices=LEMMATIZERS, default="lemminflect")
    p.add_argument("--wordnet-dir", type=Path, default=None)
    p.add_argument("--batch-images", type=int, default=8)
    p.add_argument("--chunk-images", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="the job's cores (workers included)")
    p.add_argument("--partial-dir", type=Path, default=None, help="finished chunks (resume)")


def main(args: argparse.Namespace) -> None:
    run(
        args.manifest,
        args.classes,
        args.fg_out,
        args.bg_out,
        shard=args.shard,
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
        lemmatizer=args.lemmatizer,
        wordnet_dir=args.wordnet_dir,
        batch_images=args.batch_images,
        chunk_images=args.chunk_images,
        workers=args.workers,
        threads=args.threads,
        partial_dir=args.partial_dir,
    )
