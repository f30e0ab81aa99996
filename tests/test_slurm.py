"""A slice of the demo workflow through a real single-node SLURM cluster.

The cluster (munge, slurmctld, slurmd, slurmdbd on MariaDB, one fake GPU) is started by
`.ci/slurm_cluster.sh up` and stopped by PID afterwards. Skipped, with the reason, only
where it cannot start at all: not root, or no apt-get to install SLURM.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / ".ci" / "slurm_cluster.sh"
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def cluster(real_path):
    if os.geteuid() != 0:
        pytest.skip("the SLURM daemons need root to start")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("no apt-get to install SLURM and no SLURM installed")
    env = {**os.environ, "PATH": real_path}
    up = subprocess.run(
        ["bash", str(CLUSTER), "up"], capture_output=True, text=True, check=False, env=env
    )
    try:
        assert up.returncode == 0, f"cluster did not start:\n{up.stderr[-3000:]}"
        yield
    finally:
        subprocess.run(["bash", str(CLUSTER), "down"], capture_output=True, check=False, env=env)


def test_demo_slice_runs_as_slurm_jobs(cluster, tmp_path, capsys, real_path):
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{real_path}",
        "QACLIMS_SLURM_ACCOUNT": "ci",
        "QACLIMS_SLURM_PARTITION": "debug",
        "QACLIMS_GPU_OPTIONAL": "1",  # the cluster's GPU is a fake one: torch sees no CUDA
    }
    target = "results/demo/qape/fg/shard-0.parquet"
    overlay = tmp_path / "slurm.yaml"
    overlay.write_text("qape:\n  gpu: 1\ndemo:\n  train_images: 8\n  val_images: 2\n")
    cmd = [
        "timeout", "-k", "10", "600", str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"),
        "-d", str(tmp_path), "--workflow-profile", str(ROOT / "profiles" / "slurm"),
        "--slurm-init-seconds-before-status-checks", "2", "--jobs", "2", "--verbose",
        "--max-threads", str(os.cpu_count()), "--slurm-keep-successful-logs",
        "--configfile", str(overlay), "--", target,
    ]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    log = run.stdout + run.stderr
    submissions = [line.strip() for line in log.splitlines() if "sbatch call" in line]
    with capsys.disabled():
        print("\nsbatch submissions:")
        for line in submissions:
            print("  " + re.sub(r"--wrap=.*", "--wrap=...", line))
    assert run.returncode == 0, log[-5000:]
    assert (tmp_path / target).is_file()

    jobs = {}
    for path in (tmp_path / ".snakemake" / "slurm_logs").rglob("*.log"):
        rule = next(p for p in path.parts if p.startswith("rule_"))[len("rule_") :]
        jobs[rule] = path.stem
    assert {"demo_data", "manifest", "demo_models", "qape"} <= set(jobs), jobs
    for rule, job_id in jobs.items():
        sacct = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State,AllocTRES"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        state, tres = sacct.split("|", 1)
        assert state == "COMPLETED", (rule, sacct)
        assert ("gres/gpu=1" in tres) == (rule == "qape"), (rule, tres)
    gpu_submission = [s for s in submissions if "--comment rule_qape" in s]
    assert gpu_submission and "--gpus=1" in gpu_submission[0]
