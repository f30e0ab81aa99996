"""Dry-run time of the whole workflow at VOC and COCO size, everything up to date.

For each dataset, builds a synthetic manifest of its size in a temporary folder (VOC 2012:
10,582 train_aug + 1,464 train + 1,449 val rows, 32 shards; COCO 2014: 82,783 train2014 +
40,504 val2014 rows, 64 shards, `max_images: null`), a dataset root with the reader's
folders, and local model caches holding stand-ins for the paper's checkpoints (a hub
snapshot of BLIP and of open_clip's ViT-L/14 `openai` weights, torchvision ResNets, an
OV-Seg file), so every model is fingerprinted as on a real machine. It creates every output
the workflow would write, marks them done with `snakemake --touch`, then times one
`snakemake -n`, and prints it next to a dry run of a one-rule Snakefile (Snakemake's own
start-up floor) as a ratio. Targets: < 2 s at VOC size, < 5 s at COCO size.
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
from qaclims.tables import CLASSES_SCHEMA, MANIFEST_SCHEMA, write_table  # noqa: E402
from tests.stand_ins import model_caches, no_slurm_probe, paper_config  # noqa: E402

CASES = {
    "voc12": {"splits": {"train_aug": 10582, "train": 1464, "val": 1449}, "shards": 32},
    "coco14": {"splits": {"train2014": 82783, "val2014": 40504}, "shards": 64},
}
TARGETS = {"voc12": 2.0, "coco14": 5.0}


def run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)


def snakemake(workdir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    cmd = [str(Path(sys.executable).parent / "snakemake"), "-s", str(ROOT / "Snakefile")]
    cmd += ["-d", str(workdir), "--configfile", str(workdir / "dag.yaml"), *args]
    return run(cmd, env)


def synthetic_manifest(results: Path, root: Path, kind: str) -> None:
    names = list(VOC_CLASSES) if kind == "voc12" else [f"class {i}" for i in range(80)]
    case = CASES[kind]
    rows = []
    for split, count in case["splits"].items():
        for i in range(count):
            image_id = f"{split}_{i:06d}"
            rows.append(
                {
                    "image_id": image_id,
                    "split": split,
                    "path": str(root / f"{image_id}.jpg"),
                    "height": 375,
                    "width": 500,
                    "labels": [i % len(names)],
                    "label_source": "xml",
                    "has_mask": True,
                    "mask_path": None,
                }
            )
    write_table(pa.Table.from_pylist(rows), results / "manifest.parquet", MANIFEST_SCHEMA)
    table = pa.table({"class_id": list(range(len(names))), "name": names})
    write_table(table, results / "classes.parquet", CLASSES_SCHEMA)


def mark_everything_done(work: Path, env: dict[str, str]) -> int:
    summary = snakemake(work, env, "--summary").stdout.splitlines()[1:]
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
    snakemake(work, env, "--touch", "--cores", "1", "--quiet", "all")
    return len(outputs)


def floor(env: dict[str, str]) -> float:
    """Dry run of a one-rule workflow: what Snakemake itself costs before any of ours."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "Snakefile").write_text('rule a:\n    output: "a"\n    shell: "touch a"\n')
        (Path(tmp) / "a").touch()
        cmd = [str(Path(sys.executable).parent / "snakemake"), "-d", tmp, "-s"]
        cmd += [str(Path(tmp) / "Snakefile"), "-n", "--cores", "1"]
        start = time.perf_counter()
        run(cmd, env)
        return time.perf_counter() - start


def main() -> None:
    kinds = sys.argv[1:] or list(CASES)
    failed = False
    for kind in kinds:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            env = {**os.environ, **model_caches(work)}
            # A machine with SLURM's client tools but no controller would add ~9 s to every
            # snakemake start (the SLURM plugin runs `scontrol` at import): not ours to time.
            stub = no_slurm_probe(work)
            env["PATH"] = os.pathsep.join([stub, str(Path(sys.executable).parent), env["PATH"]])
            config = paper_config(work, kind)
            config.rename(work / "dag.yaml")
            synthetic_manifest(work / "results" / kind, work / "images", kind)
            outputs = mark_everything_done(work, env)
            base = floor(env)
            start = time.perf_counter()
            result = snakemake(work, env, "-n")
            elapsed = time.perf_counter() - start
            text = result.stdout + result.stderr
            up_to_date = "Nothing to be done" in text
            rows = sum(CASES[kind]["splits"].values())
            print(
                f"{kind}: {rows} manifest rows, {CASES[kind]['shards']} shards, {outputs} outputs"
            )
            print(
                f"  snakemake -n, everything up to date, models fingerprinted: {elapsed:.2f} s "
                f"(target < {TARGETS[kind]:.0f} s); one-rule Snakefile: {base:.2f} s; "
                f"ratio {elapsed / base:.2f}x"
            )
            print(f"  plan empty: {up_to_date}")
            if not up_to_date:
                print(text[-2000:])
            failed |= not up_to_date
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
