"""Golden tests of the IR-label CRF against IRNet's `crf_inference_label` and `cam_to_ir_label`.

References (ALGORITHM §6; REFERENCE_AUDIT #21): IRNet `misc/imutils.py` `crf_inference_label`
(DenseCRF2D, `unary_from_labels(gt_prob=0.7, zero_unsure=False)`, Gaussian sxy 3 / compat 3,
bilateral sxy 50 / srgb 5 / compat 10 on the uint8 RGB, 10 iterations, argmax) and
`step/cam_to_ir_label.py` (planes 0.30 and 0.10 in front of the high-res CAMs, argmax, CRF over
1 + #keys labels, keys; conf = fg, 255 where fg is 0, 0 where fg + bg is 0).
"""

from __future__ import annotations

import argparse

import numpy as np
import pydensecrf.densecrf as dcrf
import pytest
from pydensecrf.utils import unary_from_labels

from qaclims import crf

PAPER = crf.CRFParams(
    gt_prob=0.7, iterations=10, gaussian_sxy=3, gaussian_compat=3, bilateral_sxy=50,
    bilateral_srgb=5, bilateral_compat=10,
)  # fmt: skip


def crf_inference_label(
    img: np.ndarray,
    labels: np.ndarray,
    t: int = 10,
    n_labels: int = 21,
    gt_prob: float = 0.7,
    gaussian: tuple[float, float] = (3, 3),
    bilateral: tuple[float, float, float] = (50, 5, 10),
) -> np.ndarray:
    """IRNet's function, its constants as defaults (other values only for the self-check)."""
    h, w = img.shape[:2]
    d = dcrf.DenseCRF2D(w, h, n_labels)
    d.setUnaryEnergy(unary_from_labels(labels, n_labels, gt_prob=gt_prob, zero_unsure=False))
    d.addPairwiseGaussian(sxy=gaussian[0], compat=gaussian[1])
    d.addPairwiseBilateral(
        sxy=bilateral[0], srgb=bilateral[1], rgbim=np.ascontiguousarray(np.copy(img)),
        compat=bilateral[2],
    )  # fmt: skip
    q = d.inference(t)
    return np.argmax(np.array(q).reshape((n_labels, h, w)), axis=0)


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """A noisy two-object image and a label map with a quarter of its pixels relabelled."""
    rng = np.random.default_rng(0)
    img = np.full((24, 30, 3), 100, np.int64)
    img[4:16, 5:18] = (200, 40, 40)
    img[10:22, 18:28] = (40, 40, 200)
    img = np.clip(img + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
    labels = np.zeros((24, 30), np.int64)
    labels[3:15, 6:20] = 1
    labels[11:20, 17:27] = 2
    noisy = rng.random(labels.shape) < 0.25
    labels[noisy] = rng.integers(0, 3, int(noisy.sum()))
    return img, labels


def test_crf_labels_equal_irnets_crf_inference_label() -> None:
    """crf_labels = IRNet's CRF: Gaussian sxy 3 compat 3, bilateral sxy 50 srgb 5 compat 10."""
    img, labels = _scene()
    want = crf_inference_label(img, labels, n_labels=3)
    np.testing.assert_array_equal(crf.crf_labels(img, labels, 3, PAPER), want)
    # the scene tells the two pairwise terms apart: swapping any of their settings shows
    for gaussian, bilateral in [
        ((50, 3), (3, 5, 10)),
        ((3, 10), (50, 5, 3)),
        ((50, 10), (3, 5, 3)),
    ]:
        swapped = crf_inference_label(
            img, labels, n_labels=3, gaussian=gaussian, bilateral=bilateral
        )
        assert (swapped != want).sum() > 50


def test_ir_label_equals_irnets_cam_to_ir_label() -> None:
    """ir_label: fg map (plane 0.30), bg map (plane 0.10), both CRF'd; 255 where only bg says fg."""
    img, _ = _scene()
    img[:, :4] = (150, 150, 60)  # an olive strip on the left
    cams = np.zeros((2, 24, 30), np.float32)
    cams[0, 4:16, 5:18] = 0.8
    cams[0, :, :4] = 0.2  # on the strip: between the two planes
    cams[1, 10:22, 18:28] = 0.6
    keys = np.array([4, 11])
    got = crf.ir_label(img, cams, keys, fg_threshold=0.30, bg_threshold=0.10, params=PAPER)
    ids = np.pad(keys + 1, (1, 0), mode="constant")
    fg_conf = ids[crf_inference_label(img, np.argmax(np.pad(cams, ((1, 0), (0, 0), (0, 0)),
                  constant_values=0.30), axis=0), n_labels=3)]  # fmt: skip
    bg_conf = ids[crf_inference_label(img, np.argmax(np.pad(cams, ((1, 0), (0, 0), (0, 0)),
                  constant_values=0.10), axis=0), n_labels=3)]  # fmt: skip
    conf = fg_conf.copy()
    conf[fg_conf == 0] = 255
    conf[bg_conf + fg_conf == 0] = 0
    np.testing.assert_array_equal(got, conf)
    assert {0, 5, 12, 255} <= set(np.unique(got).tolist())


def test_command_line_keeps_each_term_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """--gaussian-* reach the Gaussian term, --bilateral-* the bilateral one (CLI → CRFParams)."""
    parser = argparse.ArgumentParser()
    crf.add_arguments(parser)
    flags = {"manifest": "m", "cams": "c", "out": "o", "split": "s", "fg-threshold": "0.3",
             "bg-threshold": "0.1", "gt-prob": "0.7", "iterations": "10", "gaussian-sxy": "3",
             "gaussian-compat": "4", "bilateral-sxy": "50", "bilateral-srgb": "5",
             "bilateral-compat": "10"}  # fmt: skip
    args = parser.parse_args([t for k, v in flags.items() for t in (f"--{k}", v)])
    seen: dict[str, object] = {}
    monkeypatch.setattr(crf, "run", lambda **kw: seen.update(kw))
    crf.main(args)
    assert seen["params"] == crf.CRFParams(
        gt_prob=0.7, iterations=10, gaussian_sxy=3, gaussian_compat=4, bilateral_sxy=50,
        bilateral_srgb=5, bilateral_compat=10,
    )  # fmt: skip
    assert (seen["fg_threshold"], seen["bg_threshold"]) == (0.3, 0.1)
