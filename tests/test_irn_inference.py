"""IRN inference as IRNet's EdgeDisplacement: padded to the training crop, cut, flip-fused."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from qaclims import train_irn
from qaclims.errors import InputError
from qaclims.models.irn_net import IRNet, load_irn
from tests.test_irn import write_dataset


@pytest.fixture(scope="module")
def net() -> IRNet:
    torch.manual_seed(0)
    model = IRNet(depth=18).eval()
    model.inference_crop.fill_(32)
    return model


def _reference_boundary(model: IRNet, image: torch.Tensor, crop: int) -> torch.Tensor:
    """IRNet: pad [img, flip(img)] to crop×crop, forward, cut to the feature size, fuse."""
    h, w = image.shape[-2:]
    feat = ((h - 1) // 4 + 1, (w - 1) // 4 + 1)
    x = torch.cat([image, image.flip(-1)])
    x = F.pad(x, [0, crop - w, 0, crop - h])
    with torch.no_grad():
        edge, _ = model(x)
    edge = edge[..., : feat[0], : feat[1]]
    return torch.sigmoid(edge[0, 0] / 2 + edge[1, 0].flip(-1) / 2)


def test_boundary_is_the_padded_cut_and_fused_reference(net):
    image = torch.randn(1, 3, 22, 27, generator=torch.Generator().manual_seed(1))
    ours = net.boundary(image)
    assert ours.shape == (6, 7)
    torch.testing.assert_close(ours, _reference_boundary(net, image, 32))


def test_padding_changes_the_map_so_the_test_above_can_fail(net):
    """GroupNorm statistics depend on the canvas: an unpadded forward gives another map."""
    image = torch.randn(1, 3, 22, 27, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, _ = net(torch.cat([image, image.flip(-1)]))
    unpadded = torch.sigmoid((logits[0, 0] + logits[1, 0].flip(-1)) / 2)
    assert not torch.allclose(unpadded, net.boundary(image), atol=1e-4)


def test_an_image_larger_than_the_crop_is_not_cut(net):
    image = torch.randn(1, 3, 40, 36, generator=torch.Generator().manual_seed(2))
    assert net.boundary(image).shape == (10, 9)


def test_the_training_crop_is_stored_with_the_weights(tmp_path):
    manifest, classes, labels = write_dataset(tmp_path, [(40, 36), (30, 44)], "train", 2)
    train_irn.run(
        manifest=manifest, classes=classes, ir_labels=[labels], out=tmp_path / "irn.pt",
        checkpoint_dir=tmp_path / "ck", split="train", depth=18, weights=None, crop_size=32,
        scale_range=(0.75, 1.25), radius=3, batch_size=1, epochs=1, edge_lr=0.1,
        displacement_lr=1.0, weight_decay=1e-4, momentum=1e-4, poly_power=0.9, seed=3,
    )  # fmt: skip
    assert int(load_irn(tmp_path / "irn.pt", depth=18).inference_crop) == 32
    old = {
        k: v
        for k, v in torch.load(tmp_path / "irn.pt", weights_only=True).items()
        if k != "inference_crop"
    }
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(InputError, match=r"old\.pt"):
        load_irn(tmp_path / "old.pt", depth=18)
