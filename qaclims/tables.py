"""Parquet artifacts: their explicit schemas, an atomic writer and a schema-checked reader.

Every tabular artifact of the workflow is declared here, so a reader always knows the
columns and types it gets and a file written by another version fails loudly.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from qaclims.atomic import atomic_path
from qaclims.errors import InputError

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("labels", pa.list_(pa.int16()), nullable=False),
        pa.field("label_source", pa.string(), nullable=False),
        pa.field("has_mask", pa.bool_(), nullable=False),
        pa.field("mask_path", pa.string(), nullable=True),
    ]
)

CLASSES_SCHEMA = pa.schema(
    [
        pa.field("class_id", pa.int16(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
    ]
)

# qape/{fg,bg}/shard-K.parquet: one row per (image, class, question); the VQA model id is
# stored in the file metadata under b"qaclims.vqa_model".
QAPE_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("class_id", pa.int16(), nullable=False),
        pa.field("class_name", pa.string(), nullable=False),
        pa.field("question_id", pa.int16(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("answer", pa.string(), nullable=False),
        pa.field("lemma", pa.string(), nullable=False),
    ]
)

# corpus/fg.parquet: every FG answer after post-processing (ALGORITHM §1), one row per
# (image, class, question); `text` is what gets prompted and encoded.
CORPUS_FG_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("class_id", pa.int16(), nullable=False),
        pa.field("question_id", pa.int16(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
    ]
)

# corpus/bg.parquet: the distinct BG answers of each (image, class) minus the class name;
# a pair whose set is empty has exactly one row with text = null.
CORPUS_BG_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("class_id", pa.int16(), nullable=False),
        pa.field("text", pa.string(), nullable=True),
    ]
)


def text_features_schema(dim: int) -> pa.Schema:
    """text/features.parquet: unique prompted text -> L2-normalised CLIP embedding.

    File metadata: b"qaclims.clip_model" and b"qaclims.prompt".
    """
    return pa.schema(
        [
            pa.field("text", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
        ]
    )


def write_table(
    table: pa.Table,
    path: str | os.PathLike,
    schema: pa.Schema,
    metadata: dict[str, str] | None = None,
) -> None:
    """Cast `table` to `schema` (failing on a mismatch) and write it atomically."""
    table = table.select(schema.names).cast(schema)
    if metadata:
        table = table.replace_schema_metadata({k.encode(): v.encode() for k, v in metadata.items()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_table(
    path: str | os.PathLike,
    schema: pa.Schema,
    columns: list[str] | None = None,
    filters: list | None = None,
) -> pa.Table:
    """Read a Parquet artifact, checking that the stored columns match `schema`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        stored = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"{path}: not a readable Parquet file ({err})") from err
    for field in schema:
        if field.name not in stored.names:
            raise InputError(f"{path}: column '{field.name}' is missing")
        if not stored.field(field.name).type.equals(field.type):
            raise InputError(
                f"{path}: column '{field.name}' has type {stored.field(field.name).type}, "
                f"expected {field.type}"
            )
    names = schema.names if columns is None else columns
    return pq.read_table(path, columns=names, filters=filters)


def shard_of(image_id: str, shards: int) -> int:
    """Stable shard of an image: the first 8 bytes of SHA-1(image_id) modulo `shards`."""
    return int.from_bytes(hashlib.sha1(image_id.encode()).digest()[:8], "big") % shards


def read_manifest(
    path: str | os.PathLike,
    *,
    split: str | None = None,
    shard: int | None = None,
    shards: int | None = None,
    columns: list[str] | None = None,
) -> pa.Table:
    """Manifest rows, optionally of one split and of shard `shard` of `shards`, by image_id.

    The manifest stores no shard: an image's shard is a hash of its id (`shard_of`), so the
    manifest, and every stage that reads it whole, stays the same when `dataset.shards`
    changes; only the per-shard stages see the new layout.
    """
    if (shard is None) != (shards is None):
        raise ValueError("give both shard and shards, or neither")
    filters = [("split", "=", split)] if split is not None else None
    wanted = None if columns is None else list(dict.fromkeys([*columns, "image_id"]))
    table = read_table(path, MANIFEST_SCHEMA, columns=wanted, filters=filters)
    table = table.sort_by("image_id")
    if shard is not None:
        ids = table.column("image_id").to_pylist()
        table = table.filter(pa.array([shard_of(i, shards) == shard for i in ids]))
    return table if columns is None else table.select(columns)


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names in class-id order (ids are contiguous from 0)."""
    table = read_table(path, CLASSES_SCHEMA).sort_by("class_id")
    ids = table.column("class_id").to_pylist()
    if ids != list(range(len(ids))):
        raise InputError(f"{path}: class ids are not contiguous from 0")
    return table.column("name").to_pylist()
