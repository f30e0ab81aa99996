"""CUDA paths: device choice, precision, GPU binding with real cards, NCCL DDP with SyncBN.

Marked `gpu`: each test skips with its reason on a machine without (enough) CUDA devices,
so CI (CPU only) runs none of them and a GPU machine runs all: `pytest -m gpu`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from qaclims import devices, trainer
from qaclims.models.cam_net import CAMNet

pytestmark = pytest.mark.gpu

CUDA = torch.cuda.is_available()
CARDS = torch.cuda.device_count() if CUDA else 0
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
needs_two = pytest.mark.skipif(CARDS < 2, reason="needs two CUDA devices")


@needs_cuda
def test_precision_is_fp32_unless_bf16_is_asked():
    device = devices.pick_device()
    assert device.type == "cuda"
    a = torch.randn(8, 8, device=device)
    with devices.autocast(device, "fp32"):
        assert (a @ a).dtype == torch.float32
    with devices.autocast(device, "bf16"):
        assert (a @ a).dtype == torch.bfloat16


@needs_cuda
def test_cam_network_on_cuda_in_fp32_matches_the_cpu():
    torch.manual_seed(0)
    net = CAMNet(3, depth=18, weights=None, fixed_bn=True).eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        cpu = net.cams(x)
        gpu = net.to("cuda").cams(x.to("cuda")).cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=1e-4)


@needs_cuda
def test_gpu_binding_gives_a_job_exactly_its_cards(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    env["QACLIMS_GPU_LOCK_DIR"] = str(tmp_path)
    show = "import torch; print(torch.cuda.device_count())"
    cmd = [sys.executable, "-m", "qaclims.gpu_binding", "1", "--", sys.executable, "-c", show]
    assert subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout == "1\n"


@needs_two
def test_two_jobs_bound_at_once_get_different_cards(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    env["QACLIMS_GPU_LOCK_DIR"] = str(tmp_path)
    show = "import os, time; print(os.environ['CUDA_VISIBLE_DEVICES']); time.sleep(3)"
    cmd = [sys.executable, "-m", "qaclims.gpu_binding", "1", "--", sys.executable, "-c", show]
    jobs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    cards = {job.communicate(timeout=60)[0].strip() for job in jobs}
    assert len(cards) == 2


class _Points(torch.utils.data.Dataset):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(16, 4, generator=g)
        self.y = (self.x.sum(1, keepdim=True) > 0).float()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


def _model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))


def _loss(model: nn.Module, batch: dict[str, torch.Tensor]):
    loss = nn.functional.binary_cross_entropy_with_logits(model(batch["x"]), batch["y"])
    return loss, {"bce": loss.item()}


def _train(tmp: Path, device: torch.device) -> None:
    model = _model()
    trainer.train(
        model=model, loss_fn=_loss, dataset=_Points(), batch_size=16, epochs=2, workers=0,
        seed=3, param_groups=[{"params": list(model.parameters()), "lr": 0.1}],
        weight_decay=1e-4, momentum=1e-4, checkpoint_dir=tmp / "ck", out_path=tmp / "out.pt",
        device=device,
    )  # fmt: skip


def _rank_main(rank: int, tmp: str, port: int) -> None:
    os.environ.update(
        WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )  # fmt: skip
    _train(Path(tmp), trainer.rank_device())


@needs_two
def test_nccl_ddp_with_syncbn_matches_one_process(tmp_path):
    """Full-batch steps on 2 cards × 8 points equal 16 points on one: gradients and BN stats."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_main, args=(str(tmp_path / "ddp"), port), nprocs=2, join=True)
    _train(tmp_path / "one", torch.device("cuda", 0))
    ddp = torch.load(tmp_path / "ddp" / "out.pt", weights_only=True, map_location="cpu")
    one = torch.load(tmp_path / "one" / "out.pt", weights_only=True, map_location="cpu")
    for key in one:
        torch.testing.assert_close(ddp[key].float(), one[key].float(), atol=1e-5, rtol=1e-4)
