"""Partial reruns on the demo data: only stale artifacts are planned, interrupted jobs recover.

One complete run of the (small) demo chain in a copy of the workflow; each test then
changes one thing (a module, a setting, a file's mtime, a deleted shard) and asserts the
exact set of jobs a dry run plans.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SMALL = ROOT / "tests" / "data" / "config_small.yaml"
SHARDS = 2
RESULTS = "results/demo"

pytestmark = pytest.mark.slow

DOWNSTREAM_OF_CRF = {
    "crf": SHARDS,
    "train_irn": 1,
    "pseudo_masks": SHARDS,
    "eval_masks": 1,
    "train_seg": 1,
    "summary": 1,
    "all": 1,
}


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def snakemake(
    wf: Path, *flags: str, targets: tuple[str, ...] = (), overlays: tuple[Path, ...] = ()
) -> subprocess.CompletedProcess:
    """Run snakemake on the copy; config files are small.yaml then `overlays`."""
    cmd = [str(BIN / "snakemake"), "-s", str(wf / "Snakefile"), "-d", str(wf), *flags]
    cmd += ["--configfile", str(wf / "small.yaml"), *map(str, overlays), "--", *targets]
    result = subprocess.run(cmd, capture_output=True, text=True, env=_env(), check=False)
    if result.returncode != 0:
        raise AssertionError(result.stdout[-3000:] + result.stderr[-3000:])
    return result


def planned(wf: Path, *targets: str, overlays: tuple[Path, ...] = ()) -> dict[str, int]:
    """Rule -> job count of a dry run (empty when nothing is to be done)."""
    text = snakemake(wf, "-n", targets=targets, overlays=overlays).stdout
    counts: dict[str, int] = {}
    lines = iter(text.splitlines())
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
def workflow(tmp_path_factory) -> Path:
    """A copy of the workflow (code included) with one complete small demo run."""
    wf = tmp_path_factory.mktemp("wf")
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(ROOT / name, wf / name)
    for name in ("rules", "qaclims", "report", "profiles", "envs"):
        shutil.copytree(ROOT / name, wf / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(SMALL, wf / "small.yaml")
    snakemake(wf, "--cores", "2")
    assert planned(wf) == {}
    return wf


def test_editing_the_crf_module_replans_crf_and_downstream(workflow):
    crf = workflow / "qaclims" / "crf.py"
    original = crf.read_text()
    try:
        crf.write_text(original + "\n# an edit\n")
        assert planned(workflow) == DOWNSTREAM_OF_CRF
    finally:
        crf.write_text(original)
    assert planned(workflow) == {}


def test_changing_crf_thresholds_replans_crf_and_downstream(workflow):
    over = workflow / "crf.yaml"
    over.write_text("crf:\n  fg_threshold: 0.35\n")
    assert planned(workflow, overlays=(over,)) == DOWNSTREAM_OF_CRF


def test_changing_ritc_replans_ritc_and_downstream_but_no_vqa_or_text(workflow):
    over = workflow / "ritc.yaml"
    over.write_text("ritc:\n  tau: 0.5\n")
    plan = planned(workflow, overlays=(over,))
    assert plan == {
        "ritc": 1,
        "cams": SHARDS,
        "eval_cam": 1,
        **DOWNSTREAM_OF_CRF,
    }


def test_touching_a_source_file_plans_nothing(workflow):
    for path in (workflow / "qaclims").rglob("*.py"):
        os.utime(path)
    assert planned(workflow) == {}


def test_deleting_one_cam_shard_replans_that_shard_and_its_dependants(workflow, tmp_path):
    shard = workflow / RESULTS / "cams" / "shard-1.npz"
    backup = tmp_path / "shard-1.npz"
    shutil.copy2(shard, backup)
    shard.unlink()
    try:
        plan = planned(workflow)
    finally:
        shutil.copy2(backup, shard)
    assert plan == {"cams": 1, "eval_cam": 1, **DOWNSTREAM_OF_CRF, "crf": 1}


def test_interrupted_shard_job_recovers_without_recomputing_finished_shards(workflow):
    """Kill the workflow while a CRF shard runs; rerun with --rerun-incomplete."""
    labels = workflow / RESULTS / "ir_labels"
    for shard in range(SHARDS):
        shutil.rmtree(labels / f"shard-{shard}")
    targets = [f"{RESULTS}/ir_labels/shard-{s}" for s in range(SHARDS)]
    cmd = [str(BIN / "snakemake"), "-s", str(workflow / "Snakefile"), "-d", str(workflow)]
    cmd += ["--cores", "1", "--configfile", str(workflow / "small.yaml"), "--", *targets]
    log_dir = workflow / "logs" / "demo" / "crf"
    for shard in range(SHARDS):
        (log_dir / f"shard-{shard}.log").unlink(missing_ok=True)
    output = workflow / "interrupted.log"
    with open(output, "w") as sink:
        proc = subprocess.Popen(
            cmd, env=_env(), stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 300
    finished: Path | None = None
    while time.monotonic() < deadline and proc.poll() is None:
        done = "(Rule: crf)" in output.read_text()  # Snakemake has registered one shard
        started = [s for s in range(SHARDS) if (log_dir / f"shard-{s}.log").exists()]
        if done and len(started) == SHARDS:
            finished = next(p for p in map(labels.joinpath, ("shard-0", "shard-1")) if p.is_dir())
            break
        time.sleep(0.05)
    assert finished is not None, "the second shard job never started"
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=120)
    unfinished = [labels / f"shard-{s}" for s in range(SHARDS) if labels / f"shard-{s}" != finished]
    assert not any(p.exists() for p in unfinished), "a half-written shard survived"
    assert not [p for p in labels.iterdir() if p.name.startswith(".")], "temporary files left"
    stamp = finished.stat().st_mtime_ns
    snakemake(workflow, "--cores", "1", "--rerun-incomplete", targets=tuple(targets))
    assert finished.stat().st_mtime_ns == stamp, "a finished shard was recomputed"
    assert all((labels / f"shard-{s}").is_dir() for s in range(SHARDS))
    assert planned(workflow, *targets) == {}
