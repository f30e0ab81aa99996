"""RITC: FAT, the vectorised step against a per-pair loop written from ALGORITHM §3, the stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from test_pair_text import CLASSES, PROMPT, write_corpus
from torch.nn import functional as F

from qaclims import ritc
from qaclims.errors import InputError
from qaclims.models import clip_text
from qaclims.models.cam_net import CAMNet
from qaclims.models.mask_clip import PlainCLIPImage, load_image_tower
from qaclims.pair_text import load_pair_texts
from qaclims.tables import CLASSES_SCHEMA, MANIFEST_SCHEMA, write_table

FG = {
    ("a", 0): ["red ball", "ball"],
    ("a", 2): ["gold star", "star"],
    ("b", 1): ["box crate", "crate"],
    ("b", 2): ["star", "star"],
    ("c", 0): ["ball", "toy ball"],
}
BG = {
    ("a", 0): ["sky", "grass"],
    ("a", 2): [],
    ("b", 1): ["sky"],
    ("b", 2): ["wall", "sky", "sea"],
    ("c", 0): ["grass"],
}
LABELS = torch.tensor([[1.0, 0, 1], [0, 1, 1], [1, 0, 0]])


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("clip")
    weights, config = folder / "ritc-clip-tiny.safetensors", folder / "ritc-clip-tiny.json"
    clip_text.tiny_clip(config.stem, weights, seed=0)
    config.write_text(json.dumps(clip_text.TINY_CONFIG))
    return weights, config


@pytest.fixture(scope="module")
def siglip_files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("siglip")
    weights, config = folder / "sig-lip-tiny.safetensors", folder / "sig-lip-tiny.json"
    clip_text.tiny_clip(config.stem, weights, seed=0, config=clip_text.TINY_SIGLIP_CONFIG)
    config.write_text(json.dumps(clip_text.TINY_SIGLIP_CONFIG))
    return weights, config


@pytest.fixture(scope="module")
def corpus_and_emb(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    folder = tmp_path_factory.mktemp("corpus")
    return folder, write_corpus(folder, FG, BG, dim=64)


@pytest.fixture(scope="module")
def corpus(corpus_and_emb) -> Path:
    return corpus_and_emb[0]


def _texts(folder: Path, image_ids=("a", "b", "c"), labels=LABELS):
    return load_pair_texts(
        corpus_fg=folder / "fg.parquet",
        corpus_bg=folder / "bg.parquet",
        features=folder / "features.parquet",
        image_ids=list(image_ids),
        labels=labels,
        class_names=CLASSES,
        prompt=PROMPT,
    )


def _clip(files, depth: int):
    weights, config = files
    tower = load_image_tower(
        config.stem, str(weights), torch.device("cpu"), config_json=config, mask_prompt_depth=depth
    )
    torch.manual_seed(2)
    tower.mask_embedding.data.normal_(std=0.1)
    return tower


def test_fat_keeps_pixels_at_least_alpha_of_each_maps_max():
    maps = torch.tensor([[[0.0, 0.05], [0.1, 1.0]]], requires_grad=True)[None]
    maps2 = torch.tensor([[[0.06, 0.049], [0.5, 0.0]]])[None]
    m = ritc.fat_mask(torch.cat([maps, maps2]), 0.1)
    assert m.tolist() == [[[[0, 0], [1, 1]]], [[[1, 0], [1, 0]]]]
    assert not m.requires_grad


def _reference_loss(model, clip, batch, corpus_emb, alpha, tau, weights, divisor, mask_adapted):
    """ALGORITHM §3 literally: loops over images and present classes, one CLIP call per image."""
    x, labels = batch["image"], batch["label"]
    ids = ["a", "b", "c"]
    A = model.activation_maps(x)
    size = clip.image_size
    xs = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=True)
    frc_total = brc_total = 0.0
    for b in range(len(x)):
        for c in range(labels.shape[1]):
            if labels[b, c] == 0:
                continue
            key = (ids[int(batch["index"][b])], c)
            a = F.interpolate(
                A[b : b + 1, c : c + 1], size=(size, size), mode="bilinear", align_corners=True
            )
            m = (a >= alpha * a.max()).float().detach()
            fg, bg = a * xs[b : b + 1], (1 - a) * xs[b : b + 1]
            if mask_adapted:
                v_fg, v_bg = clip(fg, m)[0], clip(bg, 1 - m)[0]
            else:
                v_fg, v_bg = clip(fg * m)[0], clip(bg * (1 - m))[0]
            v_fg, v_bg = v_fg / v_fg.norm(), v_bg / v_bg.norm()
            e = {t: torch.from_numpy(v) for t, v in corpus_emb.items()}
            t_fg = 0.5 * e[CLASSES[c]] + 0.5 * sum(e[t] for t in FG[key]) / 6 * 3  # 2 questions
            if not BG[key]:
                continue
            s = lambda u, v: torch.exp(u @ v / tau)  # noqa: E731
            s_pos = s(v_fg, t_fg)
            frc_total = frc_total - torch.log(s_pos / (s_pos + sum(s(v_fg, e[t]) for t in BG[key])))
            mean_bg = sum(s(v_bg, e[t]) for t in BG[key]) / len(BG[key])
            brc_total = brc_total - torch.log(mean_bg / (mean_bg + s(v_bg, t_fg)))
    frc_total, brc_total = frc_total / divisor, brc_total / divisor
    return weights[0] * frc_total + weights[1] * brc_total + weights[2] * A.mean()


@pytest.mark.parametrize("mask_adapted", [True, False])
def test_vectorised_step_equals_per_pair_formula(clip_files, corpus_and_emb, mask_adapted):
    corpus, emb = corpus_and_emb
    texts = _texts(corpus)
    clip = _clip(clip_files, depth=2 if mask_adapted else 0)
    torch.manual_seed(0)
    model = CAMNet(3, depth=18, fixed_bn=False)
    model.classifier.weight.data.mul_(20)  # sharper maps: FAT masks differ per pair
    torch.manual_seed(1)
    batch = {"image": torch.randn(3, 3, 64, 64), "label": LABELS, "index": torch.tensor([0, 1, 2])}
    loss_fn = ritc.RITCLoss(clip=clip, texts=texts, pair_sum_divisor=2.0, mask_adapted=mask_adapted)
    model.eval()  # BatchNorm statistics must not move between the two passes
    loss, terms = loss_fn(model, batch)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    want = _reference_loss(model, clip, batch, emb, 0.1, 0.7, (10, 8, 0.2), 2.0, mask_adapted)
    want.backward()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert terms["frc"] > 0 and terms["brc"] > 0
    for g, p in zip(grads, [p for p in model.parameters() if p.requires_grad], strict=True):
        assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-7)
    assert model.classifier.weight.grad.abs().sum() > 0  # through the frozen CLIP
    assert all(p.grad is None for p in clip.parameters())


def test_batch_without_pairs_or_bg_texts_gives_only_the_regulariser(clip_files, corpus):
    texts = _texts(corpus)
    model = CAMNet(3, depth=18, fixed_bn=False).eval()
    loss_fn = ritc.RITCLoss(clip=_clip(clip_files, 2), texts=texts)
    x = torch.randn(2, 3, 64, 64)
    for labels, index in [(torch.zeros(2, 3), [0, 1]), (torch.tensor([[0.0, 0, 1]]), [0])]:
        batch = {"image": x[: len(index)], "label": labels, "index": torch.tensor(index)}
        loss, terms = loss_fn(model, batch)
        assert terms["frc"] == terms["brc"] == 0
        assert loss.item() == pytest.approx(
            0.2 * model.activation_maps(batch["image"]).mean().item()
        )


def test_clip_input_norm_switch():
    texts = None
    x = torch.zeros(1, 3, 64, 64)  # the ImageNet mean colour
    clip = type("C", (), {"image_size": 32, "mean": (0.5, 0.4, 0.3), "std": (0.5, 0.25, 0.2)})()
    imagenet = ritc.RITCLoss(clip=clip, texts=texts).clip_input(x)
    assert imagenet.shape == (1, 3, 32, 32) and torch.equal(imagenet, torch.zeros(1, 3, 32, 32))
    clipped = ritc.RITCLoss(clip=clip, texts=texts, clip_input_norm="clip").clip_input(x)
    want = (torch.tensor(ritc.IMAGENET_MEAN) - torch.tensor(clip.mean)) / torch.tensor(clip.std)
    assert torch.allclose(clipped[0, :, 0, 0], want)


def test_towers_carry_their_models_normalisation(clip_files, siglip_files):
    clip = _clip(clip_files, depth=0)
    assert clip.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))  # OpenAI's
    weights, config = siglip_files
    siglip = load_image_tower(
        config.stem,
        str(weights),
        torch.device("cpu"),
        config_json=config,
        mask_adapted=False,
        mask_prompt_depth=0,
    )
    assert isinstance(siglip, PlainCLIPImage)
    assert (siglip.mean, siglip.std, siglip.image_size, siglip.output_dim) == (
        (0.5,) * 3,
        (0.5,) * 3,
        64,
        64,
    )


def test_plain_step_with_a_siglip_tower_equals_per_pair_formula(siglip_files, corpus_and_emb):
    corpus, emb = corpus_and_emb
    weights, config = siglip_files
    clip = load_image_tower(
        config.stem,
        str(weights),
        torch.device("cpu"),
        config_json=config,
        mask_adapted=False,
        mask_prompt_depth=0,
    )
    torch.manual_seed(0)
    model = CAMNet(3, depth=18, fixed_bn=False)
    model.classifier.weight.data.mul_(20)
    torch.manual_seed(1)
    batch = {"image": torch.randn(3, 3, 64, 64), "label": LABELS, "index": torch.tensor([0, 1, 2])}
    loss_fn = ritc.RITCLoss(clip=clip, texts=_texts(corpus), mask_adapted=False)
    model.eval()
    loss, terms = loss_fn(model, batch)
    loss.backward()
    grad = model.classifier.weight.grad.clone()
    model.zero_grad()
    want = _reference_loss(model, clip, batch, emb, 0.1, 0.7, (10, 8, 0.2), 2.0, False)
    want.backward()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    assert terms["frc"] > 0 and terms["brc"] > 0
    assert grad.abs().sum() > 0 and torch.allclose(grad, model.classifier.weight.grad, atol=1e-6)
    assert all(p.grad is None for p in clip.parameters())


@pytest.mark.parametrize("how", ["mask_adapted", "ovseg", "prompts"])
def test_mask_adapted_siglip_is_refused_naming_the_tower(siglip_files, tmp_path, how):
    weights, config = siglip_files
    kw = {
        "mask_adapted": {"mask_adapted": True, "mask_prompt_depth": 2},
        "ovseg": {"mask_adapted": False, "mask_prompt_depth": 0, "ovseg": tmp_path / "o.pth"},
        "prompts": {"mask_adapted": False, "mask_prompt_depth": 2},
    }[how]
    with pytest.raises(
        InputError,
        match=r"CLIP sig-lip-tiny: mask-adapted CLIP .* needs open_clip's VisionTransformer image "
        r"tower with CLS pooling; sig-lip-tiny has a timm test_vit tower pooling 'map'\. Use "
        r"ritc.clip_mode: plain",
    ):
        load_image_tower(config.stem, str(weights), torch.device("cpu"), config_json=config, **kw)


@pytest.mark.parametrize("batchnorm", ["train", "frozen"])
def test_stage_trains_from_the_baseline(batchnorm, clip_files, corpus, tmp_path):
    rows = []
    for i, image_id in enumerate(["a", "b", "c", "d"]):
        Image.fromarray(np.full((40, 48, 3), 60 * i, np.uint8)).save(tmp_path / f"{image_id}.png")
        labels = LABELS[i].nonzero().flatten().tolist() if i < 3 else []
        rows.append(
            {
                "image_id": image_id,
                "split": "train_aug",
                "path": str(tmp_path / f"{image_id}.png"),
                "height": 40,
                "width": 48,
                "labels": labels,
                "label_source": "mask",
                "has_mask": False,
                "mask_path": None,
            }
        )
    write_table(pa.Table.from_pylist(rows), tmp_path / "manifest.parquet", MANIFEST_SCHEMA)
    classes = pa.Table.from_pylist([{"class_id": i, "name": n} for i, n in enumerate(CLASSES)])
    write_table(classes, tmp_path / "classes.parquet", CLASSES_SCHEMA)
    torch.manual_seed(0)
    baseline = CAMNet(3, depth=18, fixed_bn=True)
    torch.save(baseline.state_dict(), tmp_path / "baseline.pt")
    weights, config = clip_files
    summary = ritc.run(
        manifest=tmp_path / "manifest.parquet",
        classes=tmp_path / "classes.parquet",
        baseline=tmp_path / "baseline.pt",
        corpus_fg=corpus / "fg.parquet",
        corpus_bg=corpus / "bg.parquet",
        features=corpus / "features.parquet",
        out=tmp_path / "ritc.pt",
        checkpoint_dir=tmp_path / "ck",
        split="train_aug",
        depth=18,
        clip_architecture=config.stem,
        clip_pretrained=str(weights),
        clip_config=config,
        ovseg=None,
        clip_mode="mask_adapted",
        mask_prompt_depth=2,
        clip_input_norm="imagenet",
        batchnorm=batchnorm,
        prompt=PROMPT,
        crop_size=48,
        resize_range=(40, 56),
        batch_size=2,
        epochs=1,
        lr=0.01,
        classifier_lr=0.1,
        weight_decay=1e-4,
        momentum=1e-4,
        poly_power=0.9,
        alpha=0.1,
        tau=0.7,
        loss_weights=(10.0, 8.0, 0.2),
        pair_sum_divisor=2.0,
        seed=0,
        out_history=tmp_path / "history.parquet",
    )
    assert summary["steps"] == 2  # d has no labels but stays, as in the reference (§9)
    history = pq.read_table(tmp_path / "history.parquet").to_pydict()
    assert list(history) == ["step", "epoch", "lr", "lr_group_1", "frc", "brc", "reg", "loss"]
    assert history["step"] == [1, 2] and history["lr"][0] == 0.01
    for frc, brc, reg, loss in zip(
        *(history[k] for k in ("frc", "brc", "reg", "loss")), strict=True
    ):
        assert loss == pytest.approx(10.0 * frc + 8.0 * brc + 0.2 * reg, rel=1e-5)
    out = torch.load(tmp_path / "ritc.pt", weights_only=True)
    assert out.keys() == baseline.state_dict().keys()
    assert not torch.equal(out["classifier.weight"], baseline.classifier.weight)
    assert torch.equal(out["backbone.conv1.weight"], baseline.backbone.conv1.weight)
    stats_kept = torch.equal(out["backbone.bn1.running_mean"], baseline.backbone.bn1.running_mean)
    assert stats_kept == (batchnorm == "frozen")


def test_pair_sums_are_scaled_by_the_world_size(clip_files, corpus, monkeypatch):
    """Under N processes each rank's pair sum is × N, so the averaged gradient is Σ / divisor."""
    model = CAMNet(3, depth=18, fixed_bn=False).eval()
    loss_fn = ritc.RITCLoss(clip=_clip(clip_files, 2), texts=_texts(corpus))
    batch = {"image": torch.randn(2, 3, 64, 64), "label": LABELS[:2], "index": torch.tensor([0, 1])}
    one, terms_one = loss_fn(model, batch)
    monkeypatch.setattr(ritc.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(ritc.dist, "get_world_size", lambda: 2)
    two, terms_two = loss_fn(model, batch)
    reg = 0.2 * terms_one["reg"]
    assert two.item() - reg == pytest.approx(2 * (one.item() - reg), rel=1e-5)
    assert terms_two == pytest.approx(terms_one)
