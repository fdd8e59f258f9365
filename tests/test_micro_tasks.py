"""The offline micro suite: declared split sizes, valid labels, reproducible and disjoint splits, and a
pre-training pool that no task evaluates on."""

from __future__ import annotations

import hashlib

import pytest
import torch

import bench.tasks.micro as micro
from bench.data import TASKS

MICRO = ["digits", "mnist5k", "sprites-loc", "sprites-ori", "shapes-count"]
REAL = {"digits": "digits", "mnist5k": "mnist"}


def _hashes(images: torch.Tensor) -> list[str]:
    return [hashlib.sha256(image.contiguous().numpy().tobytes()).hexdigest() for image in images]


def _clear_caches() -> None:
    """Forget every memoised load so that a second load really rebuilds the splits."""
    for value in vars(micro).values():
        if callable(getattr(value, "cache_clear", None)):
            value.cache_clear()


@pytest.fixture(scope="module")
def loaded():
    return {name: TASKS.get(name).load() for name in MICRO}


@pytest.mark.parametrize("name", MICRO)
def test_micro_splits_have_declared_sizes_and_valid_labels(loaded, name):
    task, data = TASKS.get(name), loaded[name]
    for split, size in micro.SPLIT_SIZES.items():
        part = getattr(data, split)
        assert len(part) == size
        assert part.images.dtype == torch.uint8 and part.images.shape == (size, 3, micro.SIZE, micro.SIZE)
        assert part.labels.dtype == torch.int64
        assert int(part.labels.min()) >= 0 and int(part.labels.max()) < task.num_classes
    assert len(torch.unique(data.train.labels)) > 1


@pytest.mark.parametrize("name", MICRO)
def test_micro_splits_are_disjoint(loaded, name):
    data = loaded[name]
    train, val, test = (set(_hashes(getattr(data, s).images)) for s in ("train", "val", "test"))
    assert len(train) == len(data.train) and len(test) == len(data.test)  # no duplicate within a split either
    assert not train & test
    assert not train & val
    assert not val & test


def test_micro_splits_are_identical_across_loads(loaded):
    _clear_caches()
    for name in MICRO:
        again = TASKS.get(name).load()
        for split in ("train", "val", "test"):
            first, second = getattr(loaded[name], split), getattr(again, split)
            assert first.images is not second.images, "the second load was served from a cache"
            assert torch.equal(first.images, second.images), f"{name}/{split} images differ between loads"
            assert torch.equal(first.labels, second.labels), f"{name}/{split} labels differ between loads"


@pytest.mark.parametrize("name", list(REAL))
def test_pretraining_pool_shares_no_image_with_any_split(loaded, name):
    pool = micro.pretraining_pool(REAL[name])
    assert pool.dtype == torch.uint8 and pool.shape[1:] == (3, micro.SIZE, micro.SIZE) and len(pool) > 0
    used = set()
    for split in ("train", "val", "test"):
        used |= set(_hashes(getattr(loaded[name], split).images))
    assert not set(_hashes(pool)) & used
    # Pool and task images together are the source's images (none lost, none duplicated).
    assert len(pool) + len(used) == loaded[name].info["images_available"]
