"""The shared training loop: poly LR, momentum quirk, bit-identical resume, 2-process path."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import Dataset

from qaclims import trainer
from qaclims.errors import InputError


class NoisyPoints(Dataset):
    """Fixed points plus noise drawn from torch's global RNG (like augmentation)."""

    def __init__(self, n: int = 12, noise: float = 0.1) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = (self.x.sum(1, keepdim=True) > 0).float()
        self.noise = noise

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i] + self.noise * torch.randn(4), "y": self.y[i]}


def _model(bn: bool = True) -> nn.Module:
    torch.manual_seed(1)
    layers = [nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1)]
    return nn.Sequential(*(layers if bn else [layers[0], layers[2], layers[3]]))


def _loss(model: nn.Module, batch: dict[str, torch.Tensor]):
    loss = nn.functional.binary_cross_entropy_with_logits(model(batch["x"]), batch["y"])
    return loss, {"bce": loss.item()}


def _train(tmp: Path, model: nn.Module, loss_fn=_loss, **kw) -> dict[str, float]:
    args = dict(
        dataset=NoisyPoints(),
        batch_size=4,
        epochs=2,
        workers=0,
        seed=3,
        weight_decay=1e-4,
        momentum=1e-4,
        checkpoint_dir=tmp / "ck",
        out_path=tmp / "out.pt",
        device=torch.device("cpu"),
        log_every=1,
    )
    args.update(kw)
    groups = [
        {"params": list(model[0].parameters()), "lr": 0.1},
        {"params": list(model[-1].parameters()), "lr": 1.0},
    ]
    return trainer.train(model=model, loss_fn=loss_fn, param_groups=groups, **args)


def test_poly_lr_before_each_step_and_momentum_quirk(tmp_path, monkeypatch):
    seen = []
    step = torch.optim.SGD.step

    def record(self, *a, **k):
        seen.append([(g["lr"], g["momentum"], g["weight_decay"]) for g in self.param_groups])
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", record)
    summary = _train(tmp_path, _model(), poly_power=0.9)
    assert summary["steps"] == 6  # 12 // 4 × 2 epochs
    for t, groups in enumerate(seen):
        for (lr, momentum, wd), lr0 in zip(groups, (0.1, 1.0), strict=True):
            assert lr == pytest.approx(lr0 * (1 - t / 6) ** 0.9)
            assert (momentum, wd) == (1e-4, 1e-4)
    assert (tmp_path / "out.pt").is_file() and (tmp_path / "ck" / "epoch-0002.pt").is_file()


class Killed(Exception):
    pass


@pytest.mark.parametrize("workers", [0, 2])
def test_killed_and_restarted_run_is_bit_identical(tmp_path, workers):
    _train(tmp_path / "full", _model(), workers=workers)
    calls = []

    def dies_in_epoch_two(model, batch):
        calls.append(1)
        if len(calls) == 4:  # first step of epoch 2 (3 steps per epoch)
            raise Killed
        return _loss(model, batch)

    with pytest.raises(Killed):
        _train(tmp_path / "cut", _model(), loss_fn=dies_in_epoch_two, workers=workers)
    assert not (tmp_path / "cut" / "out.pt").exists()
    summary = _train(tmp_path / "cut", _model(), workers=workers)
    assert summary["steps"] == 6
    full = torch.load(tmp_path / "full" / "out.pt", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "out.pt", weights_only=True)
    assert full.keys() == cut.keys()
    assert all(torch.equal(full[k], cut[k]) for k in full)
    assert not torch.equal(full["0.weight"], _model()[0].weight.detach())


def _weighted_loss(model: nn.Module, batch: dict[str, torch.Tensor]):
    """Total 2 × BCE with the BCE as the only term: the table's `loss` is what was stepped."""
    loss, terms = _loss(model, batch)
    return 2 * loss, terms


def test_history_has_one_row_per_step_with_lrs_terms_and_total(tmp_path):
    seen = []

    def recorded(model, batch):
        loss, terms = _weighted_loss(model, batch)
        seen.append((loss.item(), terms["bce"]))
        return loss, terms

    _train(tmp_path, _model(), loss_fn=recorded, history_path=tmp_path / "h.parquet")
    table = pq.read_table(tmp_path / "h.parquet").to_pydict()
    assert list(table) == ["step", "epoch", "lr", "lr_group_1", "bce", "loss"]
    assert table["step"] == [1, 2, 3, 4, 5, 6]
    assert table["epoch"] == [1, 1, 1, 2, 2, 2]
    for t in range(6):
        assert table["lr"][t] == pytest.approx(0.1 * (1 - t / 6) ** 0.9)
        assert table["lr_group_1"][t] == pytest.approx(1.0 * (1 - t / 6) ** 0.9)
    assert table["loss"] == [total for total, _ in seen]
    assert table["bce"] == [bce for _, bce in seen]
    assert table["loss"] != table["bce"]


def test_killed_and_resumed_run_writes_the_whole_history(tmp_path):
    _train(tmp_path / "full", _model(), loss_fn=_weighted_loss, history_path=tmp_path / "full.pq")
    calls = []

    def dies_in_epoch_two(model, batch):
        calls.append(1)
        if len(calls) == 4:
            raise Killed
        return _weighted_loss(model, batch)

    cut = tmp_path / "cut.pq"
    with pytest.raises(Killed):
        _train(tmp_path / "cut", _model(), loss_fn=dies_in_epoch_two, history_path=cut)
    assert not cut.exists()
    _train(tmp_path / "cut", _model(), loss_fn=_weighted_loss, history_path=cut)
    full = pq.read_table(tmp_path / "full.pq")
    assert full.num_rows == 6
    assert pq.read_table(cut).equals(full)
    cut.unlink()  # a finished run rerun: no step runs, the table is written again
    assert (
        _train(tmp_path / "cut", _model(), loss_fn=_weighted_loss, history_path=cut)["steps"] == 6
    )
    assert pq.read_table(cut).equals(full)


def test_weights_do_not_depend_on_the_number_of_loader_workers(tmp_path):
    """Augmentation noise is drawn per sample: which process draws it does not matter."""
    _train(tmp_path / "zero", _model(), workers=0)
    _train(tmp_path / "two", _model(), workers=2)
    zero = torch.load(tmp_path / "zero" / "out.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "out.pt", weights_only=True)
    assert all(torch.equal(zero[k], two[k]) for k in zero)
    _train(tmp_path / "other", _model(), workers=0, seed=4)
    other = torch.load(tmp_path / "other" / "out.pt", weights_only=True)
    assert not torch.equal(zero["0.weight"], other["0.weight"])  # the noise is really drawn


def test_checkpoint_of_another_run_is_not_resumed(tmp_path):
    _train(tmp_path / "a", _model(), epochs=1, seed=5)
    _train(tmp_path / "b", _model(), epochs=1, seed=3)
    (tmp_path / "b" / "ck" / "epoch-0001.pt").replace(tmp_path / "a" / "ck" / "epoch-0001.pt")
    summary = _train(tmp_path / "a", _model(), epochs=1, seed=5)
    assert summary["steps"] == 3  # trained from scratch, not resumed at the end


def test_fewer_images_than_one_batch_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="fewer than one batch"):
        _train(tmp_path, _model(), batch_size=16)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, tmp: str, port: int) -> None:
    os.environ.update(
        WORLD_SIZE="2", RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    _train(
        Path(tmp),
        _model(bn=False),
        dataset=NoisyPoints(noise=0.0),
        batch_size=12,
        epochs=3,
        history_path=Path(tmp) / "history.parquet",
    )
    assert not torch.distributed.is_initialized()  # the trainer closes the group it opened


def test_two_gloo_processes_match_one(tmp_path):
    """Full-batch steps: the averaged gradient of 2 × 6 images equals that of 12 images."""
    mp.spawn(_rank_main, args=(str(tmp_path / "ddp"), _free_port()), nprocs=2, join=True)
    _train(
        tmp_path / "one", _model(bn=False), dataset=NoisyPoints(noise=0.0), batch_size=12, epochs=3
    )
    ddp = torch.load(tmp_path / "ddp" / "out.pt", weights_only=True)
    one = torch.load(tmp_path / "one" / "out.pt", weights_only=True)
    assert all(torch.allclose(ddp[k], one[k], atol=1e-6) for k in one)
    assert not torch.allclose(one["0.weight"], _model(bn=False)[0].weight.detach())
    # rank 0 writes the table; rank 1 keeps no rows and must not overwrite it
    assert pq.read_table(tmp_path / "ddp" / "history.parquet")["step"].to_pylist() == [1, 2, 3]


def test_run_key_changes_with_settings_and_inputs(tmp_path):
    data = tmp_path / "features.parquet"
    data.write_bytes(b"one")
    key = trainer.run_key(code="abc", features=data, lr=0.1, sizes=(320, 640))
    assert key == trainer.run_key(code="abc", features=data, lr=0.1, sizes=(320, 640))
    assert key != trainer.run_key(code="abd", features=data, lr=0.1, sizes=(320, 640))
    assert key != trainer.run_key(code="abc", features=data, lr=0.2, sizes=(320, 640))
    data.write_bytes(b"two!")  # regenerated input
    assert key != trainer.run_key(code="abc", features=data, lr=0.1, sizes=(320, 640))
    data.write_bytes(b"one")  # rewritten with the same bytes: the same run
    assert key == trainer.run_key(code="abc", features=data, lr=0.1, sizes=(320, 640))


def test_run_key_sees_label_folders_by_content_not_layout(tmp_path):
    for name, files in {
        "a/shard-0": "xy",
        "a/shard-1": "z",
        "b/shard-0": "x",
        "b/shard-1": "yz",
    }.items():
        (tmp_path / name).mkdir(parents=True)
        for f in files:
            (tmp_path / name / f"{f}.png").write_bytes(f.encode())
    two = [tmp_path / "a/shard-0", tmp_path / "a/shard-1"]
    other_layout = [tmp_path / "b/shard-0", tmp_path / "b/shard-1"]
    assert trainer.run_key(labels=two) == trainer.run_key(labels=other_layout)
    (tmp_path / "b/shard-1/z.png").write_bytes(b"changed")
    assert trainer.run_key(labels=two) != trainer.run_key(labels=other_layout)


def test_fewer_images_than_one_batch_says_which_key_to_lower(tmp_path):
    with pytest.raises(
        InputError, match=r"12 training .* \(16\): lower irn\.batch_size to at most 12"
    ):
        _train(tmp_path, _model(), batch_size=16, batch_key="irn.batch_size")
    with pytest.raises(InputError, match=r"lower the batch size to at most 12"):
        _train(tmp_path, _model(), batch_size=16)
