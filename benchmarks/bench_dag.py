"""Dry-run time of the whole workflow on a VOC-sized manifest with everything up to date.

Builds a synthetic manifest of VOC 2012's size (10,582 train_aug + 1,464 train + 1,449 val
rows, 32 shards) in a temporary folder, creates every output the workflow would write,
marks them done with `snakemake --touch`, then times `snakemake -n`. Target: < 5 s, because
users dry-run before every partial rerun.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from qaclims.datasets.voc import VOC_CLASSES  # noqa: E402
from qaclims.manifest import shard_of  # noqa: E402
from qaclims.tables import CLASSES_SCHEMA, MANIFEST_SCHEMA, write_table  # noqa: E402

SPLITS = {"train_aug": 10582, "train": 1464, "val": 1449}
SHARDS = 32


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    cmd = [str(bin_dir / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d", str(workdir)]
    cmd += ["--configfile", str(workdir / "dag.yaml"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)


def synthetic_manifest(results: Path, data_root: Path) -> None:
    rows = []
    for split, count in SPLITS.items():
        for i in range(count):
            image_id = f"2008_{i:06d}"
            rows.append(
                {
                    "image_id": image_id,
                    "split": split,
                    "path": str(data_root / "JPEGImages" / f"{image_id}.jpg"),
                    "height": 375,
                    "width": 500,
                    "labels": [i % 20],
                    "label_source": "xml",
                    "has_mask": split != "train_aug",
                    "mask_path": None,
                    "shard": shard_of(image_id, SHARDS),
                }
            )
    write_table(pa.Table.from_pylist(rows), results / "manifest.parquet", MANIFEST_SCHEMA)
    names = pa.table({"class_id": list(range(20)), "name": list(VOC_CLASSES)})
    write_table(names, results / "classes.parquet", CLASSES_SCHEMA)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data_root = work / "VOC2012"
        (data_root / "JPEGImages").mkdir(parents=True)
        overlay = (
            (ROOT / "configs" / "voc12.yaml")
            .read_text()
            .replace("root: data/VOCdevkit/VOC2012", f"root: {data_root}")
        )
        (work / "dag.yaml").write_text(overlay.replace("shards: 32", f"shards: {SHARDS}"))
        synthetic_manifest(work / "results" / "voc12", data_root)
        ovseg = work / "data" / "models" / "ovseg_swinbase_vitL14_ft_mpt.pth"
        ovseg.parent.mkdir(parents=True)
        ovseg.touch()  # an external input file of the RITC rule; never loaded here
        summary = snakemake(work, "--summary").stdout.splitlines()[1:]
        outputs = [line.split("\t")[0] for line in summary if line.strip()]
        for rel in outputs:
            path = work / rel
            if path.exists():
                continue
            if path.suffix:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            else:
                path.mkdir(parents=True, exist_ok=True)
        snakemake(work, "--touch", "--cores", "1", "--quiet", "all")
        start = time.perf_counter()
        result = snakemake(work, "-n")
        elapsed = time.perf_counter() - start
        text = result.stdout + result.stderr
        up_to_date = "Nothing to be done" in text
        print(f"outputs: {len(outputs)} files/folders from {SHARDS} shards")
        print(f"snakemake -n, everything up to date: {elapsed:.2f} s (target < 5 s)")
        print(f"plan empty: {up_to_date}")
        if not up_to_date:
            print(text[-2000:])
            sys.exit(1)


if __name__ == "__main__":
    main()
