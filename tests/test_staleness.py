"""Partial reruns on the demo data: a change reruns exactly what it changes, never less or more.

One complete run of the (small) demo chain in a copy of the workflow; each test then changes
one thing (a setting, a module, a model file, a deleted artifact) and asserts the exact set
of jobs a dry run plans. Values are chosen to collide with other values of the same rule
(Snakemake compares params as a set of values, names dropped). Tests that run jobs work on
their own copy of the completed run. The README's "what reruns when" table is these tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from qaclims.models import clip_text
from qaclims.tables import read_manifest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SMALL = ROOT / "tests" / "data" / "config_small.yaml"
SHARDS = 2
RESULTS = "results/demo"

pytestmark = pytest.mark.slow

PSEUDO_DOWN = {
    "pseudo_masks": SHARDS,
    "eval_masks": 1,
    "train_seg": 1,
    "eval_seg": 1,
    "training_curves": 1,  # each rerun training job's loss curves: seg's here
    "class_iou": 2,  # the pseudo masks' and the segmentation's per-class table and chart
    "summary": 1,
    "all": 1,
}
IRN_DOWN = {"train_irn": 1, **PSEUDO_DOWN, "training_curves": 2}
# A new seg_eval protocol: the segmentation's scores and what shows them, never train_seg.
SEG_EVAL_DOWN = {"eval_seg": 1, "class_iou": 1, "summary": 1, "all": 1}
SEG_DOWN = {"train_seg": 1, "training_curves": 1, **SEG_EVAL_DOWN}
CRF_DOWN = {"crf": SHARDS, **IRN_DOWN}
RITC_DOWN = {
    "ritc": 1,
    "cams": SHARDS,
    "eval_cam": 1,
    "cam_compare": 1,
    **CRF_DOWN,
    "training_curves": 3,
}
TEXT_DOWN = {"text_features": 1, **RITC_DOWN}
QAPE_DOWN = {"qape": SHARDS, "corpus": 1, "corpus_report": 1, **TEXT_DOWN}
# The baseline's own CAMs and their evaluation too; the demo's IRN and seg start from it.
BASELINE_DOWN = {
    "train_cam": 1,
    **RITC_DOWN,
    "cams": 2 * SHARDS,
    "eval_cam": 2,
    "training_curves": 4,
}
EVERY_JOB = {
    "demo_data": 1,
    "demo_models": 1,
    "manifest": 1,
    "qape": SHARDS,
    "corpus": 1,
    "corpus_report": 1,
    "text_features": 1,
    **BASELINE_DOWN,
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


def planned(
    wf: Path, *targets: str, overlays: tuple[Path, ...] = (), flags: tuple[str, ...] = ()
) -> dict[str, int]:
    """Rule -> job count of a dry run (empty when nothing is to be done)."""
    text = snakemake(wf, "-n", *flags, targets=targets, overlays=overlays).stdout
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


def overlay(wf: Path, name: str, text: str) -> Path:
    path = wf / f"{name}.yaml"
    path.write_text(text)
    return path


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


@pytest.fixture
def own_copy(workflow: Path, tmp_path: Path) -> Path:
    """A private copy of the completed run (results, metadata, mtimes) to run jobs in."""
    wf = tmp_path / "wf"
    shutil.copytree(workflow, wf, symlinks=True)
    assert planned(wf) == {}
    return wf


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ritc:\n  momentum: 0.9\n", RITC_DOWN),  # 0.9 is ritc.poly_power
        ("ritc:\n  weight_decay: 3.5e-4\n", RITC_DOWN),  # 3.5e-4 is ritc.lr
        ("cam:\n  momentum: 0.9\n", BASELINE_DOWN),  # 0.9 is cam.poly_power
        ("crf:\n  fg_threshold: 0.10\n  bg_threshold: 0.30\n", CRF_DOWN),  # swapped
        ("crf:\n  gaussian_compat: 5\n", CRF_DOWN),  # 5 is crf.bilateral_srgb
        ("pseudo_masks:\n  beta: 8\n", PSEUDO_DOWN),  # 8 is pseudo_masks.exp_times
        ("qape:\n  num_beams: 1\n", QAPE_DOWN),  # 1 is qape.min_length
        ("text:\n  prompt: 'ViT-tiny {}'\n", TEXT_DOWN),  # beside the architecture name
        ("seg_eval:\n  scales: [0.5, 1.5]\n", SEG_EVAL_DOWN),  # [0.5, 1.5] is seg.scale_range
        ("seg:\n  arch: deeplabv2\n", SEG_DOWN),  # the paper's model: retrained, rescored
    ],
)
def test_a_value_another_setting_holds_is_still_a_change(workflow, text, expected):
    assert planned(workflow, overlays=(overlay(workflow, "collide", text),)) == expected


def test_summary_rows_agree_with_the_eval_reports(workflow):
    """summary.json: one row per stage (a CAM network's at the configured and at the best
    threshold), the split, images and mIoU (%) of its report; the report's figures."""
    evals = workflow / RESULTS / "eval"
    reports = {
        "baseline CAM": "cam_baseline.json",
        "baseline CAM, best t": "cam_baseline.json",
        "RITC CAM": "cam.json",
        "RITC CAM, best t": "cam.json",
        "pseudo mask": "pseudo_masks.json",
        "segmentation": "seg.json",
    }
    rows = json.loads((evals / "summary.json").read_text())
    assert [r["stage"] for r in rows] == list(reports)
    table = (evals / "summary.md").read_text()
    for r in rows:
        stored = json.loads((evals / reports[r["stage"]]).read_text())
        best = r["stage"].endswith(", best t")
        assert (r["split"], r["images"]) == (stored["split"], stored["images"])
        miou = stored["best_miou" if best else "miou"]
        assert r["miou"] == pytest.approx(100 * miou, abs=1e-9)
        t = stored.get("best_threshold" if best else "bg_threshold")
        threshold = "—" if t is None else f"{t:g}"
        assert (
            f"| {r['stage']} | {r['split']} | {r['images']} | {threshold} | {r['miou']:.2f} |"
            in table
        )
    for name in ("cam_sweep.png", "cam_baseline_sweep.png", "pseudo_masks_iou.png", "seg_iou.png"):
        assert (evals / name).stat().st_size > 0
    for name in ("pseudo_masks", "seg"):
        assert "per-class IoU" in (evals / f"{name}_per_class.html").read_text()
    assert sorted(p.name for p in (evals / "cam_baseline_vis").iterdir()) == sorted(
        p.name for p in (evals / "cam_vis").iterdir()
    )
    assert list((evals / "cam_compare").glob("*.png"))


def test_the_ablation_trains_only_its_two_variants(workflow):
    """Its baseline and RITC rows are the default run's: same settings, nothing redone."""
    expected = {"ritc": 2, "cams": 2 * SHARDS, "eval_cam": 2, "ablation": 1}
    assert planned(workflow, "ablation") == expected


def test_a_nested_key_can_be_set_on_the_command_line(workflow):
    assert planned(workflow, flags=("--config", "crf={fg_threshold: 0.35}")) == CRF_DOWN
    assert planned(workflow, flags=("--config", "crf={fg_threshold: 0.3}")) == {}


def test_speed_knobs_rerun_nothing(workflow):
    knobs = overlay(
        workflow,
        "knobs",
        "dataset:\n  verify_images: false\n"
        "qape:\n  batch_images: 3\n  chunk_images: 5\n  workers: 0\n"
        "text:\n  batch_size: 7\n"
        "cam_infer:\n  batch_images: 3\n  threads: 1\n"
        "cam:\n  workers: 1\nritc:\n  workers: 1\nirn:\n  workers: 1\nseg:\n  workers: 1\n"
        "crf:\n  threads: 1\n"
        "mem_mb:\n  cams: 1500\n  crf: 1500\n  ritc: 1500\n",  # 1500 is crf_per_thread
    )
    assert planned(workflow, overlays=(knobs,)) == {}


def test_editing_crf_code_reruns_crf_and_downstream_but_comments_do_not(workflow):
    crf = workflow / "qaclims" / "crf.py"
    original = crf.read_text()
    try:
        crf.write_text(original.replace('"""', '"""Edited docstring. ', 1) + "\n# a comment\n")
        assert planned(workflow) == {}
        crf.write_text(original + "\nEDITED = True\n")
        assert planned(workflow) == CRF_DOWN
    finally:
        crf.write_text(original)
    assert planned(workflow) == {}


def test_cli_code_reruns_every_job_but_a_new_stage_entry_none(workflow):
    """Every job runs `cli.main`: its code is in every digest; the stage table is not."""
    cli = workflow / "qaclims" / "cli.py"
    original = cli.read_text()
    try:
        cli.write_text(
            original.replace('    "summary":', '    "extra": "qaclims.summary",\n    "summary":')
        )
        assert planned(workflow) == {}
        cli.write_text(original + "\nEDITED = True\n")
        assert planned(workflow) == EVERY_JOB
    finally:
        cli.write_text(original)
    assert planned(workflow) == {}


def test_touching_a_source_file_plans_nothing(workflow):
    for path in (workflow / "qaclims").rglob("*.py"):
        os.utime(path)
    assert planned(workflow) == {}


@pytest.mark.parametrize(
    ("artifact", "expected"),
    [
        ("models/irn.pt", IRN_DOWN),
        ("models/cam_baseline.pt", BASELINE_DOWN),
        (
            "models/seg.pt",
            {"train_seg": 1, "training_curves": 1, **SEG_EVAL_DOWN},
        ),
        ("eval/seg.json", SEG_EVAL_DOWN),
        ("cams/shard-1.npz", {"cams": 1, "eval_cam": 1, "cam_compare": 1, **CRF_DOWN, "crf": 1}),
        (
            "cams_baseline/shard-1.npz",
            {"cams": 1, "eval_cam": 1, "cam_compare": 1, "summary": 1, "all": 1},
        ),
        (
            "demo_models/clip-tiny.safetensors",
            {"demo_models": 1, **TEXT_DOWN, "qape": 2, "corpus": 1, "corpus_report": 1},
        ),
    ],
)
def test_a_deleted_deliverable_is_rebuilt_with_its_dependants(
    workflow, tmp_path, artifact, expected
):
    path = workflow / RESULTS / artifact
    backup = tmp_path / path.name
    shutil.copy2(path, backup)
    path.unlink()
    try:
        plan = planned(workflow)
    finally:
        shutil.copy2(backup, path)
    assert plan == expected


def _tiny_clip_copy(path: Path, seed: int) -> Path:
    """A CLIP of the demo's architecture with other weights (`seed`), at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    clip_text.tiny_clip("clip-tiny", path, seed=seed)
    return path


def test_other_clip_weights_rerun_text_and_ritc_and_a_moved_copy_nothing(own_copy, tmp_path):
    first = _tiny_clip_copy(tmp_path / "a" / "weights.safetensors", seed=1)
    clip_a = overlay(own_copy, "clip_a", f"models:\n  clip:\n    pretrained: {first}\n")
    assert planned(own_copy, overlays=(clip_a,)) == TEXT_DOWN  # no VQA, no corpus
    loaders = (f"{RESULTS}/text/features.parquet", f"{RESULTS}/models/ritc.pt")  # CLIP's users
    snakemake(own_copy, "--cores", "2", overlays=(clip_a,), targets=loaders)
    moved = tmp_path / "b" / "renamed.safetensors"
    moved.parent.mkdir()
    shutil.copy(first, moved)
    clip_b = overlay(own_copy, "clip_b", f"models:\n  clip:\n    pretrained: {moved}\n")
    assert planned(own_copy, *loaders, overlays=(clip_b,)) == {}
    _tiny_clip_copy(moved, seed=2)  # new weights at the same path
    assert planned(own_copy, *loaders, overlays=(clip_b,)) == {"text_features": 1, "ritc": 1}


def test_a_missing_model_fails_before_any_job(own_copy):
    typo = overlay(own_copy, "typo", "models:\n  clip:\n    pretrained: nowhere/clip.safetensors\n")
    logs = {p: p.stat().st_mtime_ns for p in (own_copy / "logs").rglob("*.log")}
    cmd = [str(BIN / "snakemake"), "-s", str(own_copy / "Snakefile"), "-d", str(own_copy)]
    cmd += ["--cores", "1", "--configfile", str(own_copy / "small.yaml"), str(typo)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=_env(), check=False)
    assert result.returncode != 0
    message = "config key 'models.clip.pretrained': nowhere/clip.safetensors"
    assert message in result.stdout + result.stderr
    assert {p: p.stat().st_mtime_ns for p in (own_copy / "logs").rglob("*.log")} == logs


def _answer_counts(log_dir: Path) -> tuple[int, int]:
    """Sum of (answered, reused) (image, question) pairs over the VQA shard logs."""
    answered = reused = 0
    for log in log_dir.glob("shard-*.log"):
        found = re.search(
            r"(\d+) \(image, question\) pairs answered, (\d+) reused", log.read_text()
        )
        assert found, log
        answered += int(found[1])
        reused += int(found[2])
    return answered, reused


def test_new_images_and_shards_answer_only_the_new_pairs(own_copy):
    log_dir = own_copy / "logs" / "demo" / "qape"
    before = sum(_answer_counts(log_dir))
    old = read_manifest(own_copy / RESULTS / "manifest.parquet", split="train_aug")
    for log in log_dir.glob("*.log"):
        log.unlink()
    more = overlay(own_copy, "more", "demo:\n  train_images: 18\ndataset:\n  shards: 3\n")
    snakemake(own_copy, "--cores", "2", overlays=(more,), targets=(f"{RESULTS}/corpus/fg.parquet",))
    new = read_manifest(own_copy / RESULTS / "manifest.parquet", split="train_aug").to_pylist()
    added = [r for r in new if r["image_id"] not in set(old.column("image_id").to_pylist())]
    assert len(added) == 2 and len(list(log_dir.glob("shard-*.log"))) == 3
    qape = yaml.safe_load((own_copy / "config.yaml").read_text())["qape"]
    questions = len(qape["fg_questions"]) + len(qape["bg_questions"])
    assert _answer_counts(log_dir) == (questions * sum(len(r["labels"]) for r in added), before)


def _stage_processes(wf: Path, stage: str) -> list[int]:
    """Pids of `python -m qaclims <stage>` processes running in the workflow copy `wf`."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if cwd == str(wf) and b"qaclims" in argv and stage.encode() in argv:
            pids.append(int(proc.name))
    return pids


def test_a_new_shard_count_retrains_nothing(own_copy):
    """The manifest holds no shards: only per-shard work is redone; training finds its runs."""
    ritc = own_copy / RESULTS / "models" / "ritc.pt"
    before = torch.load(ritc, weights_only=True)
    three = overlay(own_copy, "three", "dataset:\n  shards: 3\n")
    per_shard = {"qape": 3, "cams": 2 * 3, "crf": 3, "pseudo_masks": 3}  # baseline and RITC
    unchanged = ("demo_data", "demo_models", "manifest", "train_cam")
    expected = {k: v for k, v in {**EVERY_JOB, **per_shard}.items() if k not in unchanged}
    expected["training_curves"] = 3  # RITC, IRN and seg; not train_cam's
    assert planned(own_copy, overlays=(three,)) == expected
    trained = (f"{RESULTS}/models/ritc.pt", f"{RESULTS}/models/irn.pt")
    snakemake(own_copy, "--cores", "2", overlays=(three,), targets=trained)
    logs = own_copy / "logs" / "demo"
    assert _answer_counts(logs / "qape")[0] == 0  # every answer reused
    for stage in ("ritc", "train_irn"):
        assert "resumed from" in (logs / f"{stage}.log").read_text(), stage
    after = torch.load(ritc, weights_only=True)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_killed_training_job_resumes_to_the_same_weights(own_copy):
    """SIGKILL train_cam after its first checkpoint (as the OOM killer would); rerun plainly."""
    target = f"{RESULTS}/models/cam_baseline.pt"
    longer = overlay(own_copy, "longer", "cam:\n  epochs: 6\n")
    snakemake(own_copy, "--cores", "1", overlays=(longer,), targets=(target,))
    reference = torch.load(own_copy / target, weights_only=True)
    (own_copy / target).unlink()
    checkpoints = own_copy / RESULTS / "checkpoints" / "cam_baseline"
    shutil.rmtree(checkpoints)
    cmd = [str(BIN / "snakemake"), "-s", str(own_copy / "Snakefile"), "-d", str(own_copy)]
    cmd += ["--cores", "1", "--configfile", str(own_copy / "small.yaml"), str(longer), "--", target]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(checkpoints.glob("*/epoch-0001.pt")):
        time.sleep(0.02)
    killed = _stage_processes(own_copy, "train_cam")
    assert killed, "training finished before it could be killed"
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    assert proc.wait(timeout=120) != 0
    assert not (own_copy / target).exists()
    assert "train_cam" in planned(own_copy, overlays=(longer,))  # a deliverable: planned
    snakemake(own_copy, "--cores", "1", "--rerun-incomplete", overlays=(longer,), targets=(target,))
    log = (own_copy / "logs" / "demo" / "train_cam.log").read_text()
    assert "resumed from" in log
    resumed = torch.load(own_copy / target, weights_only=True)
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    (run,) = checkpoints.iterdir()
    assert [p.name for p in run.iterdir()] == ["epoch-0006.pt"], "a temporary file survived"


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
