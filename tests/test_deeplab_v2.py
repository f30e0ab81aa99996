"""DeepLab-v2 (`seg.arch: deeplabv2`): OS8 ResNet, summed ASPP-v2, frozen BN, train and score."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from test_golden_eval import irnet_miou
from test_irn import write_dataset  # tests/ is on sys.path under pytest's default import mode

from qaclims import eval_seg, train_seg
from qaclims.augment import normalize
from qaclims.errors import InputError
from qaclims.images import read_label_map
from qaclims.models.backbone import FixedBatchNorm
from qaclims.models.deeplab_v2 import ASPP_RATES, ASPPv2, DeepLabV2
from qaclims.models.seg_net import build_seg_net, load_seg_net, param_groups
from qaclims.seg_predict import Protocol


@pytest.mark.parametrize(("depth", "size"), [(18, (37, 50)), (50, (29, 34))])
def test_output_has_the_input_size_and_one_channel_a_class(depth, size):
    model = build_seg_net(5, depth=depth, arch="deeplabv2").eval()
    assert isinstance(model, DeepLabV2)
    with torch.no_grad():
        assert model(torch.rand(1, 3, *size))["out"].shape == (1, 5, *size)


@pytest.mark.parametrize("depth", [18, 50])
def test_backbone_has_output_stride_8_with_every_block_dilated(depth):
    model = build_seg_net(3, depth=depth, arch="deeplabv2").eval()
    with torch.no_grad():
        assert model.features(torch.rand(1, 3, 64, 96)).shape[-2:] == (8, 12)
    for stage, dilation in (("layer3", 2), ("layer4", 4)):
        convs = [
            m for m in getattr(model.backbone, stage).modules() if isinstance(m, torch.nn.Conv2d)
        ]
        assert {c.stride for c in convs} == {(1, 1)}
        assert {(c.dilation, c.padding) for c in convs if c.kernel_size == (3, 3)} == {
            ((dilation, dilation), (dilation, dilation))
        }


def test_aspp_sums_four_dilated_branches_initialised_as_deeplab_pytorch():
    torch.manual_seed(0)
    aspp = ASPPv2(256, 21)
    assert [c.dilation for c in aspp.branches] == [(r, r) for r in ASPP_RATES] == [
        (6, 6), (12, 12), (18, 18), (24, 24)
    ]  # fmt: skip
    weights = torch.cat([c.weight.flatten() for c in aspp.branches])
    assert weights.std().item() == pytest.approx(0.01, rel=0.02)
    assert abs(weights.mean().item()) < 1e-4
    assert all(not c.bias.any() for c in aspp.branches)
    x = torch.rand(2, 256, 30, 30)
    with torch.no_grad():
        for conv in aspp.branches:
            conv.bias.normal_()  # so a dropped bias shows too
        parts = [conv(x) for conv in aspp.branches]
        torch.testing.assert_close(aspp(x), sum(parts))
        for conv in aspp.branches[1:]:  # three branches silenced: the first alone remains
            conv.weight.zero_()
            conv.bias.zero_()
        torch.testing.assert_close(aspp(x), parts[0])


def test_batchnorm_is_frozen_and_param_groups_split_backbone_and_aspp():
    model = build_seg_net(3, depth=18, arch="deeplabv2")
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(isinstance(m, FixedBatchNorm) for m in norms)
    bn_params = {id(p) for m in norms for p in m.parameters()}
    backbone, head = param_groups(model)
    assert {id(p) for p in head} == {id(p) for p in model.aspp.parameters()}
    assert len(head) == 2 * len(ASPP_RATES)
    trainable = {id(p) for p in model.backbone.parameters()} - bn_params
    assert {id(p) for p in backbone} == trainable and not bn_params & {id(p) for p in backbone}
    assert not any(p.requires_grad for m in norms for p in m.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model.train()
    model(torch.rand(2, 3, 40, 40))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    v3 = build_seg_net(3, depth=18)
    v3_backbone, v3_head = param_groups(v3)
    assert len(v3_backbone) == len(list(v3.backbone.parameters()))
    assert {id(p) for p in v3_head} == {id(p) for p in v3.classifier.parameters()}


def test_load_seg_net_round_trips_and_refuses_the_other_arch(tmp_path):
    torch.manual_seed(1)
    model = build_seg_net(3, depth=18, arch="deeplabv2").eval()
    torch.save(model.state_dict(), tmp_path / "v2.pt")
    loaded = load_seg_net(tmp_path / "v2.pt", 3, depth=18, arch="deeplabv2").eval()
    x = torch.rand(1, 3, 33, 41)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["out"], model(x)["out"], rtol=0, atol=0)
    with pytest.raises(InputError, match=r"v2.pt: deeplabv2 weights, not deeplabv3"):
        load_seg_net(tmp_path / "v2.pt", 3, depth=18)
    torch.save(build_seg_net(3, depth=18).state_dict(), tmp_path / "v3.pt")
    with pytest.raises(InputError, match=r"v3.pt: deeplabv3 weights, not deeplabv2"):
        load_seg_net(tmp_path / "v3.pt", 3, depth=18, arch="deeplabv2")
    with pytest.raises(InputError, match=r"do not fit a ResNet-34 deeplabv2 with 3 classes"):
        load_seg_net(tmp_path / "v2.pt", 3, depth=34, arch="deeplabv2")
    with pytest.raises(InputError, match=r"'deeplabv1' is not one of"):
        build_seg_net(3, depth=18, arch="deeplabv1")


def test_deeplabv2_trains_one_step_and_evaluates_on_the_demo(tmp_path):
    manifest, classes, labels = write_dataset(tmp_path, [(40, 36), (30, 44)], "train", 2)
    training = train_seg.run(
        manifest=manifest, classes=classes, masks=[labels], out=tmp_path / "seg.pt",
        out_json=tmp_path / "seg_training.json", checkpoint_dir=tmp_path / "ck",
        train_split="train", depth=18, weights=None, arch="deeplabv2", crop_size=32,
        scale_range=(0.75, 1.25), batch_size=2, epochs=1, lr=0.01, head_lr=0.1,
        weight_decay=5e-4, momentum=0.9, poly_power=0.9, seed=0,
    )  # fmt: skip
    assert training["steps"] == 1 and math.isfinite(training["loss"])
    report = eval_seg.run(
        manifest=manifest, classes=classes, model=tmp_path / "seg.pt",
        out_json=tmp_path / "seg.json", split="train", depth=18, arch="deeplabv2",
        protocol=Protocol(scales=(1.0,), flip=False, fusion="mean", crf=None),
        training=tmp_path / "seg_training.json",
    )  # fmt: skip
    stored = json.loads((tmp_path / "seg.json").read_text())
    assert stored["miou"] == report["miou"] and 0.0 <= stored["miou"] <= 1.0
    assert stored["images"] == 2 and stored["training"]["steps"] == 1
    trained = load_seg_net(tmp_path / "seg.pt", 3, depth=18, arch="deeplabv2").eval()
    torch.manual_seed(0)  # the run's initial weights: seed, then build
    initial = build_seg_net(3, depth=18, arch="deeplabv2")
    assert not torch.equal(trained.aspp.branches[0].weight, initial.aspp.branches[0].weight)
    frozen = [
        f"{name}.{key}"
        for name, m in initial.named_modules() if isinstance(m, torch.nn.BatchNorm2d)
        for key in ("weight", "bias", "running_mean", "running_var")
    ]  # fmt: skip
    assert all(torch.equal(trained.state_dict()[k], initial.state_dict()[k]) for k in frozen)
    with torch.no_grad():  # single scale, no flip: the saved model's whole-image argmax
        preds, gts = [], []
        for i in range(2):
            image = normalize(np.asarray(Image.open(tmp_path / "img" / f"im{i}.png")))[None]
            preds.append(trained(image)["out"][0].argmax(dim=0).numpy())
            gts.append(read_label_map(labels / f"im{i}.png", 2))
    assert stored["miou"] == pytest.approx(irnet_miou(preds, gts, 3)[1], abs=1e-6)


def test_train_seg_cli_reads_the_arch():
    import argparse

    parser = argparse.ArgumentParser()
    train_seg.add_arguments(parser)
    required = ["--manifest", "m", "--classes", "c", "--masks", "k", "--out", "o"]
    required += ["--out-json", "j", "--checkpoint-dir", "d"]
    assert parser.parse_args([*required, "--arch", "deeplabv3"]).arch == "deeplabv3"
    assert parser.parse_args(required).arch == "deeplabv2"  # the paper's, as the other defaults
    with pytest.raises(SystemExit):
        parser.parse_args([*required, "--arch", "deeplabv1"])
