"""GPU binding: concurrent jobs take different cards, waiters get freed ones, SLURM is kept."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from qaclims import devices, gpu_binding
from qaclims.errors import InputError


def test_two_holders_get_different_cards(tmp_path):
    devices = ["0", "1", "2"]
    with (
        gpu_binding.acquire(1, devices, tmp_path) as first,
        gpu_binding.acquire(2, devices, tmp_path) as second,
    ):
        assert first == ["0"]
        assert second == ["1", "2"]
    with gpu_binding.acquire(3, devices, tmp_path) as all_three:
        assert all_three == devices


def test_locks_exclude_other_processes_until_released(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from qaclims import gpu_binding\n"
         f"with gpu_binding.acquire(1, ['0', '1'], Path({str(tmp_path)!r})) as d:\n"
         "    print(d[0], flush=True); time.sleep(1.5)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "0"
    with gpu_binding.acquire(1, ["0", "1"], tmp_path) as mine:
        assert mine == ["1"]
    start = time.monotonic()
    with gpu_binding.acquire(2, ["0", "1"], tmp_path, poll=0.1) as both:
        assert both == ["0", "1"]
    assert time.monotonic() - start > 0.2  # had to wait for the other process to exit
    holder.wait()


def test_timeout_and_too_many(tmp_path):
    with (
        gpu_binding.acquire(1, ["0"], tmp_path),
        pytest.raises(TimeoutError),
        gpu_binding.acquire(1, ["0"], tmp_path, 0.3, 0.1),
    ):
        pass
    with (
        pytest.raises(RuntimeError, match="2 GPUs requested but only 1 visible"),
        gpu_binding.acquire(2, ["0"], tmp_path),
    ):
        pass


def _child_env(tmp_path, n: str = "1", **extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES",
                                                             "SLURM_JOB_ID")}  # fmt: skip
    env.update(extra, QACLIMS_GPU_LOCK_DIR=str(tmp_path))
    show = "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"
    cmd = [sys.executable, "-m", "qaclims.gpu_binding", n, "--", sys.executable, "-c", show]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.strip()


def test_cli_binds_within_visible_devices(tmp_path):
    assert _child_env(tmp_path, CUDA_VISIBLE_DEVICES="3,5") == "3"


def test_cli_keeps_slurm_assignment(tmp_path):
    assert _child_env(tmp_path, CUDA_VISIBLE_DEVICES="7", SLURM_JOB_ID="12") == "7"


def test_cli_zero_gpus_hides_cards(tmp_path):
    assert _child_env(tmp_path, CUDA_VISIBLE_DEVICES="0,1", n="0") == ""


def _no_gpu_env(tmp_path, **extra: str) -> dict[str, str]:
    """No CUDA_VISIBLE_DEVICES and a PATH without nvidia-smi: a machine without cards."""
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    return {
        **env,
        "PATH": os.path.dirname(sys.executable),
        "QACLIMS_GPU_LOCK_DIR": str(tmp_path),
        **extra,
    }


def test_a_gpu_job_that_sees_no_card_fails_instead_of_running_on_the_cpu(tmp_path):
    cmd = [sys.executable, "-m", "qaclims.gpu_binding", "1", "--", sys.executable, "-c", "1"]
    result = subprocess.run(cmd, env=_no_gpu_env(tmp_path), capture_output=True, text=True)
    assert result.returncode == 2
    assert "needs 1 GPU(s)" in result.stderr and "set that key to 0" in result.stderr
    optional = _no_gpu_env(tmp_path, QACLIMS_GPU_OPTIONAL="1")
    assert subprocess.run(cmd, env=optional, capture_output=True).returncode == 0


def test_a_stage_given_a_gpu_that_torch_cannot_use_fails(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    monkeypatch.setenv("QACLIMS_JOB_GPUS", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(InputError, match=r"given 1 GPU.*set the stage's `gpu` config key to 0"):
        devices.pick_device()
    monkeypatch.setenv("QACLIMS_GPU_OPTIONAL", "1")
    assert devices.pick_device().type == "cpu"
