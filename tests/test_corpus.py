"""Corpus stage: FG synonym rule, BG sets, empty answers, shard merging, schemas."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qaclims import cli, corpus
from qaclims.errors import InputError
from qaclims.tables import (
    CORPUS_BG_SCHEMA,
    CORPUS_FG_SCHEMA,
    QAPE_SCHEMA,
    read_table,
    write_table,
)


def _qape(path: Path, rows: list[tuple], model: str = "m") -> Path:
    """Write a QAPE shard from (image_id, class_id, class_name, question_id, lemma) rows."""
    table = pa.Table.from_pylist(
        [
            {
                "image_id": i,
                "class_id": c,
                "class_name": n,
                "question_id": q,
                "question": f"q{q} {n}",
                "answer": lemma + "s" if lemma and " " not in lemma else lemma,
                "lemma": lemma,
            }
            for i, c, n, q, lemma in rows
        ],
        schema=QAPE_SCHEMA,
    )
    write_table(table, path, QAPE_SCHEMA, {"qaclims.vqa_model": model})
    return path


@pytest.mark.parametrize(
    ("lemma", "name", "expected"),
    [
        ("table", "dining table", "table"),  # synonym list
        ("coffee table", "dining table", "coffee table"),
        ("desk", "dining table", "desk dining table"),
        ("monitor", "tv monitor", "monitor"),
        ("flower", "potted plant", "flower potted plant"),
        ("plant", "potted plant", "plant"),
        ("cattle", "cat", "cattle"),  # substring test, as the reference
        ("kitten", "cat", "kitten cat"),
        ("", "cat", "cat"),  # empty answer: the class name alone
    ],
)
def test_fg_text(lemma: str, name: str, expected: str) -> None:
    assert corpus.fg_text(lemma, name, corpus.DEFAULT_SYNONYMS) == expected


def test_fg_text_without_synonym_table_uses_the_name_only() -> None:
    assert corpus.fg_text("table", "dining table", {}) == "table dining table"


def test_bg_texts() -> None:
    assert corpus.bg_texts(["grass", "sky", "grass", "dog"], "dog") == ["grass", "sky"]
    assert corpus.bg_texts(["dogs", "dog"], "dog") == ["dogs"]  # exact equality only
    assert corpus.bg_texts(["dog", "dog", ""], "dog") == [None]
    assert corpus.bg_texts(["", "road"], "car") == ["road"]


def test_run_merges_shards_in_order(tmp_path: Path) -> None:
    fg = [
        _qape(tmp_path / "fg1.parquet", [("b", 0, "cat", 0, "kitten"), ("b", 0, "cat", 1, "")]),
        _qape(
            tmp_path / "fg0.parquet",
            [("a", 1, "dining table", 1, "table"), ("a", 1, "dining table", 0, "desk")],
        ),
    ]
    bg = [
        _qape(
            tmp_path / "bg1.parquet",
            [("b", 0, "cat", 0, "cat"), ("b", 0, "cat", 1, ""), ("b", 0, "cat", 2, "cat")],
        ),
        _qape(
            tmp_path / "bg0.parquet",
            [
                ("a", 1, "dining table", 0, "floor"),
                ("a", 1, "dining table", 1, "dining table"),
                ("a", 1, "dining table", 2, "wall"),
                ("a", 1, "dining table", 3, "floor"),
            ],
        ),
    ]
    summary = corpus.run(fg, bg, tmp_path / "fg.parquet", tmp_path / "bg.parquet")
    fg_rows = read_table(tmp_path / "fg.parquet", CORPUS_FG_SCHEMA).to_pylist()
    assert [(r["image_id"], r["question_id"], r["text"]) for r in fg_rows] == [
        ("a", 0, "desk dining table"),
        ("a", 1, "table"),
        ("b", 0, "kitten cat"),
        ("b", 1, "cat"),
    ]
    bg_table = read_table(tmp_path / "bg.parquet", CORPUS_BG_SCHEMA)
    assert [(r["image_id"], r["class_id"], r["text"]) for r in bg_table.to_pylist()] == [
        ("a", 1, "floor"),
        ("a", 1, "wall"),
        ("b", 0, None),
    ]
    assert bg_table.schema.metadata[b"qaclims.vqa_model"] == b"m"
    assert summary["fg_empty_answers"] == 1
    assert summary["bg_empty_pairs"] == 1


def test_shards_of_different_models_are_rejected(tmp_path: Path) -> None:
    a = _qape(tmp_path / "a.parquet", [("a", 0, "cat", 0, "cat")], model="m1")
    b = _qape(tmp_path / "b.parquet", [("b", 0, "cat", 0, "cat")], model="m2")
    with pytest.raises(InputError, match="different models"):
        corpus.run([a, b], [a], tmp_path / "fg.parquet", tmp_path / "bg.parquet")


def test_wrong_schema_names_file_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"image_id": ["a"], "class_id": pa.array([0], pa.int64())}), bad)
    with pytest.raises(InputError, match=rf"{bad}: column 'class_id' has type int64"):
        corpus.run([bad], [bad], tmp_path / "fg.parquet", tmp_path / "bg.parquet")
    assert not (tmp_path / "fg.parquet").exists()


def test_cli_synonyms_parse() -> None:
    assert corpus._synonym("tv monitor=monitor|tv monitor") == (
        "tv monitor",
        ["monitor", "tv monitor"],
    )


def test_cli_exits_2_naming_the_missing_shard(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "shard-0.parquet"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(
            [
                "corpus",
                "--fg-shards",
                str(missing),
                "--bg-shards",
                str(missing),
                "--fg-out",
                str(tmp_path / "fg.parquet"),
                "--bg-out",
                str(tmp_path / "bg.parquet"),
            ]
        )
    assert exit_info.value.code == 2
    assert f"{missing}: file not found" in capsys.readouterr().err
