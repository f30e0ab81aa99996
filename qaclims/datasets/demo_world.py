"""The co-occurrence demo world: the failure QA-CLIMS fixes, made small and measurable.

Each class has its own background (boats on water, trains on rails, ...) and is drawn on it
with probability `cooccurrence`, so an image-level classifier can score well by looking at the
background: its CAM spills onto it. Each object has two parts of different look, both
labelled as the class, so a CAM can also fire on one part only and miss the other. One part's
look tells the object's two kinds apart, which gives the foreground questions a true, visible
answer. Everything is drawn with numpy and cv2 from one seeded generator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import cv2
import numpy as np

CLASSES: tuple[str, ...] = ("boat", "train", "bird", "car", "cow")
# BACKGROUNDS[c] is CLASSES[c]'s own background.
BACKGROUNDS: tuple[str, ...] = ("water", "rails", "sky", "road", "grass")
# Two kinds per class; the kind decides the look of the object's second part.
KINDS: dict[str, tuple[str, str]] = {
    "boat": ("sailboat", "canoe"),
    "train": ("tram", "locomotive"),
    "bird": ("gull", "parrot"),
    "car": ("sedan", "jeep"),
    "cow": ("holstein", "jersey"),
}
# RGB of each class's first part, and of the second part per kind.
BODY_COLOURS: dict[str, tuple[int, int, int]] = {
    "boat": (120, 60, 35),
    "train": (70, 80, 160),
    "bird": (150, 120, 90),
    "car": (200, 35, 40),
    "cow": (225, 215, 195),
}
PART_COLOURS: dict[str, tuple[int, int, int]] = {
    "sailboat": (240, 240, 235),
    "canoe": (235, 195, 40),
    "tram": (245, 230, 150),
    "locomotive": (30, 30, 30),
    "gull": (205, 210, 215),
    "parrot": (60, 200, 80),
    "sedan": (150, 210, 230),
    "jeep": (95, 105, 50),
    "holstein": (25, 25, 25),
    "jersey": (140, 80, 40),
}
# Chance of a second object; each object after the first follows the same co-occurrence rule.
SECOND_OBJECT = 0.75
Poly = list[tuple[float, float]]


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # H×W×3 uint8
    labels: np.ndarray  # H×W uint8: 0 background, c+1 class c, 255 ignore band on borders
    background: str  # the BACKGROUNDS word drawn behind everything
    objects: tuple[tuple[int, str], ...]  # (class index, kind word) per object, drawing order


class _Canvas:
    """Masks in an object's own frame: u right, v down, both in [-1, 1], scaled by r."""

    def __init__(self, h: int, w: int, cy: float, cx: float, r: float, flip: bool):
        self.shape, self.cy, self.cx, self.r = (h, w), cy, cx, r
        self.sign = -1.0 if flip else 1.0

    def _xy(self, u: float, v: float) -> tuple[int, int]:
        return round(self.cx + self.sign * u * self.r), round(self.cy + v * self.r)

    def poly(self, *polys: Poly) -> np.ndarray:
        mask = np.zeros(self.shape, np.uint8)
        pts = [np.array([self._xy(u, v) for u, v in p], np.int32) for p in polys]
        cv2.fillPoly(mask, pts, 1, lineType=cv2.LINE_8)
        return mask.astype(bool)

    def box(self, u0: float, v0: float, u1: float, v1: float) -> np.ndarray:
        return self.poly([(u0, v0), (u1, v0), (u1, v1), (u0, v1)])

    def ellipse(self, u: float, v: float, au: float, av: float, angle: float = 0.0) -> np.ndarray:
        mask = np.zeros(self.shape, np.uint8)
        axes = (max(1, round(au * self.r)), max(1, round(av * self.r)))
        cv2.ellipse(mask, self._xy(u, v), axes, self.sign * angle, 0, 360, 1, -1)
        return mask.astype(bool)

    def line(self, a: tuple[float, float], b: tuple[float, float], width: float) -> np.ndarray:
        mask = np.zeros(self.shape, np.uint8)
        cv2.line(mask, self._xy(*a), self._xy(*b), 1, max(1, round(width * self.r)))
        return mask.astype(bool)


def _boat(k: _Canvas, kind: str) -> tuple[np.ndarray, np.ndarray]:
    hull = k.poly([(-1, 0.15), (1, 0.15), (0.7, 0.55), (-0.75, 0.55)])
    if kind == "sailboat":
        part = k.poly(
            [(-0.05, 0.1), (-0.05, -0.95), (0.75, 0.1)], [(-0.15, 0.1), (-0.15, -0.7), (-0.7, 0.1)]
        )
    else:
        part = k.line((-0.25, -0.6), (0.35, 0.5), 0.1) | k.ellipse(-0.3, -0.7, 0.12, 0.25, 30)
    return hull & ~part, part


def _train(k: _Canvas, kind: str) -> tuple[np.ndarray, np.ndarray]:
    body = k.poly([(-1, -0.4), (0.75, -0.4), (1, 0.0), (1, 0.45), (-1, 0.45)])
    if kind == "tram":
        part = np.zeros_like(body)
        for u in (-0.85, -0.45, -0.05, 0.35):
            part |= k.box(u, -0.28, u + 0.28, 0.05)
    else:
        part = (
            k.box(-1, -0.85, -0.45, -0.4) | k.box(0.4, -0.8, 0.62, -0.4) | k.box(0.85, 0.0, 1, 0.45)
        )
    return body & ~part, part


def _bird(k: _Canvas, kind: str) -> tuple[np.ndarray, np.ndarray]:
    body = (
        k.ellipse(0, 0.15, 0.6, 0.33)
        | k.ellipse(0.6, -0.15, 0.24, 0.24)
        | k.poly([(0.78, -0.25), (1, -0.12), (0.78, -0.05)], [(-0.5, 0.1), (-1, -0.15), (-1, 0.4)])
    )
    if kind == "gull":
        part = k.poly(
            [(-0.45, 0.05), (0.3, 0.05), (-0.15, -0.95)], [(-0.35, 0.05), (0.1, 0.05), (-0.8, -0.7)]
        )
    else:
        part = k.ellipse(-0.1, 0.1, 0.45, 0.2, -12)
    return body & ~part, part


def _car(k: _Canvas, kind: str) -> tuple[np.ndarray, np.ndarray]:
    body = (
        k.box(-1, -0.12, 1, 0.4)
        | k.ellipse(-0.55, 0.45, 0.2, 0.2)
        | k.ellipse(0.55, 0.45, 0.2, 0.2)
    )
    if kind == "sedan":
        part = k.poly([(-0.6, -0.12), (0.65, -0.12), (0.35, -0.55), (-0.35, -0.55)])
    else:
        part = k.box(-0.75, -0.7, 0.3, -0.12)
    return body & ~part, part


def _cow(k: _Canvas, kind: str) -> tuple[np.ndarray, np.ndarray]:
    body = k.ellipse(-0.1, 0.0, 0.65, 0.35)
    for u in (-0.6, -0.35, 0.2, 0.4):
        body |= k.box(u, 0.1, u + 0.13, 0.8)
    spots = k.ellipse(-0.35, -0.05, 0.2, 0.14, 20) | k.ellipse(0.15, 0.1, 0.17, 0.12, -30)
    part = k.ellipse(0.72, -0.22, 0.25, 0.19, 25) | (spots & body)
    return body & ~part, part


SHAPES: dict[str, Callable[[_Canvas, str], tuple[np.ndarray, np.ndarray]]] = {
    "boat": _boat,
    "train": _train,
    "bird": _bird,
    "car": _car,
    "cow": _cow,
}


def _paint(img: np.ndarray, mask: np.ndarray, rgb: tuple[int, int, int], rng: np.random.Generator):
    """Fill `mask` with a jittered colour and a little per-pixel shading."""
    base = np.asarray(rgb, np.float32) + rng.normal(0, 10, 3)
    shade = 0.88 + 0.12 * rng.random(int(mask.sum()))
    img[mask] = base[None, :] * shade[:, None].astype(np.float32)


def draw_object(
    img: np.ndarray, cls: int, kind: str, cy: float, cx: float, r: float, flip: bool,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Paint one object of class `cls` into `img`; returns its two part masks (body, kind part)."""
    name = CLASSES[cls]
    body, part = SHAPES[name](_Canvas(*img.shape[:2], cy, cx, r, flip), kind)
    _paint(img, body, BODY_COLOURS[name], rng)
    _paint(img, part, PART_COLOURS[kind], rng)
    return body, part


def _jitter(rgb: Iterable[float], rng: np.random.Generator, sd: float = 14.0) -> np.ndarray:
    return np.asarray(list(rgb), np.float32) + rng.normal(0, sd, 3).astype(np.float32)


def _water(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Blue with horizontal ripples that wobble a little along x."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = yy / rng.uniform(1.5, 3.0) + 0.8 * np.sin(xx / rng.uniform(6, 14) + rng.uniform(0, 6))
    shade = 1.0 + 0.18 * np.sin(phase)
    return _jitter((40, 95, 175), rng) * shade[..., None]


def _rails(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Grey speckled ballast, brown sleepers across it, two dark rails along it."""
    img = _jitter((135, 128, 118), rng, 7) * (0.7 + 0.4 * rng.random((h, w, 1), np.float32))
    gauge = rng.uniform(0.3, 0.45) * w
    x0 = rng.uniform(0.1 * w, 0.9 * w - gauge)
    sleeper = _jitter((95, 70, 50), rng, 8)
    step = rng.uniform(9, 14)
    for y in np.arange(rng.uniform(0, step), h, step):
        img[
            round(y) : round(y) + 4, max(0, round(x0 - 0.15 * gauge)) : round(x0 + 1.15 * gauge)
        ] = sleeper
    for x in (x0, x0 + gauge):
        img[:, round(x) - 1 : round(x) + 2] = _jitter((55, 55, 60), rng, 5)
    return img


def _sky(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Light blue, paler towards the horizon, with soft white clouds."""
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img = _jitter((100, 150, 225), rng) * (1 - t) + _jitter((185, 210, 240), rng) * t
    img = np.broadcast_to(img, (h, w, 3)).copy()
    cloud = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(2, 5))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        for _ in range(4):
            centre = (round(cx + rng.normal(0, w / 12)), round(cy + rng.normal(0, h / 30)))
            axes = (round(rng.uniform(0.06, 0.14) * w), round(rng.uniform(0.03, 0.07) * h))
            cv2.ellipse(cloud, centre, axes, 0, 0, 360, 1.0, -1)
    cloud = cv2.GaussianBlur(cloud, (0, 0), max(1.0, w / 60))[..., None]
    return img * (1 - cloud) + np.float32(245) * cloud


def _road(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Dark grey asphalt with a dashed centre line."""
    img = _jitter((65, 65, 70), rng, 8) * (0.85 + 0.3 * rng.random((h, w, 1), np.float32))
    x = round(rng.uniform(0.35, 0.65) * w)
    dash, paint = (
        rng.uniform(10, 18),
        _jitter((235, 225, 150) if rng.random() < 0.5 else (235, 235, 235), rng, 6),
    )
    for y in np.arange(rng.uniform(-dash, 0), h, 2 * dash):
        img[max(0, round(y)) : max(0, round(y + dash)), x - 1 : x + 2] = paint
    return img


def _grass(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Green with blotchy light and many short blades in lighter and darker greens."""
    blotch = cv2.resize(rng.random((h // 10 + 2, w // 10 + 2)).astype(np.float32), (w, h))
    img = _jitter((65, 135, 45), rng) * (0.8 + 0.35 * blotch[..., None])
    base = img.mean((0, 1))
    for _ in range(h * w // 25):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        tip = (round(x + rng.normal(0, 1.5)), round(y - rng.uniform(3, 7)))
        colour = tuple(float(c) for c in base * rng.uniform(0.6, 1.35))
        cv2.line(img, (round(x), round(y)), tip, colour, 1)
    return img


PAINTERS: dict[str, Callable[[int, int, np.random.Generator], np.ndarray]] = {
    "water": _water,
    "rails": _rails,
    "sky": _sky,
    "road": _road,
    "grass": _grass,
}


def _owner_or_other(owner: int, cooccurrence: float, rng: np.random.Generator) -> int:
    """`owner` with probability `cooccurrence`, else a uniformly drawn other index."""
    if rng.random() < cooccurrence:
        return owner
    return int(rng.choice([c for c in range(len(CLASSES)) if c != owner]))


def _place(
    r: float, h: int, w: int, taken: list[np.ndarray], rng: np.random.Generator
) -> tuple[float, float]:
    """Centre (cy, cx) of an object of half-size r inside the frame, a few tries at not
    hiding much of the objects already drawn (boxes in `taken`)."""
    for _ in range(10):
        cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
        box = np.array([cy - r, cx - r, cy + r, cx + r])
        overlap = [
            np.prod(np.clip(np.minimum(box[2:], t[2:]) - np.maximum(box[:2], t[:2]), 0, None))
            for t in taken
        ]
        if max(overlap, default=0.0) < 0.25 * (2 * r) ** 2:
            break
    taken.append(box)
    return cy, cx


def render_scene(rng: np.random.Generator, size: int, *, cooccurrence: float) -> Scene:
    """One scene: a background and 1-2 two-part objects, each on its own background with
    probability `cooccurrence`.

    The first object's class is uniform and picks the background (its own with probability
    `cooccurrence`, else a uniform other one); a second object (probability SECOND_OBJECT)
    is the background's owner with probability `cooccurrence`, else another class. Either
    way every class sits on its own background in a `cooccurrence` share of its objects. A
    second object forced to be of another class could not keep that share (at 1.0 no other
    class has the background), so two-class scenes follow from it: about 20 % at 0.85.
    """
    h = int(rng.integers(size - size // 8, size + size // 8 + 1))
    w = int(rng.integers(size - size // 8, size + size // 8 + 1))
    first = int(rng.integers(len(CLASSES)))
    bg = _owner_or_other(first, cooccurrence, rng)
    classes = [first]
    if rng.random() < SECOND_OBJECT:
        classes.append(_owner_or_other(bg, cooccurrence, rng))
    img = PAINTERS[BACKGROUNDS[bg]](h, w, rng).astype(np.float32)
    labels = np.zeros((h, w), np.uint8)
    objects, taken = [], []
    short = min(h, w)
    for cls in classes:
        kind = KINDS[CLASSES[cls]][int(rng.integers(2))]
        r = rng.uniform(0.15, 0.35) * short
        cy, cx = _place(r, h, w, taken, rng)
        body, part = draw_object(img, cls, kind, cy, cx, r, bool(rng.random() < 0.5), rng)
        labels[body | part] = cls + 1
        objects.append((cls, kind))
    kernel = np.ones((3, 3), np.uint8)
    labels[cv2.dilate(labels, kernel) != cv2.erode(labels, kernel)] = 255
    img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    return Scene(img, labels, BACKGROUNDS[bg], tuple(objects))


def cooccurrence_rate(scenes: Iterable[Scene]) -> float:
    """Share of each class's objects drawn on that class's own background, averaged over the
    classes that appear."""
    own = np.zeros(len(CLASSES))
    total = np.zeros(len(CLASSES))
    for scene in scenes:
        for cls, _ in scene.objects:
            total[cls] += 1
            own[cls] += scene.background == BACKGROUNDS[cls]
    seen = total > 0
    return float(np.mean(own[seen] / total[seen]))
