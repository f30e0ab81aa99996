"""VQA answers kept by content: (image bytes, question) -> answer, under one key per setup.

The key hashes everything else that shapes an answer: the model's fingerprint (weights,
tokenizer, processor), the answering settings, the code that answers
(`qaclims/vqa_answers.py` and what it imports) and the versions of torch, transformers
and pillow. Image ids, paths, shards, batch sizes and chunking are not in it, so a new
shard layout or new images compute only the pairs never answered before, and a changed
model, setting, answering code or library computes everything again.

Layout: `<root>/<key>/part-<digest>.parquet`, each part the answers of one finished chunk,
written atomically. Concurrent shard jobs only ever add parts under distinct names, so
they share one store safely; a killed job keeps the parts it finished.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from qaclims.fingerprint import sha256_file
from qaclims.tables import read_table, write_table

STORE_SCHEMA = pa.schema(
    [
        pa.field("image_sha", pa.string(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("answer", pa.string(), nullable=False),
    ]
)

Pair = tuple[str, str]  # (image_sha, question)


def image_sha(path: str | Path) -> str:
    """SHA-256 of an image file's bytes: the image's identity in the store."""
    return sha256_file(path)


def store_key(setup: dict[str, Any]) -> str:
    """The folder name of a setup: a hash of its canonical JSON."""
    text = json.dumps(setup, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class AnswerStore:
    """The answers of one setup (`key`) under `root`."""

    def __init__(self, root: Path, key: str) -> None:
        self.folder = Path(root) / key

    def parts(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.parquet"))

    def lookup(self, images: Iterable[str]) -> dict[Pair, str]:
        """Every stored answer about the given image digests."""
        parts = self.parts()
        wanted = sorted(set(images))
        if not parts or not wanted:
            return {}
        for part in parts:  # a schema check per part: a foreign file fails loudly
            read_table(part, STORE_SCHEMA, columns=[])
        table = ds.dataset([str(p) for p in parts], format="parquet", schema=STORE_SCHEMA)
        found = table.to_table(filter=pc.field("image_sha").isin(wanted))
        return {
            (s, q): a
            for s, q, a in zip(
                found.column("image_sha").to_pylist(),
                found.column("question").to_pylist(),
                found.column("answer").to_pylist(),
                strict=True,
            )
        }

    def add(self, answers: dict[Pair, str]) -> Path | None:
        """Store new answers as one part named by its content; returns the part."""
        if not answers:
            return None
        pairs = sorted(answers)
        table = pa.table(
            {
                "image_sha": [s for s, _ in pairs],
                "question": [q for _, q in pairs],
                "answer": [answers[p] for p in pairs],
            },
            schema=STORE_SCHEMA,
        )
        digest = hashlib.sha256(json.dumps([[*p, answers[p]] for p in pairs]).encode())
        part = self.folder / f"part-{digest.hexdigest()[:24]}.parquet"
        write_table(table, part, STORE_SCHEMA)
        return part
