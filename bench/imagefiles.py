"""Splits backed by image files on disk: decoded with PIL in DataLoader workers, so decoding overlaps compute.

Batches are reproducible whatever the worker count: the batch order *and* one augmentation seed per image are drawn
from the run's generator in the main process, and each image is transformed under its own seed. Augmentation applies
only on shuffled (training) passes; unshuffled passes (evaluation, feature caching, SPT's image sample) use the
deterministic eval pipeline. Both pipelines end at a uint8 tensor; `bench.data.Preprocess` normalises on the device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import Compose
from torchvision.transforms.functional import pil_to_tensor

from bench.data import Batch, Split, tensor_batches

Item = tuple[Path, int]
ImageTransform = Callable[[Image.Image], Image.Image]
# (index into the split, augmentation seed or None for the eval pipeline)
_Request = tuple[int, int | None]


def default_workers() -> int:
    """Decoding processes per split: `BENCH_WORKERS` when set (0 decodes in the main process), else up to 8."""
    value = os.environ.get("BENCH_WORKERS")
    return int(value) if value is not None and value.isdigit() else min(8, os.cpu_count() or 1)


@dataclass(frozen=True)
class ImageTransforms:
    """A task family's image pipelines (PIL in, PIL out).

    Attributes:
        eval: deterministic pipeline for unshuffled passes.
        train: augmenting pipeline for shuffled passes; None means the family does not augment.
    """

    eval: ImageTransform
    train: ImageTransform | None = None

    def describe(self) -> dict[str, list[str]]:
        """The exact steps, recorded in every run so that two records can be told apart by their preprocessing."""
        return {"train": _steps(self.train or self.eval), "eval": _steps(self.eval)}


def _steps(transform: ImageTransform) -> list[str]:
    return [repr(t) for t in transform.transforms] if isinstance(transform, Compose) else [repr(transform)]


def decode_rgb(path: Path) -> Image.Image:
    """Fully decode an image as RGB (grey, palette and CMYK files occur in every FGVC dataset)."""
    with Image.open(path) as image:
        return image.convert("RGB")


class _Decoder(Dataset):
    def __init__(self, items: list[Item], transforms: ImageTransforms) -> None:
        self.items = items
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, request: _Request) -> tuple[torch.Tensor, int]:
        index, seed = request
        path, label = self.items[index]
        try:
            image = decode_rgb(path)
        except OSError as exc:
            raise RuntimeError(f"cannot read image {path}: {exc}; run `bench data check`") from None
        if seed is None or self.transforms.train is None:
            return pil_to_tensor(self.transforms.eval(image)), label
        # torchvision draws from torch's global RNG; fork it so the main process's stream is untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return pil_to_tensor(self.transforms.train(image)), label


@dataclass
class FileSplit:
    """A split given as (image path, label) pairs; implements `bench.data.Split`.

    Attributes:
        items: the images and their labels, in list-file order.
        transforms: the task family's pipelines.
        workers: DataLoader worker processes (0 decodes in the calling process).
        cache: keep the decoded split in memory after the first pass; only for splits without augmentation, where
            every pass would decode to the same pixels (VTAB-1k's 1,000 small training images).
    """

    items: list[Item]
    transforms: ImageTransforms
    workers: int = field(default_factory=default_workers)
    cache: bool = False
    _decoded: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.cache and self.transforms.train is not None:
            raise ValueError("a split with augmentation cannot be cached: every epoch must see fresh augmentations")

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.items]

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[Batch]:
        if self.cache:
            return tensor_batches(*self._all(), batch_size, generator)
        if generator is None:
            return self._load([(i, None) for i in range(len(self))], batch_size)
        order = torch.randperm(len(self), generator=generator).tolist()
        if self.transforms.train is None:
            return self._load([(i, None) for i in order], batch_size)
        seeds = torch.randint(0, 2**62, (len(self),), generator=generator).tolist()
        return self._load(list(zip(order, seeds)), batch_size)

    def image_batches(self, index: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
        if self.cache:
            images = self._all()[0]
            for start in range(0, len(index), batch_size):
                yield images[index[start:start + batch_size]]
            return
        for images, _ in self._load([(int(i), None) for i in index], batch_size):
            yield images

    def merged_with(self, other: Split) -> FileSplit:
        if not isinstance(other, FileSplit) or other.transforms is not self.transforms:
            raise TypeError("a file split merges only with a split of the same task")
        return FileSplit(self.items + other.items, self.transforms, self.workers, self.cache)

    def _all(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._decoded is None:
            images, labels = zip(*self._load([(i, None) for i in range(len(self))], 128))
            self._decoded = torch.cat(images), torch.cat(labels)
        return self._decoded

    def _load(self, requests: list[_Request], batch_size: int) -> Iterator[Batch]:
        chunks = [requests[start:start + batch_size] for start in range(0, len(requests), batch_size)]
        # Pinned pages let the engine's non-blocking copies to a GPU overlap compute.
        loader = DataLoader(_Decoder(self.items, self.transforms), batch_sampler=chunks,
                            num_workers=min(self.workers, len(chunks)), pin_memory=torch.cuda.is_available())
        return iter(loader)
