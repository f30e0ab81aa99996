"""The Snakefile itself: dry runs on the demo config, and config errors before any job."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
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
