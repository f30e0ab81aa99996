"""The co-occurrence demo world: its statistics, parts, backgrounds, and the demo generator."""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

import numpy as np
import pytest

from qaclims import cli
from qaclims.datasets import demo
from qaclims.datasets import demo_world as dw

SIZE = 72


def _scenes(n: int, cooccurrence: float, seed: int = 0) -> list[dw.Scene]:
    rng = np.random.default_rng(seed)
    return [dw.render_scene(rng, SIZE, cooccurrence=cooccurrence) for _ in range(n)]


@pytest.fixture(scope="module")
def scenes() -> list[dw.Scene]:
    return _scenes(400, 0.85)


def _per_class_rates(scenes: list[dw.Scene]) -> np.ndarray:
    own, total = np.zeros(len(dw.CLASSES)), np.zeros(len(dw.CLASSES))
    for s in scenes:
        for c, _ in s.objects:
            total[c] += 1
            own[c] += s.background == dw.BACKGROUNDS[c]
    return own / total


def test_cooccurrence_rate_is_the_configured_one(scenes):
    assert abs(dw.cooccurrence_rate(scenes) - 0.85) <= 0.05
    assert np.all(np.abs(_per_class_rates(scenes) - 0.85) <= 0.1)
    half = _scenes(400, 0.5, seed=1)
    assert abs(dw.cooccurrence_rate(half) - 0.5) <= 0.05
    assert np.all(np.abs(_per_class_rates(half) - 0.5) <= 0.1)
    assert dw.cooccurrence_rate(_scenes(100, 1.0)) == 1.0
    assert dw.cooccurrence_rate(_scenes(200, 0.0)) == 0.0
    # Some scenes hold two classes, and every background shows up.
    assert 0.1 <= np.mean([len({c for c, _ in s.objects}) == 2 for s in scenes]) <= 0.4
    assert {s.background for s in scenes} == set(dw.BACKGROUNDS)


def test_words_classes_and_kinds(scenes):
    assert len(dw.CLASSES) == len(dw.BACKGROUNDS) == len(dw.KINDS) == 5
    assert set(dw.KINDS) == set(dw.CLASSES)
    for name, kinds in dw.KINDS.items():
        assert len(set(kinds)) == 2
        assert all(k.isalpha() and k.islower() for k in kinds)
        assert any(name not in k for k in kinds)
    drawn = {(c, k) for s in scenes for c, k in s.objects}
    assert drawn == {(c, k) for c, name in enumerate(dw.CLASSES) for k in dw.KINDS[name]}


def test_labels_and_sizes(scenes):
    for s in scenes:
        h, w = s.labels.shape
        assert s.image.shape == (h, w, 3) and s.image.dtype == s.labels.dtype == np.uint8
        assert min(h, w) >= SIZE - SIZE // 8 and max(h, w) <= SIZE + SIZE // 8
        assert 1 <= len(s.objects) <= 2
        allowed = {0, 255} | {c + 1 for c, _ in s.objects}
        assert set(np.unique(s.labels).tolist()) <= allowed
        assert 255 in s.labels and s.objects[-1][0] + 1 in s.labels
        # No object fills the frame, and the background stays visible.
        assert 0.02 <= np.mean(s.labels != 0) <= 0.8


def test_labels_cover_every_painted_pixel(monkeypatch):
    """On a flat magenta background (a colour no part has), the pixels that are not magenta
    are exactly the labelled ones: both parts of every object carry its class."""
    magenta = np.array([255, 0, 255], np.float32)
    for name in dw.BACKGROUNDS:
        monkeypatch.setitem(dw.PAINTERS, name, lambda h, w, rng: np.tile(magenta, (h, w, 1)))
    for s in _scenes(60, 0.85, seed=3):
        painted = np.linalg.norm(s.image - magenta, axis=2) > 80
        assert not np.any(painted & (s.labels == 0))
        assert np.mean(painted[(s.labels != 0) & (s.labels != 255)]) > 0.99


def _mean_rgb(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return img[mask].astype(np.float64).mean(0)


def test_parts_differ_and_the_kind_decides_the_part():
    rng = np.random.default_rng(2)
    part_means: dict[str, list[np.ndarray]] = {}
    for cls, name in enumerate(dw.CLASSES):
        for kind in dw.KINDS[name]:
            for _ in range(10):
                img = np.zeros((96, 96, 3), np.float32)
                flip = bool(rng.random() < 0.5)
                r = rng.uniform(15, 30)
                body, part = dw.draw_object(img, cls, kind, 48, 48, r, flip, rng)
                assert body.sum() > 0.1 * r * r and part.sum() > 0.04 * r * r
                assert not np.any(body & part)
                gap = np.linalg.norm(_mean_rgb(img, body) - _mean_rgb(img, part))
                assert gap > 60, (kind, gap)
                part_means.setdefault(kind, []).append(_mean_rgb(img, part))
        first, second = (np.mean(part_means[k], 0) for k in dw.KINDS[name])
        assert np.linalg.norm(first - second) > 60, name


def test_backgrounds_are_recognisable(scenes):
    """A nearest-mean classifier on the background pixels' mean colour names the background."""
    feats = np.array([_mean_rgb(s.image, s.labels == 0) for s in scenes])
    truth = np.array([dw.BACKGROUNDS.index(s.background) for s in scenes])
    fit, test = slice(0, 200), slice(200, None)
    centres = np.array([feats[fit][truth[fit] == b].mean(0) for b in range(len(dw.BACKGROUNDS))])
    guess = np.argmin(np.linalg.norm(feats[test][:, None] - centres[None], axis=2), 1)
    assert np.mean(guess == truth[test]) >= 0.9
    # ... and not by one flat colour: each background varies within and across images.
    for b in range(len(dw.BACKGROUNDS)):
        assert feats[truth == b].std(0).max() > 3
    assert all(s.image[s.labels == 0].std(0).max() > 8 for s in scenes)


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(x for x in root.rglob("*") if x.is_file()):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("world", demo.WORLDS)
def test_generate_is_deterministic(tmp_path, world):
    kw = {"train_images": 3, "val_images": 2, "image_size": 64, "world": world}
    demo.generate(tmp_path / "a", seed=4, **kw)
    demo.generate(tmp_path / "b", seed=4, **kw)
    demo.generate(tmp_path / "c", seed=5, **kw)
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    assert _tree_digest(tmp_path / "a") != _tree_digest(tmp_path / "c")
    names = (tmp_path / "a" / "classes.txt").read_text().split()
    assert tuple(names) == demo.world_classes(world)


def test_default_world_is_cooccurrence_and_its_rate_is_passed_on(tmp_path):
    kw = {"seed": 4, "train_images": 2, "val_images": 1, "image_size": 64}
    demo.generate(tmp_path / "default", **kw)
    demo.generate(tmp_path / "explicit", world="cooccurrence", cooccurrence=0.85, **kw)
    demo.generate(tmp_path / "other", world="cooccurrence", cooccurrence=0.2, **kw)
    assert _tree_digest(tmp_path / "default") == _tree_digest(tmp_path / "explicit")
    assert _tree_digest(tmp_path / "default") != _tree_digest(tmp_path / "other")
    assert inspect.signature(demo.generate).parameters["cooccurrence"].default == 0.85
    assert demo.world_classes("cooccurrence") == dw.CLASSES
    with pytest.raises(ValueError, match="demo world"):
        demo.world_classes("nope")


def test_shapes_world_is_todays_demo(tmp_path):
    """Digests of today's `render` and `generate` (recorded before the cooccurrence world)."""
    assert demo.world_classes("shapes") == demo.CLASSES == ("ball", "crate", "star", "ring", "tent")
    rng = np.random.default_rng(3)
    h = hashlib.sha256()
    for _ in range(4):
        img, labels = demo.render(rng, 64)
        h.update(img.tobytes())
        h.update(labels.tobytes())
        h.update(str(img.shape).encode())
    assert h.hexdigest() == "342e1c2a8d0373ca1b3ccb0a793959df01dc3a2e63289fdc802730b9c3f106e8"
    kw = {"seed": 2, "train_images": 3, "val_images": 2, "image_size": 64}
    demo.generate(tmp_path / "s", world="shapes", cooccurrence=0.3, **kw)
    digest = "646471d5c729990bcbb0395d587d692b895c81e12932492a6e1c13bf4b6a868a"
    assert _tree_digest(tmp_path / "s") == digest


def test_demo_data_cli_takes_world_and_cooccurrence(tmp_path):
    common = ["--seed", "1", "--train-images", "2", "--val-images", "1", "--image-size", "64"]
    args = cli.build_parser("demo_data").parse_args(["demo_data", "--out", "x", *common])
    assert (args.world, args.cooccurrence) == ("cooccurrence", 0.85)
    for world in demo.WORLDS:
        out = tmp_path / world
        cli.main(["demo_data", "--out", str(out), *common, "--world", world, "--cooccurrence", "0"])
        assert tuple((out / "classes.txt").read_text().split()) == demo.world_classes(world)
    kw = {"seed": 1, "train_images": 2, "val_images": 1, "image_size": 64}
    demo.generate(tmp_path / "direct", world="cooccurrence", cooccurrence=0.0, **kw)
    assert _tree_digest(tmp_path / "direct") == _tree_digest(tmp_path / "cooccurrence")
    with pytest.raises(SystemExit):
        cli.build_parser("demo_data").parse_args(
            ["demo_data", "--out", "x", *common, "--world", "v"]
        )
