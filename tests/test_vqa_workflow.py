"""QAPE through Snakemake with each backend's tiny model; swapping models.vqa reruns QAPE on.

A small demo dataset (one shard, four training images), the VQA model a folder outside
results/ (identified by content, as a real checkpoint), targets the answer corpora and the
text features only: the cheap part of the chain that depends on the VQA model.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qaclims import demo_models
from qaclims.models import blip, llava
from qaclims.tables import CORPUS_BG_SCHEMA, CORPUS_FG_SCHEMA, read_class_names, read_table

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TARGETS = ("results/demo/corpus/fg.parquet", "results/demo/corpus/bg.parquet")
FEATURES = "results/demo/text/features.parquet"
SMALL = """dataset:
  shards: 1
demo:
  train_images: 4
  val_images: 2
  world: shapes
demo_vlms:
  trained: false
"""


def snakemake(wf: Path, *flags: str, use: tuple[Path, ...]) -> str:
    """Snakemake on the copy `wf`: config.yaml, small.yaml, then `use`; its stdout."""
    cmd = [str(BIN / "snakemake"), "-s", str(wf / "Snakefile"), "-d", str(wf), *flags]
    cmd += ["--configfile", str(wf / "small.yaml"), *map(str, use), "--", *TARGETS, FEATURES]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def planned(wf: Path, *use: Path) -> dict[str, int]:
    """Rule -> job count of a dry run (empty when nothing is to be done)."""
    lines = iter(snakemake(wf, "-n", use=use).splitlines())
    counts: dict[str, int] = {}
    for line in lines:
        if line.startswith("job") and "count" in line:
            next(lines)
            for row in lines:
                name, _, count = row.strip().rpartition(" ")
                if name.strip() == "total" or not row.strip():
                    break
                counts[name.strip()] = int(count)
            break
    return counts


@pytest.fixture(scope="module")
def workflow(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the workflow (code included, so edits elsewhere rerun nothing here) with the
    small demo config and both tiny VQA folders."""
    wf = tmp_path_factory.mktemp("wf")
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(ROOT / name, wf / name)
    for name in ("rules", "qaclims", "report", "profiles", "envs"):
        shutil.copytree(ROOT / name, wf / name, ignore=shutil.ignore_patterns("__pycache__"))
    (wf / "small.yaml").write_text(SMALL)
    questions = [q for key in ("fg", "bg") for q in _questions(key)]
    words = demo_models.vocabulary(questions)
    blip.tiny_vqa(wf / "vqa-blip", words, seed=0)
    llava.tiny_llava(wf / "vqa-llava", words, seed=0)
    return wf


def _questions(kind: str) -> list[str]:
    return yaml.safe_load((ROOT / "config.yaml").read_text())["qape"][f"{kind}_questions"]


def _use(wf: Path, kind: str) -> Path:
    path = wf / f"use-{kind}.yaml"
    path.write_text(f"models:\n  vqa: {wf / f'vqa-{kind}'}\n")
    return path


def test_each_backend_fills_the_corpora_and_a_swap_reruns_qape_on(workflow: Path) -> None:
    for kind, other in (("llava", "blip"), ("blip", "llava")):
        use = _use(workflow, kind)
        snakemake(workflow, "--cores", "2", use=(use,))
        fg = read_table(workflow / TARGETS[0], CORPUS_FG_SCHEMA).to_pylist()
        bg = read_table(workflow / TARGETS[1], CORPUS_BG_SCHEMA).to_pylist()
        assert fg and bg
        # random answers, but words: FG texts beyond the bare class name, some BG texts
        names = read_class_names(workflow / "results/demo/classes.parquet")
        assert any(r["text"] != names[r["class_id"]] for r in fg), (kind, fg[:5])
        assert any(r["text"] for r in bg), (kind, bg[:5])
        assert planned(workflow, use) == {}
        swapped = planned(workflow, _use(workflow, other))
        assert swapped == {"qape": 1, "corpus": 1, "text_features": 1}, (kind, swapped)
    prompt = workflow / "prompt.yaml"
    prompt.write_text('qape:\n  prompt: "Question: {} Short answer:"\n')
    assert planned(workflow, _use(workflow, "blip"), prompt) == swapped  # a QAPE setting
