"""The Snakefile itself: dry runs on the demo config, and config errors before any job."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qaclims import cli
from tests.original_files import converted_paper_files
from tests.stand_ins import model_caches, paper_config

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def snakemake(workdir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {}), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d", str(workdir), *args],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip


def test_dry_run_plans_the_demo(tmp_path):
    result = snakemake(tmp_path, "-n", "--quiet", "rules")
    assert result.returncode == 0, result.stderr
    assert "manifest" in result.stdout + result.stderr


def test_bad_config_key_stops_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset:\n  shardz: 3\n")
    result = snakemake(tmp_path, "--cores", "1", "--configfile", str(bad))
    assert result.returncode != 0
    assert "bad.yaml: unknown config key 'dataset.shardz'" in result.stderr + result.stdout
    assert not (tmp_path / "results").exists()


def _stage_argv(command: str) -> tuple[str, list[str]]:
    """(stage, its arguments) of a planned `... -m qaclims <stage> ... > log` command."""
    tokens = shlex.split(command)
    at = max(i for i, t in enumerate(tokens[:-1]) if t == "-m" and tokens[i + 1] == "qaclims")
    end = tokens.index(">") if ">" in tokens else len(tokens)
    return tokens[at + 2], tokens[at + 3 : end]


def _converted_overlay(work: Path) -> Path:
    """A config over configs/voc12.yaml naming every converted tiny paper file."""
    nested: dict = {}
    for key, value in converted_paper_files(work).items():
        *parents, leaf = key.split(".")
        node = nested
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    path = work / "converted.yaml"
    path.write_text(yaml.safe_dump(nested))
    return path


@pytest.mark.parametrize("kind", ["demo", "voc12", "coco14"])
def test_every_planned_command_parses_with_its_stage_cli(tmp_path, kind):
    """Flags rendered from the settings are exactly what each stage's parser accepts.

    VOC runs on converted tiny stand-ins of every file the README names (README,
    "Reproducing the paper"), with the released baseline in place of baseline training;
    COCO on stand-ins of the cached hub models.
    """
    env = model_caches(tmp_path)
    args = ["-n", "-p"]
    if kind != "demo":
        args += ["--configfile", str(paper_config(tmp_path, kind))]
    if kind == "voc12":
        args += [str(_converted_overlay(tmp_path))]
    result = snakemake(tmp_path, *args, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    commands = [
        line.partition("Shell command: ")[2]
        for line in result.stdout.splitlines()
        if line.startswith("Shell command: ") and "qaclims" in line  # not rule all's "None"
    ]
    stages = set()
    for command in commands:
        stage, argv = _stage_argv(command)
        try:
            args = cli.build_parser(stage).parse_args([stage, *argv])
        except SystemExit:
            pytest.fail(f"{stage} rejects its planned flags: {command}")
        stages.add(stage)
        if kind == "voc12" and stage == "ritc":
            assert args.baseline == tmp_path / "data" / "models" / "res50_cam.pt"
        if kind == "voc12" and stage == "qape":
            assert args.model == str(tmp_path / "data" / "models" / "blip-vqa-capfilt-large")
    # export_voc: target export_voc_test only (test_voc_test_export_is_planned_on_request)
    not_rules = {"convert", "export_voc"}
    not_rules |= {"demo_data", "demo_models"} if kind != "demo" else set()
    if kind == "voc12":
        not_rules.add("train_cam")  # cam.released
    assert stages == set(cli.STAGES) - not_rules


def _planned_commands(workdir: Path, *targets: str) -> list[tuple[str, list[str]]]:
    """(stage, arguments) of every qaclims command a dry run of `targets` plans."""
    result = snakemake(workdir, "-n", "-p", *targets)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [
        _stage_argv(line.partition("Shell command: ")[2])
        for line in result.stdout.splitlines()
        if line.startswith("Shell command: ") and "qaclims" in line
    ]


def _flag(argv: list[str], name: str, count: int = 1) -> list[str]:
    at = argv.index(name)
    return argv[at + 1 : at + 1 + count]


def test_ablation_plans_the_two_ritc_variants_and_the_default_target_does_not(tmp_path):
    ritc = {
        _flag(argv, "--out")[0]: argv
        for stage, argv in _planned_commands(tmp_path, "ablation")
        if stage == "ritc"
    }
    models = "results/demo/models"
    assert sorted(ritc) == [f"{models}/{n}.pt" for n in ("ritc", "ritc_label_only", "ritc_no_bg")]
    no_bg, label_only, full = (
        ritc[f"{models}/{n}.pt"] for n in ("ritc_no_bg", "ritc_label_only", "ritc")
    )
    assert _flag(no_bg, "--loss-weights", 3) == ["10.0", "0.0", "0.2"]
    assert _flag(no_bg, "--label-weight") == _flag(full, "--label-weight") == ["0.5"]
    assert _flag(label_only, "--label-weight") == ["1.0"]
    assert _flag(label_only, "--loss-weights", 3) == _flag(full, "--loss-weights", 3)
    checkpoints = {_flag(argv, "--checkpoint-dir")[0] for argv in ritc.values()}
    assert len(checkpoints) == 3, "each variant resumes from its own checkpoints"

    default = _planned_commands(tmp_path)
    outs = {_flag(argv, "--out")[0] for stage, argv in default if "--out" in argv}
    assert f"{models}/ritc.pt" in outs and [o for o in outs if "ritc_" in o] == []
    summary = next(argv for stage, argv in default if stage == "summary")
    assert summary[summary.index("--reports") + 1 : summary.index("--reports") + 3] == [
        "results/demo/eval/cam_baseline.json", "results/demo/eval/cam.json"
    ]  # fmt: skip


def test_each_job_asks_for_the_memory_its_config_sets(tmp_path):
    """`mem_mb.<rule>` (coco14.yaml over config.yaml) reaches every planned job's resources;
    a CRF job asks crf + crf_per_thread × its threads."""
    env = model_caches(tmp_path)
    config = paper_config(tmp_path, "coco14")
    result = snakemake(tmp_path, "-n", "--configfile", str(config), env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    mem = yaml.safe_load((ROOT / "config.yaml").read_text())["mem_mb"]
    mem.update(yaml.safe_load(config.read_text()).get("mem_mb", {}))
    asked, expected = {}, {}
    rule, threads = None, 1
    for line in result.stdout.splitlines():
        text = line.strip()
        if line.startswith(("rule ", "localrule ")):
            rule, threads = line.split()[1].rstrip(":"), 1
        elif text.startswith("threads:"):
            threads = int(text.split()[1])
        elif text.startswith("resources:") and rule != "all":
            asked.setdefault(rule, set()).add(int(text.partition("mem_mb=")[2].split(",")[0]))
            want = mem[rule] + (mem["crf_per_thread"] * threads if rule == "crf" else 0)
            expected.setdefault(rule, set()).add(want)
    assert {"qape", "cams", "crf", "eval_cam", "pseudo_masks"} <= set(asked)
    assert asked == expected


def test_voc_test_export_is_planned_on_request(tmp_path):
    """export_voc_test: not in the default target; asked for, it predicts dataset.root's
    test list under seg_eval's protocol (configs/voc12.yaml: the paper's); without a test
    list Snakemake names the missing file."""
    env = model_caches(tmp_path)
    flags = ["-n", "-p", "--configfile", str(paper_config(tmp_path, "voc12"))]
    flags.append(str(_converted_overlay(tmp_path)))
    result = snakemake(tmp_path, "export_voc_test", *flags, env=env)
    assert result.returncode != 0
    assert "VOC2012/ImageSets/Segmentation/test.txt" in result.stdout + result.stderr
    (tmp_path / "VOC2012/ImageSets/Segmentation/test.txt").write_text("2008_000001\n")
    result = snakemake(tmp_path, "export_voc_test", *flags, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    commands = [
        _stage_argv(line.partition("Shell command: ")[2])
        for line in result.stdout.splitlines()
        if line.startswith("Shell command: ") and "qaclims" in line
    ]
    argv = next(argv for stage, argv in commands if stage == "export_voc")
    args = cli.build_parser("export_voc").parse_args(["export_voc", *argv])
    assert args.scales == [1.0, 0.5, 0.75] and not args.flip and args.fusion == "max"
    assert args.crf and (args.crf_bilateral_sxy, args.crf_bilateral_compat) == (67, 4)
    assert args.images == tmp_path / "VOC2012" / "JPEGImages" and args.arch == "deeplabv2"
    assert args.out_tar == Path("results/voc12/voc_test/results.tgz")
    default = snakemake(tmp_path, *flags, env=env)
    assert default.returncode == 0 and "export_voc" not in default.stdout
