"""Answer corpus: merge the QAPE shards and apply the post-processing of ALGORITHM §1.

In: qape/fg/shard-*.parquet and qape/bg/shard-*.parquet. Out: corpus/fg.parquet
(CORPUS_FG_SCHEMA: one text per image, class and FG question) and corpus/bg.parquet
(CORPUS_BG_SCHEMA: the distinct BG texts of each image and class; an empty set is one row
with text null). Post-processing works on the lemmas, as the reference does.

Empty answers (the model emitted [SEP] first) are not passed on silently:
- FG: the text is the class name alone (the reference would produce " <class name>",
  a leading space that then gets encoded as a different text);
- BG: dropped like the answer equal to the class name: an empty string names no
  background, and a set left empty contributes to neither loss, as in the reference.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pyarrow as pa

from qaclims.errors import InputError
from qaclims.tables import (
    CORPUS_BG_SCHEMA,
    CORPUS_FG_SCHEMA,
    QAPE_SCHEMA,
    read_table,
    write_table,
)

log = logging.getLogger(__name__)

MODEL_KEY = "qaclims.vqa_model"
# ALGORITHM §1: the strings that count as naming the class in an FG answer (VOC; COCO
# uses the same table). A class not listed matches its own name only.
DEFAULT_SYNONYMS: dict[str, list[str]] = {
    "dining table": ["table", "dining table"],
    "tv monitor": ["monitor", "tv monitor"],
    "potted plant": ["plant", "potted plant"],
}


def fg_text(lemma: str, class_name: str, synonyms: dict[str, list[str]]) -> str:
    """The FG text of one answer: kept if it contains a name of the class, else suffixed."""
    if not lemma:
        return class_name
    names = synonyms.get(class_name, [class_name])
    if any(name in lemma for name in names):
        return lemma
    return f"{lemma} {class_name}"


def bg_texts(lemmas: list[str], class_name: str) -> list[str | None]:
    """Distinct BG answers in question order, minus the class name and empty answers.

    `[None]` when nothing is left: the pair still has its one row, with no text.
    """
    kept = list(dict.fromkeys(a for a in lemmas if a and a != class_name))
    return kept or [None]


def _merge(paths: list[Path]) -> tuple[pa.Table, str]:
    """All rows of the shards in (image, class, question) order and their common model."""
    if not paths:
        raise InputError("no QAPE shard files given")
    tables, models = [], set()
    for path in paths:
        table = read_table(path, QAPE_SCHEMA)
        meta = table.schema.metadata or {}
        models.add(meta.get(MODEL_KEY.encode(), b"").decode())
        tables.append(table)
    if len(models) != 1:
        raise InputError(f"QAPE shards were answered by different models: {sorted(models)}")
    table = pa.concat_tables(tables).sort_by(
        [("image_id", "ascending"), ("class_id", "ascending"), ("question_id", "ascending")]
    )
    return table, models.pop()


def run(
    fg_shards: list[Path],
    bg_shards: list[Path],
    fg_out: Path,
    bg_out: Path,
    *,
    synonyms: dict[str, list[str]] | None = None,
) -> dict[str, int]:
    """Write corpus/fg.parquet and corpus/bg.parquet; returns row and empty-answer counts."""
    synonyms = DEFAULT_SYNONYMS if synonyms is None else synonyms
    fg, fg_model = _merge(fg_shards)
    bg, bg_model = _merge(bg_shards)
    if fg_model != bg_model:
        raise InputError(f"FG answers come from '{fg_model}', BG answers from '{bg_model}'")
    fg_rows = fg.select(["image_id", "class_id", "class_name", "question_id", "lemma"]).to_pylist()
    texts = [fg_text(r["lemma"], r["class_name"], synonyms) for r in fg_rows]
    fg_table = pa.table(
        {
            "image_id": [r["image_id"] for r in fg_rows],
            "class_id": [r["class_id"] for r in fg_rows],
            "question_id": [r["question_id"] for r in fg_rows],
            "text": texts,
        }
    )
    grouped: dict[tuple[str, int], tuple[str, list[str]]] = {}
    for r in bg.select(["image_id", "class_id", "class_name", "lemma"]).to_pylist():
        key = (r["image_id"], r["class_id"])
        grouped.setdefault(key, (r["class_name"], []))[1].append(r["lemma"])
    bg_rows = [
        {"image_id": image_id, "class_id": class_id, "text": text}
        for (image_id, class_id), (name, lemmas) in grouped.items()
        for text in bg_texts(lemmas, name)
    ]
    bg_table = pa.Table.from_pylist(bg_rows, schema=CORPUS_BG_SCHEMA)
    metadata = {MODEL_KEY: fg_model}
    write_table(fg_table, fg_out, CORPUS_FG_SCHEMA, metadata)
    write_table(bg_table, bg_out, CORPUS_BG_SCHEMA, metadata)
    summary = {
        "fg_rows": fg_table.num_rows,
        "fg_empty_answers": sum(1 for r in fg_rows if not r["lemma"]),
        "bg_rows": bg_table.num_rows,
        "bg_pairs": len(grouped),
        "bg_empty_pairs": sum(1 for r in bg_rows if r["text"] is None),
    }
    log.info("corpus: %s", summary)
    return summary


def _synonym(value: str) -> tuple[str, list[str]]:
    name, sep, names = value.partition("=")
    if not sep or not name or not names:
        raise argparse.ArgumentTypeError(f"'{value}' is not CLASS=NAME[|NAME...]")
    return name, names.split("|")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fg-shards", type=Path, nargs="+", required=True)
    p.add_argument("--bg-shards", type=Path, nargs="+", required=True)
    p.add_argument("--fg-out", type=Path, required=True, help="corpus/fg.parquet to write")
    p.add_argument("--bg-out", type=Path, required=True, help="corpus/bg.parquet to write")
    p.add_argument(
        "--synonyms",
        type=_synonym,
        nargs="*",
        default=None,
        help="qape.synonyms as CLASS=NAME|NAME ... (default: ALGORITHM §1's table)",
    )


def main(args: argparse.Namespace) -> None:
    run(
        args.fg_shards,
        args.bg_shards,
        args.fg_out,
        args.bg_out,
        synonyms=None if args.synonyms is None else dict(args.synonyms),
    )
