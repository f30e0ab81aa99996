"""The final model's test-time protocol (scales, flip, fusion, CRF), its evaluation and the
VOC test-server export."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_golden_eval import irnet_miou
from test_irn import write_dataset  # tests/ is on sys.path under pytest's default import mode

from qaclims import eval_seg, export_voc
from qaclims.augment import normalize
from qaclims.errors import InputError
from qaclims.images import read_label_map, read_rgb, voc_palette
from qaclims.models.seg_net import build_seg_net
from qaclims.seg_predict import (
    Protocol,
    SegCRF,
    crf_refine,
    fused_probabilities,
    predict_labels,
)

CPU = torch.device("cpu")
PAPER_CRF = SegCRF(
    iterations=10, gaussian_sxy=1, gaussian_compat=3, bilateral_sxy=67, bilateral_srgb=3,
    bilateral_compat=4,
)  # fmt: skip


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_seg_net(3, depth=18).eval()


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_one_scale_without_flip_is_the_single_scale_prediction(net):
    rgb = _image(37, 50)
    with torch.no_grad():
        plain = net(normalize(rgb)[None])["out"][0].softmax(dim=0)
    for fusion in ("max", "mean"):
        probs = fused_probabilities(net, rgb, Protocol((1.0,), False, fusion, None), CPU)
        torch.testing.assert_close(probs, plain, rtol=0, atol=1e-6)
    labels = predict_labels(net, rgb, Protocol((1.0,), False, "max", None), CPU)
    assert labels.dtype == np.uint8 and np.array_equal(labels, plain.argmax(dim=0).numpy())


@pytest.mark.parametrize("fusion", ["max", "mean"])
def test_flip_mirrors_the_prediction_of_a_mirrored_image(net, fusion):
    """With flip the protocol sees {x, mirror x} either way: mirroring the image mirrors the
    prediction exactly (the mirrored half must be mirrored back); without flip it does not."""
    rgb = _image(33, 46, seed=1)
    mirrored = np.ascontiguousarray(rgb[:, ::-1])
    on = Protocol((1.0, 0.75), True, fusion, None)
    a, b = (fused_probabilities(net, x, on, CPU) for x in (rgb, mirrored))
    torch.testing.assert_close(b, a.flip(-1), rtol=0, atol=1e-5)
    torch.testing.assert_close(a.sum(dim=0), torch.ones(a.shape[1:]), rtol=0, atol=1e-5)
    off = Protocol((1.0, 0.75), False, fusion, None)
    c, d = (fused_probabilities(net, x, off, CPU) for x in (rgb, mirrored))
    assert (d - c.flip(-1)).abs().max() > 1e-3  # a random net is not mirror-symmetric
    assert (a - c).abs().max() > 1e-3  # and flip changes the prediction


def test_scales_resize_the_input_and_fuse_at_full_size(net):
    """Scale s: the normalised image resized bilinearly to (int(H·s), int(W·s)), the logits
    resized back; max fusion = softmax of the pixel-wise max, mean = mean of the softmax."""
    rgb = _image(41, 30, seed=2)
    x = normalize(rgb)[None]
    logits = []
    with torch.no_grad():
        for s in (1.0, 0.5, 1.5):
            small = F.interpolate(x, size=(int(41 * s), int(30 * s)), mode="bilinear")
            out = net(x if s == 1.0 else small)["out"]
            logits.append(F.interpolate(out, size=(41, 30), mode="bilinear")[0])
    stacked = torch.stack(logits)
    want_max = stacked.max(dim=0).values.softmax(dim=0)
    want_mean = stacked.softmax(dim=1).mean(dim=0)
    got_max = fused_probabilities(net, rgb, Protocol((1.0, 0.5, 1.5), False, "max", None), CPU)
    got_mean = fused_probabilities(net, rgb, Protocol((1.0, 0.5, 1.5), False, "mean", None), CPU)
    assert got_max.shape == got_mean.shape == (3, 41, 30)
    torch.testing.assert_close(got_max, want_max, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_mean, want_mean, rtol=0, atol=1e-5)
    assert (got_max - got_mean).abs().max() > 1e-3


def test_crf_cleans_noisy_probabilities_along_the_image_edges():
    """Two flat regions, probabilities right on average but noisy: the CRF's pairwise terms
    remove most of the salt-and-pepper errors of the plain argmax."""
    height, width = 40, 60
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[:, width // 2 :] = 255
    truth = np.zeros((height, width), np.int64)
    truth[:, width // 2 :] = 1
    rng = np.random.default_rng(0)
    scores = np.stack([truth == 0, truth == 1, np.zeros_like(truth, bool)]).astype(np.float32)
    noisy = torch.from_numpy(scores + rng.normal(0, 0.8, scores.shape).astype(np.float32))
    probs = noisy.softmax(dim=0).numpy()
    refined = crf_refine(rgb, probs, PAPER_CRF)
    assert refined.shape == (3, height, width)
    np.testing.assert_allclose(refined.sum(axis=0), 1.0, atol=1e-4)
    before = (probs.argmax(axis=0) != truth).sum()
    after = (refined.argmax(axis=0) != truth).sum()
    assert before > 200 and after < before / 4
    with pytest.raises(InputError, match="image is"):
        crf_refine(rgb[:10], probs, PAPER_CRF)


def test_predict_labels_with_crf_returns_a_label_map_of_the_image(net):
    rgb = _image(29, 35, seed=3)
    plain = predict_labels(net, rgb, Protocol((1.0,), False, "max", None), CPU)
    with_crf = predict_labels(net, rgb, Protocol((1.0,), False, "max", PAPER_CRF), CPU)
    assert with_crf.shape == (29, 35) and with_crf.dtype == np.uint8
    assert set(np.unique(with_crf)) <= {0, 1, 2}
    assert (with_crf != plain).any()


def test_protocol_rejects_bad_scales_and_fusions():
    with pytest.raises(InputError, match="positive scales"):
        Protocol((1.0, 0.0), False, "max", None)
    with pytest.raises(InputError, match="fusion 'median'"):
        Protocol((1.0,), False, "median", None)


def test_eval_seg_scores_the_model_and_records_the_protocol(tmp_path, net):
    manifest, classes, labels = write_dataset(tmp_path, [(40, 36), (30, 44)], "train", 2)
    model = tmp_path / "seg.pt"
    torch.save(net.state_dict(), model)
    training = tmp_path / "seg_training.json"
    training.write_text(json.dumps({"steps": 2, "loss": 0.5}))
    single = Protocol((1.0,), False, "max", None)
    report = eval_seg.run(
        manifest=manifest, classes=classes, model=model, out_json=tmp_path / "a.json",
        split="train", depth=18, protocol=single, training=training,
    )  # fmt: skip
    stored = json.loads((tmp_path / "a.json").read_text())
    assert stored == json.loads(json.dumps(report))
    assert stored["protocol"] == {"scales": [1.0], "flip": False, "fusion": "max", "crf": False}
    assert stored["training"] == {"steps": 2, "loss": 0.5} and stored["images"] == 2
    with torch.no_grad():  # single scale: the plain argmax, scored by IRNet's metric
        preds = [
            net(normalize(read_rgb(tmp_path / "img" / f"im{i}.png"))[None])["out"][0]
            .argmax(dim=0)
            .numpy()
            for i in range(2)
        ]
    gts = [read_label_map(labels / f"im{i}.png", 2) for i in range(2)]
    iou, miou = irnet_miou(preds, gts, 3)
    assert stored["miou"] == pytest.approx(miou, abs=1e-6)
    assert list(stored["per_class_iou"].values()) == pytest.approx(list(iou), abs=1e-6)

    paper = Protocol((1.0, 0.5, 0.75), True, "max", PAPER_CRF)
    eval_seg.run(
        manifest=manifest, classes=classes, model=model, out_json=tmp_path / "b.json",
        split="train", depth=18, protocol=paper,
    )  # fmt: skip
    stored = json.loads((tmp_path / "b.json").read_text())
    assert stored["protocol"] == {
        "scales": [1.0, 0.5, 0.75], "flip": True, "fusion": "max",
        "crf": {"iterations": 10, "gaussian_sxy": 1, "gaussian_compat": 3, "bilateral_sxy": 67,
                "bilateral_srgb": 3, "bilateral_compat": 4},
    }  # fmt: skip
    assert "training" not in stored
    with pytest.raises(InputError, match="no 'val' images"):
        eval_seg.run(
            manifest=manifest, classes=classes, model=model, out_json=tmp_path / "c.json",
            split="val", depth=18, protocol=single,
        )  # fmt: skip
    assert not (tmp_path / "c.json").exists()


def _test_set(tmp_path, sizes):
    images = tmp_path / "VOC2012" / "JPEGImages"
    images.mkdir(parents=True)
    ids = [f"2008_{i:06d}" for i in range(len(sizes))]
    for (h, w), image_id in zip(sizes, ids, strict=True):
        Image.fromarray(_image(h, w, seed=h)).save(images / f"{image_id}.jpg", quality=95)
    test_list = tmp_path / "VOC2012" / "ImageSets" / "Segmentation" / "test.txt"
    test_list.parent.mkdir(parents=True)
    test_list.write_text("".join(f"{i}\n" for i in ids))
    return ids, test_list, images


def test_export_writes_voc_palette_pngs_and_a_tar_of_exactly_them(tmp_path, net):
    sizes = [(37, 50), (44, 31), (25, 25)]
    ids, test_list, images = _test_set(tmp_path, sizes)
    _, classes, _ = write_dataset(tmp_path / "data", [(8, 8)], "train", 2)
    model = tmp_path / "seg.pt"
    torch.save(net.state_dict(), model)
    protocol = Protocol((1.0, 0.75), True, "max", PAPER_CRF)
    out_dir, out_tar = tmp_path / "voc_test" / "results", tmp_path / "voc_test" / "results.tgz"
    export_voc.run(
        model=model, classes=classes, test_list=test_list, images=images, out_dir=out_dir,
        out_tar=out_tar, depth=18, protocol=protocol,
    )  # fmt: skip
    folder = out_dir / "VOC2012" / "Segmentation" / "comp6_test_cls"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{i}.png" for i in ids)
    for image_id, (h, w) in zip(ids, sizes, strict=True):
        with Image.open(folder / f"{image_id}.png") as png:
            assert png.mode == "P" and png.size == (w, h)
            assert png.getpalette()[: 3 * 256] == voc_palette()
            stored = np.asarray(png)
        rgb = read_rgb(images / f"{image_id}.jpg")
        assert np.array_equal(stored, predict_labels(net, rgb, protocol, CPU))
    with tarfile.open(out_tar, "r:gz") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    prefix = "results/VOC2012/Segmentation/comp6_test_cls/"
    assert sorted(files) == sorted(f"{prefix}{i}.png" for i in ids)
    for name, data in files.items():
        assert data == (folder / name.rpartition("/")[2]).read_bytes()
    assert sorted(p.name for p in out_tar.parent.iterdir()) == ["results", "results.tgz"]


def test_export_stopped_by_a_bad_image_leaves_no_folder_or_archive(tmp_path, net):
    ids, test_list, images = _test_set(tmp_path, [(20, 24), (22, 26)])
    _, classes, _ = write_dataset(tmp_path / "data", [(8, 8)], "train", 2)
    torch.save(net.state_dict(), tmp_path / "seg.pt")
    out = tmp_path / "voc_test"
    kwargs = dict(
        model=tmp_path / "seg.pt", classes=classes, test_list=test_list, images=images,
        out_dir=out / "results", out_tar=out / "results.tgz", depth=18,
        protocol=Protocol((1.0,), False, "max", None),
    )  # fmt: skip
    test_list.write_text(f"{ids[0]}\n2008_999999\n")
    with pytest.raises(InputError, match=r"1 test images .* missing \(first: .*2008_999999.jpg"):
        export_voc.run(**kwargs)
    test_list.write_text(f"{ids[0]}\n{ids[1]}\n")
    (images / f"{ids[1]}.jpg").write_bytes(b"not a jpeg")  # found, then fails mid-export
    with pytest.raises(InputError, match="unreadable image"):
        export_voc.run(**kwargs)
    assert list(out.iterdir()) == []
