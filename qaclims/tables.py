"""Parquet artifacts: their explicit schemas, an atomic writer and a schema-checked reader.

Every tabular artifact of the workflow is declared here, so a reader always knows the
columns and types it gets and a file written by another version fails loudly.
"""

from __future__ import annotations

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
        pa.field("shard", pa.int32(), nullable=False),
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


def read_manifest(
    path: str | os.PathLike,
    *,
    split: str | None = None,
    shard: int | None = None,
    columns: list[str] | None = None,
) -> pa.Table:
    """Manifest rows, optionally of one split and one shard, in image_id order."""
    filters = []
    if split is not None:
        filters.append(("split", "=", split))
    if shard is not None:
        filters.append(("shard", "=", shard))
    table = read_table(path, MANIFEST_SCHEMA, columns=columns, filters=filters or None)
    return table.sort_by("image_id") if "image_id" in table.column_names else table


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names in class-id order (ids are contiguous from 0)."""
    table = read_table(path, CLASSES_SCHEMA).sort_by("class_id")
    ids = table.column("class_id").to_pylist()
    if ids != list(range(len(ids))):
        raise InputError(f"{path}: class ids are not contiguous from 0")
    return table.column("name").to_pylist()
