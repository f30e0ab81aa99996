"""CLIP text features of every unique prompted text of the corpus (ALGORITHM §1).

In: corpus/fg.parquet, corpus/bg.parquet, classes.parquet and a CLIP model. Out:
text/features.parquet (text_features_schema: prompted text -> L2-normalised fp32
embedding, rows sorted by text), metadata: clip model, weights fingerprint and prompt.
The `text` column holds the prompted string, e.g. "a photo of grass.": a reader looks up
`prompt.format(t)` for a corpus text or class name t.

Each unique text is encoded once, in large batches (the reference encodes every answer of
every image and class again). Embeddings already computed with the same model, weights and
prompt are reused from the previous output or from `cache` (a copy that survives
Snakemake deleting the output before a rerun), so a rerun encodes only new texts.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from qaclims.atomic import atomic_path
from qaclims.devices import limit_cpu_threads, pick_device
from qaclims.errors import InputError
from qaclims.fingerprint import sha256_file
from qaclims.models import clip_text
from qaclims.tables import (
    CORPUS_BG_SCHEMA,
    CORPUS_FG_SCHEMA,
    read_class_names,
    read_table,
    text_features_schema,
    write_table,
)

log = logging.getLogger(__name__)

MODEL_KEY = "qaclims.clip_model"
FINGERPRINT_KEY = "qaclims.clip_fingerprint"
PROMPT_KEY = "qaclims.prompt"


def fingerprint(pretrained: str) -> str:
    """The tag itself, or SHA-256 of a weights file (a rebuilt file must not reuse texts)."""
    path = Path(pretrained)
    return sha256_file(path) if path.is_file() else pretrained


def corpus_texts(corpus_fg: Path, corpus_bg: Path, classes: Path) -> set[str]:
    """Every text the pair loader will look up: FG texts, BG texts and class names."""
    fg = read_table(corpus_fg, CORPUS_FG_SCHEMA, columns=["text"]).column("text")
    bg = read_table(corpus_bg, CORPUS_BG_SCHEMA, columns=["text"]).column("text")
    texts = set(pc.unique(fg).to_pylist()) | set(pc.unique(bg.drop_null()).to_pylist())
    return texts | set(read_class_names(classes))


def _reusable(path: Path | None, metadata: dict[str, str]) -> dict[str, np.ndarray]:
    """Embeddings of an earlier features file made with the same model, weights and prompt."""
    if path is None or not path.is_file():
        return {}
    try:
        stored = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError):
        log.warning("%s: unreadable, not reused", path)
        return {}
    meta = {k.decode(): v.decode() for k, v in (stored.metadata or {}).items()}
    if any(meta.get(k) != v for k, v in metadata.items()):
        log.info("%s: other model or prompt, not reused", path)
        return {}
    field = stored.field("embedding") if "embedding" in stored.names else None
    if field is None or not pa.types.is_fixed_size_list(field.type):
        return {}
    dim = field.type.list_size
    table = read_table(path, text_features_schema(dim))
    flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = flat.reshape(-1, dim).astype(np.float32)
    return dict(zip(table.column("text").to_pylist(), vectors, strict=True))


def run(
    corpus_fg: Path,
    corpus_bg: Path,
    classes: Path,
    out: Path,
    *,
    architecture: str,
    pretrained: str,
    clip_config: Path | None = None,
    prompt: str = "a photo of {}.",
    batch_size: int = 256,
    cache: Path | None = None,
    threads: int | None = None,
) -> dict[str, float]:
    """Write text/features.parquet; returns how many texts were needed, reused, encoded."""
    if prompt.count("{}") != 1:
        raise InputError(f"text prompt '{prompt}' must contain '{{}}' exactly once")
    start = time.perf_counter()
    texts = sorted({prompt.format(t) for t in corpus_texts(corpus_fg, corpus_bg, classes)})
    metadata = {
        MODEL_KEY: f"{architecture}:{pretrained}",
        FINGERPRINT_KEY: fingerprint(pretrained),
        PROMPT_KEY: prompt,
    }
    known = _reusable(cache, metadata) | _reusable(out, metadata)
    new = [t for t in texts if t not in known]
    log.info(
        "%d unique prompted texts, %d reused, %d to encode",
        len(texts),
        len(texts) - len(new),
        len(new),
    )
    dim = next(iter(known.values())).shape[0] if known else None
    if new:
        device = pick_device()
        limit_cpu_threads(threads)
        model, tokenizer = clip_text.load_clip(architecture, pretrained, device, clip_config)
        log.info("CLIP %s (%s) on %s", architecture, pretrained, device)
        dim = clip_text.embed_dim(model)
        vectors = clip_text.encode_texts(model, tokenizer, new, batch_size=batch_size)
        known.update(zip(new, vectors, strict=True))
    if dim is None:
        raise InputError(f"{corpus_fg}: the corpus and class list hold no text to encode")
    embeddings = np.stack([known[t] for t in texts]).astype(np.float32).reshape(-1)
    table = pa.table(
        {
            "text": pa.array(texts, pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embeddings), dim),
        }
    )
    write_table(table, out, text_features_schema(dim), metadata)
    if cache is not None:
        _keep_copy(out, cache)
    summary = {
        "texts": len(texts),
        "reused": len(texts) - len(new),
        "encoded": len(new),
        "dim": dim,
        "seconds": round(time.perf_counter() - start, 2),
    }
    log.info("text features: %s", summary)
    return summary


def _keep_copy(out: Path, cache: Path) -> None:
    """Hard-link (or copy) the output to the cache, atomically."""
    with atomic_path(cache) as tmp:
        tmp.unlink()
        try:
            os.link(out, tmp)
        except OSError:
            shutil.copyfile(out, tmp)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus-fg", type=Path, required=True)
    p.add_argument("--corpus-bg", type=Path, required=True)
    p.add_argument("--classes", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="text/features.parquet to write")
    p.add_argument("--architecture", required=True, help="models.clip.architecture")
    p.add_argument("--pretrained", required=True, help="models.clip.pretrained: tag or file")
    p.add_argument("--clip-config", type=Path, default=None, help="models.clip_config JSON")
    p.add_argument("--prompt", default="a photo of {}.")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--cache", type=Path, default=None, help="copy kept for incremental reruns")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (job's cores)")


def main(args: argparse.Namespace) -> None:
    run(
        args.corpus_fg,
        args.corpus_bg,
        args.classes,
        args.out,
        architecture=args.architecture,
        pretrained=args.pretrained,
        clip_config=args.clip_config,
        prompt=args.prompt,
        batch_size=args.batch_size,
        cache=args.cache,
        threads=args.threads,
    )
