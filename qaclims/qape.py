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
import hashlib
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from qaclims.devices import autocast, pick_device
from qaclims.errors import InputError
from qaclims.images import read_rgb
from qaclims.models import blip
from qaclims.tables import QAPE_SCHEMA, read_class_names, read_manifest, read_table, write_table

log = logging.getLogger(__name__)

LEMMATIZERS = ("lemminflect", "wordnet")
MODEL_KEY = "qaclims.vqa_model"


def make_lemmatizer(kind: str, wordnet_dir: Path | None = None) -> Callable[[str], str]:
    """Noun lemma of a whole answer with NLTK's contract (a multi-word answer is unchanged).

    `wordnet` is NLTK's WordNetLemmatizer on a local WordNet 3.0 folder (the reference);
    `lemminflect` is the installable stand-in (ALGORITHM §1).
    """
    if kind == "lemminflect":
        import lemminflect

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


def _batches(chunks: list[list[int]], size: int) -> Iterator[list[int]]:
    for chunk in chunks:
        for i in range(0, len(chunk), size):
            yield chunk[i : i + size]


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
    partial_dir: Path | None = None,
) -> dict[str, float]:
    """Write the FG and BG answer tables of one shard; returns counts and seconds."""
    for template in (*fg_questions, *bg_questions):
        if template.count("{}") != 1:
            raise InputError(f"question template '{template}' must contain '{{}}' exactly once")
    lemma_of = make_lemmatizer(lemmatizer, wordnet_dir)
    names = read_class_names(classes)
    rows = read_manifest(manifest, split=split, shard=shard, columns=["image_id", "path", "labels"])
    rows = rows.to_pylist()
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
    names_of = [f"chunk-{i:05d}-{_chunk_key(settings, c)}" for i, c in enumerate(chunks)]
    pending = [
        i
        for i, name in enumerate(names_of)
        if not all((partial_dir / f"{name}.{kind}.parquet").is_file() for kind in ("fg", "bg"))
    ]
    log.info(
        "qape shard %d: %d images in %d chunks, %d to do; model %s",
        shard,
        len(rows),
        len(chunks),
        len(pending),
        model,
    )
    start = time.perf_counter()
    if pending:
        _answer_chunks(
            [chunks[i] for i in pending],
            [names_of[i] for i in pending],
            partial_dir,
            model=model,
            names=names,
            fg_questions=fg_questions,
            bg_questions=bg_questions,
            image_size=image_size,
            decoding=decoding,
            enc_token=enc_token,
            max_question_tokens=max_question_tokens,
            lemma_of=lemma_of,
            batch_images=batch_images,
            workers=workers,
            done=len(rows) - sum(len(chunks[i]) for i in pending),
            total=len(rows),
        )
    metadata = {MODEL_KEY: model}
    for kind, out in (("fg", fg_out), ("bg", bg_out)):
        parts = [read_table(partial_dir / f"{n}.{kind}.parquet", QAPE_SCHEMA) for n in names_of]
        table = pa.concat_tables(parts) if parts else QAPE_SCHEMA.empty_table()
        write_table(table, out, QAPE_SCHEMA, metadata)
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


def _answer_chunks(
    chunks: list[list[dict]],
    chunk_names: list[str],
    partial_dir: Path,
    *,
    model: str,
    names: list[str],
    fg_questions: list[str],
    bg_questions: list[str],
    image_size: int,
    decoding: blip.Decoding,
    enc_token: bool,
    max_question_tokens: int,
    lemma_of: Callable[[str], str],
    batch_images: int,
    workers: int,
    done: int,
    total: int,
) -> None:
    """Answer every question of the given chunks, saving each chunk as soon as it is done."""
    device = pick_device()
    vqa, processor = blip.load_vqa(model, device)
    log.info("VQA model %s on %s, decoding %s, %d px", model, device, decoding, image_size)
    tokenizer = processor.tokenizer
    templates = [*fg_questions, *bg_questions]
    texts = {c: [t.format(name) for t in templates] for c, name in enumerate(names)}
    ids = {
        c: blip.question_ids(tokenizer, qs, enc_token=enc_token, max_tokens=max_question_tokens)
        for c, qs in texts.items()
    }
    flat = [row for chunk in chunks for row in chunk]
    offsets, chunk_of = [], []
    for k, chunk in enumerate(chunks):
        offsets.append(len(chunk_of))
        chunk_of += [k] * len(chunk)
    image_processor = processor.image_processor
    dataset = _Images(
        [r["path"] for r in flat],
        image_size,
        tuple(image_processor.image_mean),
        tuple(image_processor.image_std),
    )
    batches = list(
        _batches(
            [list(range(o, o + len(c))) for o, c in zip(offsets, chunks, strict=True)], batch_images
        )
    )
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )
    answers: dict[int, list[list[int]]] = {}
    lemmas: dict[str, str] = {}
    n_fg = len(fg_questions)
    with tqdm(total=total, initial=done, mininterval=30, file=sys.stderr, unit="img") as bar:
        for items in loader:
            errors = [err for _, _, err in items if err is not None]
            if errors:
                raise InputError(errors[0])
            pixels = torch.stack([x for _, x, _ in items]).to(device, non_blocking=True)
            questions = [[q for c in flat[i]["labels"] for q in ids[c]] for i, _, _ in items]
            with autocast(device):
                out = blip.answer_ids(vqa, pixels, questions, decoding)
            for (i, _, _), per_image in zip(items, out, strict=True):
                answers[i] = per_image
            bar.update(len(items))
            k = chunk_of[items[-1][0]]
            if all(i in answers for i in range(offsets[k], offsets[k] + len(chunks[k]))):
                _save_chunk(
                    chunks[k],
                    offsets[k],
                    answers,
                    tokenizer,
                    texts,
                    n_fg,
                    lemma_of,
                    lemmas,
                    partial_dir / chunk_names[k],
                    names,
                )
                for i in range(offsets[k], offsets[k] + len(chunks[k])):
                    del answers[i]


def _save_chunk(
    chunk: list[dict],
    offset: int,
    answers: dict[int, list[list[int]]],
    tokenizer,
    texts: dict[int, list[str]],
    n_fg: int,
    lemma_of: Callable[[str], str],
    lemmas: dict[str, str],
    stem: Path,
    names: list[str],
) -> None:
    """Decode, lemmatise and write one chunk's FG and BG rows (BG first: FG marks done)."""
    out: dict[str, list[dict]] = {"fg": [], "bg": []}
    for j, row in enumerate(chunk):
        decoded = iter(blip.decode(tokenizer, answers[offset + j]))
        for c in row["labels"]:
            for q, question in enumerate(texts[c]):
                answer = next(decoded)
                if answer not in lemmas:
                    lemmas[answer] = lemma_of(answer)
                kind, qid = ("fg", q) if q < n_fg else ("bg", q - n_fg)
                out[kind].append(
                    {
                        "image_id": row["image_id"],
                        "class_id": c,
                        "class_name": names[c],
                        "question_id": qid,
                        "question": question,
                        "answer": answer,
                        "lemma": lemmas[answer],
                    }
                )
    for kind in ("bg", "fg"):
        table = pa.Table.from_pylist(out[kind], schema=QAPE_SCHEMA)
        write_table(table, stem.with_name(f"{stem.name}.{kind}.parquet"), QAPE_SCHEMA)


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
        partial_dir=args.partial_dir,
    )
