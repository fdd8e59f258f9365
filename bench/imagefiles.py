"""Splits backed by image files on disk: decoded with PIL in DataLoader workers, so decoding overlaps compute.

Batches are reproducible whatever the worker count: the batch order *and* one augmentation seed per image are drawn
from the run's generator in the main process, and each image is transformed under its own seed. Augmentation applies
only on shuffled (training) passes; unshuffled passes (evaluation, feature caching, SPT's image sample) use the
deterministic eval pipeline. Both pipelines end at a uint8 tensor; `bench.data.Preprocess` normalises on the device.

With a decode cache (a run's `bench.decoded.DataPath`, given by `with_data_path`; every `bench run` has one), each
pipeline's decoding happens once per split: unshuffled passes read the eval pipeline's stored output (the same pixels
the files give), and a family whose training pipeline is a random-resized crop and flip stores whole images at
`ImageTransforms.stored`² and crops them on the device (`bench.augment`), drawing the same order, seeds, boxes and
flips from the generator as the file path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from torchvision.transforms import Compose
from torchvision.transforms.functional import pil_to_tensor

from bench import BenchError
from bench.augment import CropFlip
from bench.data import Batch, Split, TaskData, tensor_batches
from bench.decoded import DataPath, Decoded, Joined, decode_rgb

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
    stored: int | None = None

    @property
    def device_crop(self) -> CropFlip | None:
        """The training augmentation as a batched device-side crop, when the cache stores images for it."""
        return CropFlip.of(self.train) if self.train is not None and self.stored else None

    @property
    def store(self) -> ImageTransform:
        """What the decode cache keeps of a training image for the device-side crop: all of it, at stored²."""
        return T.Resize((self.stored, self.stored), interpolation=T.InterpolationMode.BICUBIC)

    def describe(self) -> dict[str, list[str]]:
        """The exact steps, recorded in every run so that two records can be told apart by their preprocessing;
        `train_from_cache` is what runs instead of `train` when the decode cache serves the split (the record's
        `data_path` says which did)."""
        steps = {"train": _steps(self.train or self.eval), "eval": _steps(self.eval)}
        if self.device_crop is not None:
            steps["train_from_cache"] = self.device_crop.describe(self.stored)
        return steps


def through_pipelines(data: TaskData, transforms: ImageTransforms) -> TaskData:
    """A task's image files through other pipelines (a recipe's); `info` records the new ones."""
    splits = (data.train, data.val, data.test)
    if not all(isinstance(split, FileSplit) for split in splits):
        raise BenchError("this task is generated in memory, already at its size: it has no image pipeline to replace; "
                         "run it without a recipe's `transforms` (--set transforms=task)")
    return TaskData(*(split.with_transforms(transforms) for split in splits),
                    {**data.info, "transforms": transforms.describe()})


def _steps(transform: ImageTransform) -> list[str]:
    return [repr(t) for t in transform.transforms] if isinstance(transform, Compose) else [repr(transform)]


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
            every pass would decode to the same pixels (VTAB-1k's 1,000 small training images). The decode cache,
            when there is one, serves such splits instead.
        parts: the splits this one was merged from; their decode-cache entries serve it (train+val is never
            decoded a second time).
        data_path: the run's way to the decode cache; None decodes the files on every pass.
    """

    items: list[Item]
    transforms: ImageTransforms
    workers: int = field(default_factory=default_workers)
    cache: bool = False
    parts: tuple["FileSplit", ...] = ()
    data_path: DataPath | None = None
    _decoded: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, init=False, repr=False)
    _entries: dict[bool, Decoded | Joined | None] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.cache and self.transforms.train is not None:
            raise ValueError("a split with augmentation cannot be cached: every epoch must see fresh augmentations")

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.items]

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, device: torch.device | None = None
    ) -> Iterator[Batch]:
        augment = generator is not None and self.transforms.train is not None
        stored = self._stored(augment)
        if stored is None and self.cache:
            return tensor_batches(*self._all(), batch_size, generator)
        # The generator is read in the same order on every path: the batch order, then one seed per image.
        order = torch.randperm(len(self), generator=generator) if generator is not None else torch.arange(len(self))
        seeds = torch.randint(0, 2**62, (len(self),), generator=generator).tolist() if augment else None
        if stored is None:
            return self._load(list(zip(order.tolist(), seeds or [None] * len(self))), batch_size)
        return self._read(stored, order.numpy(), seeds, batch_size, device)

    def image_batches(self, index: torch.Tensor, batch_size: int,
                      generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
        if generator is not None and self.transforms.train is not None:
            # Through the training pipeline as the file path runs it, one seed per image (as `batches` draws them).
            seeds = torch.randint(0, 2**62, (len(index),), generator=generator).tolist()
            for images, _ in self._load(list(zip(index.tolist(), seeds)), batch_size):
                yield images
            return
        stored = self._stored(augment=False)
        if stored is not None:
            for start in range(0, len(index), batch_size):
                yield stored.take(index[start:start + batch_size].numpy(), pin=False)
            return
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
        return FileSplit(self.items + other.items, self.transforms, self.workers, self.cache, (self, other),
                         self.data_path)

    def with_transforms(self, transforms: ImageTransforms) -> FileSplit:
        # A pipeline that augments cannot be kept decoded in memory: every epoch must see fresh draws.
        return FileSplit(self.items, transforms, self.workers, self.cache and transforms.train is None,
                         tuple(part.with_transforms(transforms) for part in self.parts), self.data_path)

    def with_data_path(self, data_path: DataPath) -> FileSplit:
        return replace(self, parts=tuple(part.with_data_path(data_path) for part in self.parts), data_path=data_path)

    def _stored(self, augment: bool) -> Decoded | Joined | None:
        """The decode-cache entry for this split's eval pipeline, or for its stored training images when
        `augment`; None without a decode cache, when the cache is off or over its bound, or when the training
        pipeline cannot run on the device (it then stays on the file path)."""
        if self.data_path is None or augment and self.transforms.device_crop is None:
            return None
        if augment not in self._entries:
            if self.parts:
                parts = [part._stored(augment) for part in self.parts]
                self._entries[augment] = None if any(part is None for part in parts) else Joined(parts)
            else:
                transform = self.transforms.store if augment else self.transforms.eval
                self._entries[augment] = self.data_path.get([path for path, _ in self.items], transform,
                                                            _steps(transform), self.workers)
        return self._entries[augment]

    def _read(self, stored: Decoded | Joined, order: np.ndarray, seeds: list[int] | None, batch_size: int,
              device: torch.device | None) -> Iterator[Batch]:
        crop = self.transforms.device_crop
        pin = device is not None and device.type == "cuda"
        for images, labels, boxes, sizes in self.host_batches(stored, order, seeds, batch_size, pin):
            if device is not None:
                images = images.to(device, non_blocking=True)
            if boxes is not None and crop is not None:
                images = crop.apply(images, boxes, sizes)
            yield images, labels

    def host_batches(
        self, stored: Decoded | Joined, order: np.ndarray, seeds: list[int] | None, batch_size: int, pin: bool
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]]:
        """The host's share of a cached pass, batch by batch: the stored images gathered from the memory map, their
        labels, and (with `seeds`) each image's crop box and flip and original size. `bench perf` times it alone:
        it is what a GPU would wait for."""
        labels = torch.tensor(self.labels)
        sizes = stored.sizes
        crop = self.transforms.device_crop
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            boxes = None
            if seeds is not None and crop is not None:
                boxes = crop.draw(seeds[start:start + batch_size], sizes[index])
            yield stored.take(index, pin), labels[index], boxes, torch.from_numpy(sizes[index])

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
