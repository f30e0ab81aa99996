"""What the VQA model answered, per class: top FG and BG answers, and two corpora compared.

In: corpus/fg.parquet, corpus/bg.parquet and classes.parquet, optionally a second corpus
folder (its fg.parquet and bg.parquet, e.g. another VQA model's run on the same images).
Out: a Markdown report and the same numbers as JSON. Per class and corpus: the pairs
(images showing the class), the FG answers (one per pair and FG question) and the BG
answers (the distinct ones of each pair), the number of unique answers of each kind, the
`top_k` most frequent with their counts, and the pairs left without any BG text. With a
second corpus, per class: the Jaccard index of the two sets of unique answers (FG and BG),
and over the keys both corpora hold, the share with the same answer: an FG answer is keyed
by (image, class, question), a BG answer set by (image, class) and compared as a set.

This is the cheap look at a VQA model before RITC spends GPU hours on its answers.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from qaclims.atomic import atomic_path
from qaclims.corpus import MODEL_KEY
from qaclims.errors import InputError
from qaclims.tables import CORPUS_BG_SCHEMA, CORPUS_FG_SCHEMA, read_class_names, read_table

log = logging.getLogger(__name__)

FgKey = tuple[str, int, int]  # image, class, question
PairKey = tuple[str, int]  # image, class


class Corpus:
    """One answer corpus, by class: FG answer by (image, class, question), BG set by pair."""

    def __init__(self, fg: Path, bg: Path, n_classes: int) -> None:
        fg_table = read_table(fg, CORPUS_FG_SCHEMA)
        if fg_table.num_rows == 0:
            raise InputError(f"{fg}: the answer corpus holds no FG answers")
        bg_table = read_table(bg, CORPUS_BG_SCHEMA)
        if bg_table.num_rows == 0:
            raise InputError(f"{bg}: the answer corpus holds no BG rows (one per pair)")
        meta = pq.read_schema(fg).metadata or {}
        self.model = meta.get(MODEL_KEY.encode(), b"").decode() or None
        self.paths = {"fg": str(fg), "bg": str(bg)}
        self.fg: dict[int, dict[FgKey, str]] = defaultdict(dict)
        for r in fg_table.to_pylist():
            key = (r["image_id"], r["class_id"], r["question_id"])
            self.fg[r["class_id"]][key] = r["text"]
        self.bg: dict[int, dict[PairKey, set[str]]] = defaultdict(dict)
        for r in bg_table.to_pylist():
            texts = self.bg[r["class_id"]].setdefault((r["image_id"], r["class_id"]), set())
            if r["text"] is not None:
                texts.add(r["text"])
        bad = sorted(c for c in self.fg.keys() | self.bg.keys() if not 0 <= c < n_classes)
        if bad:
            raise InputError(f"{fg}: class ids {bad[:5]} are not in the class list")

    def fg_of(self, class_id: int | None) -> dict[FgKey, str]:
        """FG answers of one class, or of all (None)."""
        if class_id is not None:
            return self.fg.get(class_id, {})
        return {k: t for answers in self.fg.values() for k, t in answers.items()}

    def bg_of(self, class_id: int | None) -> dict[PairKey, set[str]]:
        """BG answer sets of one class, or of all (None)."""
        if class_id is not None:
            return self.bg.get(class_id, {})
        return {k: s for sets in self.bg.values() for k, s in sets.items()}


def top(counts: Counter, k: int) -> list[list[Any]]:
    """The `k` most frequent answers as [text, count], ties in text order."""
    return [[t, n] for t, n in sorted(counts.items(), key=lambda tn: (-tn[1], tn[0]))[:k]]


def class_stats(corpus: Corpus, class_id: int, top_k: int) -> dict[str, Any]:
    """Answer counts of one class in one corpus."""
    fg, bg = corpus.fg_of(class_id), corpus.bg_of(class_id)
    fg_counts = Counter(fg.values())
    bg_counts = Counter(t for texts in bg.values() for t in texts)
    return {
        "pairs": len({(i, c) for i, c, _ in fg} | set(bg)),
        "fg_answers": sum(fg_counts.values()),
        "fg_unique": len(fg_counts),
        "fg_top": top(fg_counts, top_k),
        "bg_answers": sum(bg_counts.values()),
        "bg_unique": len(bg_counts),
        "bg_top": top(bg_counts, top_k),
        "bg_empty_pairs": sum(1 for texts in bg.values() if not texts),
    }


def jaccard(a: set[str], b: set[str]) -> float | None:
    """|A ∩ B| / |A ∪ B|; None when both are empty."""
    union = a | b
    return len(a & b) / len(union) if union else None


def agreement(a: dict, b: dict) -> tuple[int, float | None]:
    """Keys held by both and the share of them with equal values (None if no key is shared)."""
    shared = a.keys() & b.keys()
    same = sum(1 for k in shared if a[k] == b[k])
    return len(shared), (same / len(shared) if shared else None)


def overlap(a: Corpus, b: Corpus, class_id: int | None) -> dict[str, Any]:
    """FG and BG overlap of two corpora for one class (None: all classes pooled)."""
    fg_a, fg_b = a.fg_of(class_id), b.fg_of(class_id)
    bg_a, bg_b = a.bg_of(class_id), b.bg_of(class_id)
    fg_shared, fg_same = agreement(fg_a, fg_b)
    bg_shared, bg_same = agreement(bg_a, bg_b)
    return {
        "fg_jaccard": jaccard(set(fg_a.values()), set(fg_b.values())),
        "fg_shared_answers": fg_shared,
        "fg_same": fg_same,
        "bg_jaccard": jaccard(
            {t for s in bg_a.values() for t in s}, {t for s in bg_b.values() for t in s}
        ),
        "bg_shared_pairs": bg_shared,
        "bg_same": bg_same,
    }


def report(corpora: list[Corpus], names: list[str], top_k: int) -> dict[str, Any]:
    """The report's numbers: per class, each corpus's statistics and (two corpora) overlap."""
    if top_k < 1:
        raise InputError(f"corpus_report.top_k is {top_k}, must be at least 1")
    classes = []
    for class_id, name in enumerate(names):
        entry: dict[str, Any] = {
            "class_id": class_id,
            "class": name,
            "corpora": [class_stats(c, class_id, top_k) for c in corpora],
        }
        if len(corpora) == 2:
            entry["overlap"] = overlap(*corpora, class_id)
        classes.append(entry)
    out: dict[str, Any] = {
        "top_k": top_k,
        "corpora": [{"vqa_model": c.model, **c.paths} for c in corpora],
        "classes": classes,
    }
    if len(corpora) == 2:
        out["overlap"] = overlap(*corpora, None)
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _answers(pairs: list[list[Any]]) -> str:
    return ", ".join(f"{_cell(t)} ({n})" for t, n in pairs) or "–"


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def markdown(data: dict[str, Any]) -> str:
    """One table per corpus, then the overlap table when there are two."""
    lines: list[str] = []
    for i, corpus in enumerate(data["corpora"]):
        label = corpus["vqa_model"] or "unknown VQA model"
        lines += [
            f"## Corpus {chr(65 + i)}: {_cell(label)}",
            "",
            f"`{corpus['fg']}`, `{corpus['bg']}`; top {data['top_k']} answers with counts.",
            "",
            "| class | pairs | FG answers | FG unique | top FG answers "
            "| BG answers | BG unique | top BG answers | pairs without BG |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for entry in data["classes"]:
            s = entry["corpora"][i]
            lines.append(
                f"| {_cell(entry['class'])} | {s['pairs']} | {s['fg_answers']} "
                f"| {s['fg_unique']} | {_answers(s['fg_top'])} | {s['bg_answers']} "
                f"| {s['bg_unique']} | {_answers(s['bg_top'])} | {s['bg_empty_pairs']} |"
            )
        lines.append("")
    if "overlap" in data:
        lines += [
            "## Overlap of A and B",
            "",
            "Jaccard: of the unique answer sets. Same: share of the keys both hold with the "
            "same answer (FG per image, class and question; BG answer sets per image and class).",
            "",
            "| class | FG Jaccard | FG shared | FG same | BG Jaccard | BG shared pairs | BG same |",
            "|---|---|---|---|---|---|---|",
        ]
        rows = [(e["class"], e["overlap"]) for e in data["classes"]]
        for name, o in [*rows, ("**all classes**", data["overlap"])]:
            lines.append(
                f"| {_cell(name)} | {_share(o['fg_jaccard'])} | {o['fg_shared_answers']} "
                f"| {_share(o['fg_same'])} | {_share(o['bg_jaccard'])} "
                f"| {o['bg_shared_pairs']} | {_share(o['bg_same'])} |"
            )
        lines.append("")
    return "\n".join(lines)


def compare_files(folder: Path) -> tuple[Path, Path]:
    """fg.parquet and bg.parquet of a corpus folder (corpus_report.compare_with)."""
    if not folder.is_dir():
        raise InputError(f"{folder}: corpus folder to compare with not found")
    return folder / "fg.parquet", folder / "bg.parquet"


def run(
    corpus_fg: Path,
    corpus_bg: Path,
    classes: Path,
    out_md: Path,
    out_json: Path,
    *,
    top_k: int = 5,
    compare_with: Path | None = None,
) -> dict[str, Any]:
    """Write the Markdown and JSON report of one corpus, or of two side by side."""
    names = read_class_names(classes)
    corpora = [Corpus(Path(corpus_fg), Path(corpus_bg), len(names))]
    if compare_with is not None:
        corpora.append(Corpus(*compare_files(Path(compare_with)), len(names)))
    data = report(corpora, names, top_k)
    text = markdown(data)
    with atomic_path(out_md) as tmp:
        tmp.write_text(text)
    with atomic_path(out_json) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    if "overlap" in data:
        log.info("corpus overlap, all classes: %s", data["overlap"])
    return data


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus-fg", type=Path, required=True)
    p.add_argument("--corpus-bg", type=Path, required=True)
    p.add_argument("--classes", type=Path, required=True)
    p.add_argument("--out-md", type=Path, required=True, help="Markdown report")
    p.add_argument("--out-json", type=Path, required=True, help="the same numbers as JSON")
    p.add_argument("--top-k", type=int, default=5, help="most frequent answers shown per class")
    p.add_argument(
        "--compare-with",
        type=Path,
        default=None,
        help="folder of a second corpus (fg.parquet, bg.parquet): adds the overlap table",
    )


def main(args: argparse.Namespace) -> None:
    run(
        args.corpus_fg,
        args.corpus_bg,
        args.classes,
        args.out_md,
        args.out_json,
        top_k=args.top_k,
        compare_with=args.compare_with,
    )
