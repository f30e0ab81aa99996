"""Settings params by name and flags from the same values (qaclims/provenance.py)."""

from __future__ import annotations

import shlex

import pytest

from qaclims import cli
from qaclims.provenance import Source, canonical, render_flags, rule_flags, rule_settings


def _settings(values, sources=None):
    return rule_settings(
        code="c0de", libraries={"torch": "2"}, values=values, sources=sources or {}
    )


def test_swapped_values_give_different_settings():
    """Snakemake would see {0.9, 1e-4} both times; the settings string does not."""
    a = _settings({"momentum": 1e-4, "poly_power": 0.9})
    b = _settings({"momentum": 0.9, "poly_power": 1e-4})
    assert a != b
    assert _settings({"poly_power": 0.9, "momentum": 1e-4}) == a  # order does not matter


def test_settings_record_source_identity_not_path():
    one = Source("/a/clip.safetensors", {"file": "ab12"})
    two = Source("/elsewhere/renamed.safetensors", {"file": "ab12"})
    other = Source("/a/clip.safetensors", {"file": "cd34"})
    assert _settings({}, {"clip": one}) == _settings({}, {"clip": two})
    assert _settings({}, {"clip": one}) != _settings({}, {"clip": other})


def test_canonical_rejects_nan():
    with pytest.raises(ValueError):
        canonical({"x": float("nan")})


def test_flags_render_every_kind_of_value():
    flags = render_flags(
        {
            "fg_threshold": 0.3,
            "enc_token": False,
            "verify_images": True,
            "wordnet_dir": None,
            "scales": [1.0, 0.5],
            "synonyms": [],
            "prompt": "a photo of {}.",
        }
    )
    assert shlex.split(flags) == [
        "--fg-threshold", "0.3", "--no-enc-token", "--verify-images", "--scales", "1.0",
        "0.5", "--synonyms", "--prompt", "a photo of {}.",
    ]  # fmt: skip
    with pytest.raises(TypeError, match="loss_weights"):
        render_flags({"loss_weights": {"frc": 1.0}})


def test_rendered_flags_parse_back_to_the_values():
    """The flags a rule renders are what the stage's parser reads (crf as the example)."""
    values = {
        "split": "train_aug", "fg_threshold": 0.1, "bg_threshold": 0.3, "gt_prob": 0.7,
        "iterations": 10, "gaussian_sxy": 3, "gaussian_compat": 5, "bilateral_sxy": 50,
        "bilateral_srgb": 5, "bilateral_compat": 10,
    }  # fmt: skip
    argv = ["crf", "--manifest", "m", "--cams", "c", "--out", "o"]
    argv += shlex.split(rule_flags(values, {}, {"workers": 3}))
    args = cli.build_parser("crf").parse_args(argv)
    assert {k: getattr(args, k) for k in values} == values
    assert args.workers == 3
