"""Corpus report: per-class counts, top answers, unique answers and two-corpus overlap."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from qaclims import cli, corpus_report
from qaclims.corpus import MODEL_KEY
from qaclims.errors import InputError
from qaclims.tables import CLASSES_SCHEMA, CORPUS_BG_SCHEMA, CORPUS_FG_SCHEMA, write_table

CLASSES = ["cat", "dog", "bird", "cow"]  # cow: in no image

FG_A = {
    ("i1", 0, 0): "tabby cat",
    ("i1", 0, 1): "cat",
    ("i1", 0, 2): "tabby cat",
    ("i2", 0, 0): "cat",
    ("i2", 0, 1): "cat",
    ("i2", 0, 2): "kitten cat",
    ("i2", 1, 0): "puppy dog",
    ("i2", 1, 1): "dog",
    ("i2", 1, 2): "dog",
    ("i4", 2, 0): "bird",
}
BG_A = {("i1", 0): ["grass", "sky"], ("i2", 0): ["grass"], ("i2", 1): [], ("i4", 2): []}
# B: differs on (i1, cat, q1) and (i2, dog, q0), lacks (i2, cat, q2), has image i3 alone.
FG_B = {
    ("i1", 0, 0): "tabby cat",
    ("i1", 0, 1): "kitty cat",
    ("i1", 0, 2): "tabby cat",
    ("i2", 0, 0): "cat",
    ("i2", 0, 1): "cat",
    ("i3", 0, 0): "cat",
    ("i2", 1, 0): "dog",
    ("i2", 1, 1): "dog",
    ("i2", 1, 2): "dog",
    ("i4", 2, 0): "bird",
}
BG_B = {
    ("i1", 0): ["sky", "grass"],
    ("i2", 0): ["sea"],
    ("i3", 0): [],
    ("i2", 1): ["kennel"],
    ("i4", 2): [],
}


def write_corpus(folder: Path, fg: dict, bg: dict, model: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {"image_id": i, "class_id": c, "question_id": q, "text": t} for (i, c, q), t in fg.items()
    ]
    write_table(
        pa.Table.from_pylist(rows, schema=CORPUS_FG_SCHEMA),
        folder / "fg.parquet",
        CORPUS_FG_SCHEMA,
        {MODEL_KEY: model},
    )
    bg_rows = [
        {"image_id": i, "class_id": c, "text": t}
        for (i, c), texts in bg.items()
        for t in texts or [None]
    ]
    write_table(
        pa.Table.from_pylist(bg_rows, schema=CORPUS_BG_SCHEMA),
        folder / "bg.parquet",
        CORPUS_BG_SCHEMA,
        {MODEL_KEY: model},
    )
    return folder


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    classes = tmp_path / "classes.parquet"
    table = pa.table({"class_id": list(range(len(CLASSES))), "name": CLASSES})
    write_table(table, classes, CLASSES_SCHEMA)
    return {
        "a": write_corpus(tmp_path / "a", FG_A, BG_A, "vqa-a"),
        "b": write_corpus(tmp_path / "b", FG_B, BG_B, "vqa-b"),
        "classes": classes,
        "md": tmp_path / "out" / "report.md",
        "json": tmp_path / "out" / "report.json",
    }


def _run(files: dict[str, Path], **kw) -> dict:
    a = files["a"]
    return corpus_report.run(
        a / "fg.parquet", a / "bg.parquet", files["classes"], files["md"], files["json"], **kw
    )


def test_per_class_counts_top_answers_and_unique_answers(files) -> None:
    data = _run(files, top_k=2)
    cat, dog, bird, cow = (c["corpora"][0] for c in data["classes"])
    assert cat == {
        "pairs": 2,
        "fg_answers": 6,
        "fg_unique": 3,
        "fg_top": [["cat", 3], ["tabby cat", 2]],
        "bg_answers": 3,
        "bg_unique": 2,
        "bg_top": [["grass", 2], ["sky", 1]],
        "bg_empty_pairs": 0,
    }
    assert dog == {
        "pairs": 1,
        "fg_answers": 3,
        "fg_unique": 2,
        "fg_top": [["dog", 2], ["puppy dog", 1]],
        "bg_answers": 0,
        "bg_unique": 0,
        "bg_top": [],
        "bg_empty_pairs": 1,
    }
    assert bird == {**bird, "pairs": 1, "fg_top": [["bird", 1]], "bg_empty_pairs": 1}
    assert cow == {**cow, "pairs": 0, "fg_answers": 0, "fg_top": [], "bg_empty_pairs": 0}
    assert "overlap" not in data and data["corpora"][0]["vqa_model"] == "vqa-a"
    assert json.loads(files["json"].read_text()) == data
    md = files["md"].read_text()
    assert "| cat | 2 | 6 | 3 | cat (3), tabby cat (2) | 3 | 2 | grass (2), sky (1) | 0 |" in md
    assert "Overlap" not in md


def test_ties_are_listed_in_text_order(files) -> None:
    data = _run(files, top_k=1)
    assert data["classes"][0]["corpora"][0]["bg_top"] == [["grass", 2]]
    a = files["a"]
    write_corpus(a, {("i1", 0, 0): "b cat", ("i1", 0, 1): "a cat"}, {("i1", 0): ["z", "y"]}, "m")
    data = _run(files, top_k=1)
    assert data["classes"][0]["corpora"][0]["fg_top"] == [["a cat", 1]]
    assert data["classes"][0]["corpora"][0]["bg_top"] == [["y", 1]]


def test_two_corpora_overlap(files) -> None:
    data = _run(files, top_k=2, compare_with=files["b"])
    cat, dog, bird, cow = (c["overlap"] for c in data["classes"])
    # cat FG sets {tabby cat, cat, kitten cat} / {tabby cat, kitty cat, cat}: 2 of 4; of the
    # 5 shared keys, 4 agree. BG {grass, sky} / {sky, grass, sea}: 2 of 3; 1 of 2 pairs.
    assert cat == {
        "fg_jaccard": 0.5,
        "fg_shared_answers": 5,
        "fg_same": 0.8,
        "bg_jaccard": pytest.approx(2 / 3),
        "bg_shared_pairs": 2,
        "bg_same": 0.5,
    }
    assert dog == {
        "fg_jaccard": 0.5,
        "fg_shared_answers": 3,
        "fg_same": pytest.approx(2 / 3),
        "bg_jaccard": 0.0,  # A's one pair has no BG text, B's has "kennel"
        "bg_shared_pairs": 1,
        "bg_same": 0.0,
    }
    assert bird == {
        "fg_jaccard": 1.0,
        "fg_shared_answers": 1,
        "fg_same": 1.0,
        "bg_jaccard": None,  # neither has a BG text: no overlap to measure
        "bg_shared_pairs": 1,
        "bg_same": 1.0,  # both sets empty: the same
    }
    assert cow == {
        "fg_jaccard": None,
        "fg_shared_answers": 0,
        "fg_same": None,
        "bg_jaccard": None,
        "bg_shared_pairs": 0,
        "bg_same": None,
    }
    assert data["overlap"] == {
        "fg_jaccard": pytest.approx(4 / 7),  # {tabby cat, cat, dog, bird} of 7 texts
        "fg_shared_answers": 9,
        "fg_same": pytest.approx(7 / 9),
        "bg_jaccard": 0.5,  # {grass, sky} of {grass, sky, sea, kennel}
        "bg_shared_pairs": 4,
        "bg_same": 0.5,
    }
    assert data["classes"][0]["corpora"][1]["pairs"] == 3  # B's image i3
    assert [c["vqa_model"] for c in data["corpora"]] == ["vqa-a", "vqa-b"]
    md = files["md"].read_text()
    assert "## Corpus B: vqa-b" in md
    assert "| cat | 50.0 % | 5 | 80.0 % | 66.7 % | 2 | 50.0 % |" in md
    assert "| **all classes** | 57.1 % | 9 | 77.8 % | 50.0 % | 4 | 50.0 % |" in md


def test_cli_compare_option(files) -> None:
    a = files["a"]
    cli.main(
        [
            "corpus_report",
            *("--corpus-fg", str(a / "fg.parquet"), "--corpus-bg", str(a / "bg.parquet")),
            *("--classes", str(files["classes"]), "--out-md", str(files["md"])),
            *("--out-json", str(files["json"]), "--top-k", "1"),
            *("--compare-with", str(files["b"])),
        ]
    )
    data = json.loads(files["json"].read_text())
    assert data["top_k"] == 1 and data["overlap"]["fg_same"] == pytest.approx(7 / 9)


@pytest.mark.parametrize("what", ["missing", "empty", "missing_compare", "bad_class"])
def test_bad_corpus_is_a_clear_error_and_writes_nothing(files, what) -> None:
    kw = {}
    if what == "missing":
        (files["a"] / "fg.parquet").unlink()
        match = "fg.parquet: file not found"
    elif what == "empty":
        write_corpus(files["a"], {}, {}, "m")
        match = "holds no FG answers"
    elif what == "missing_compare":
        kw["compare_with"] = files["a"].parent / "nowhere"
        match = "nowhere: corpus folder to compare with not found"
    else:
        write_corpus(files["a"], {("i1", 7, 0): "cow"}, {("i1", 7): []}, "m")
        match = r"class ids \[7\] are not in the class list"
    with pytest.raises(InputError, match=match):
        _run(files, **kw)
    assert not files["md"].exists() and not files["json"].exists()
