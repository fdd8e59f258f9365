"""Decode once: a split's images, decoded and transformed by a fixed PIL pipeline, kept as memory-mapped uint8 arrays.

Every epoch of every run otherwise decodes every JPEG again. An entry holds the pipeline's output for each image of a
file list (`images.npy`, N×3×H×W uint8), each image's original size (`sizes.npy`, N×2 int32: h, w; the device-side
crop draws its boxes in those pixels) and how it was built (`meta.json`). Entries live in `<results>/cache/decoded/`
(the `DecodeCache` of a worker's `bench.engine.Caches`); without a directory, splits decode their files as before.
A run reaches the cache through its own `DataPath`, which logs what its splits read, built or were refused: the
run's record holds that log and nothing of another run's, even when runs share a worker process.

The key is a digest of the file list in order, each file's size and modification time (ns), and the pipeline's exact
steps. Size and mtime, not a content hash: a stat costs microseconds where hashing would read every byte of the
dataset at the start of every run (gigabytes for NABirds), and rewriting or replacing a file changes its mtime.
An entry is built in parallel DataLoader workers into a temporary folder, under a file lock so two processes never
build it twice, and renamed into place, so a killed build leaves nothing half-written. The cache is bounded by
`BENCH_DECODE_CACHE_GB` (default 64; 0 turns the cache off): a split that would push it past the bound is not cached
and decodes its files every pass, as before, and its runs' records say so.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from filelock import FileLock
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.functional import pil_to_tensor

from bench import BenchError
from bench.atomic import replacing
from bench.cache import cache_key

LIMIT_ENV = "BENCH_DECODE_CACHE_GB"
DEFAULT_LIMIT_GB = 64.0
_FORMAT = 1  # bump when the stored layout changes: old entries are then simply never matched again
_CHUNK = 64


@dataclass
class Decoded:
    """One cache entry, memory-mapped: reading a batch copies just its images out of the page cache."""

    images: np.ndarray
    sizes: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def take(self, index: np.ndarray, pin: bool) -> torch.Tensor:
        """The images at `index`, in that order, as a uint8 tensor (in page-locked memory when `pin`, so that a
        non-blocking copy to a GPU overlaps compute; torch's pinned-memory cache recycles the buffers)."""
        out = torch.empty((len(index), *self.images.shape[1:]), dtype=torch.uint8, pin_memory=pin)
        np.take(self.images, index, axis=0, out=out.numpy())
        return out


@dataclass
class Joined:
    """Two or more entries read as one (train+val from the train and val entries, decoded once each)."""

    parts: Sequence[Decoded | Joined]

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    @property
    def shape(self) -> tuple[int, ...]:
        shapes = {p.shape for p in self.parts}
        if len(shapes) != 1:
            raise ValueError(f"joined cache entries hold images of different shapes: {shapes}")
        return shapes.pop()

    @property
    def sizes(self) -> np.ndarray:
        return np.concatenate([p.sizes for p in self.parts])

    def take(self, index: np.ndarray, pin: bool) -> torch.Tensor:
        out = torch.empty((len(index), *self.shape), dtype=torch.uint8, pin_memory=pin)
        start = 0
        for part in self.parts:
            mine = (index >= start) & (index < start + len(part))
            if mine.any():
                out[torch.from_numpy(mine)] = part.take(index[mine] - start, False)
            start += len(part)
        return out


def decode_rgb(path: Path) -> Image.Image:
    """Fully decode an image as RGB (grey, palette and CMYK files occur in every FGVC dataset). `bench.imagefiles`
    decodes its files with it too, and imports it from here: the import runs one way."""
    with Image.open(path) as image:
        return image.convert("RGB")


class _StoreDecoder(Dataset):
    def __init__(self, paths: list[Path], transform: Callable[[Image.Image], Image.Image]) -> None:
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            image = decode_rgb(self.paths[index])
        except OSError as exc:
            raise RuntimeError(f"cannot read image {self.paths[index]}: {exc}; run `bench data check`") from None
        return pil_to_tensor(self.transform(image)), torch.tensor([image.height, image.width], dtype=torch.int32)


class DecodeCache:
    """Where decoded splits live, and what this process has opened or built (its runs reuse both)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self._open: dict[str, Decoded] = {}

    @property
    def limit_bytes(self) -> int:
        value = os.environ.get(LIMIT_ENV, str(DEFAULT_LIMIT_GB))
        try:
            return int(float(value) * 2**30)
        except ValueError:
            raise BenchError(f"{LIMIT_ENV}={value!r} is not a number; set it to the decode cache's bound in GiB, "
                             f"e.g. {LIMIT_ENV}={DEFAULT_LIMIT_GB:g}") from None

    def get(self, paths: list[Path], transform: Callable[[Image.Image], Image.Image], steps: list[str],
            workers: int, events: list[dict[str, Any]]) -> Decoded | None:
        """The entry for `paths` under `transform` (described by `steps`), built on first use; None when there is no
        cache directory, the bound is 0 (the cache is off) or the entry would push the cache past its bound. What
        happened (read, built, refused) is appended to `events`, the asking run's log."""
        if self.directory is None or self.limit_bytes == 0:
            return None
        stats = [(str(p), s.st_size, s.st_mtime_ns) for p in paths for s in [_stat(p)]]
        key = cache_key(_FORMAT, stats, steps)
        if key in self._open:
            events.append(self._event(key, "read", len(paths), steps))
            return self._open[key]
        self.directory.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.directory / f"{key}.lock")):
            if not (self.directory / key / "meta.json").is_file():
                if not self._build(key, paths, transform, steps, workers, events):
                    return None
            else:
                events.append(self._event(key, "read", len(paths), steps))
        entry = self.directory / key
        self._open[key] = Decoded(np.load(entry / "images.npy", mmap_mode="r"), np.load(entry / "sizes.npy"))
        return self._open[key]

    def _event(self, key: str, status: str, count: int, steps: list[str]) -> dict[str, Any]:
        meta_path = self.directory / key / "meta.json" if self.directory else None
        built = json.loads(meta_path.read_text()) if meta_path and meta_path.is_file() else {}
        return {"key": key, "status": status, "images": count, "steps": steps, "first_pass": built.get("build")}

    def _build(self, key: str, paths: list[Path], transform: Callable[[Image.Image], Image.Image],
               steps: list[str], workers: int, events: list[dict[str, Any]]) -> bool:
        start = time.perf_counter()
        first, _ = _StoreDecoder(paths[:1], transform)[0]
        nbytes = len(paths) * first.numel()
        used = sum(f.stat().st_size for f in self.directory.glob("*/images.npy"))
        if used + nbytes > self.limit_bytes:
            message = (f"decode cache: {len(paths)} images need {nbytes / 2**30:.1f} GiB and {self.directory} holds "
                       f"{used / 2**30:.1f} GiB of a {self.limit_bytes / 2**30:.0f} GiB bound; decoding these files "
                       f"every pass instead (raise {LIMIT_ENV} or clear the folder to cache them)")
            print(message, file=sys.stderr)
            events.append({"key": key, "status": "over limit: decoded from files", "images": len(paths),
                           "steps": steps, "needed_bytes": nbytes, "cache_bytes": used})
            return False
        # A write the disk refuses stops `bench` (see bench.atomic), as for every file a run keeps.
        with replacing(self.directory / key, "a decoded split", folder=True) as temporary:
            temporary.mkdir()
            images = _allocated_memmap(temporary / "images.npy", (len(paths), *first.shape))
            sizes = np.zeros((len(paths), 2), dtype=np.int32)
            chunks = [list(range(s, min(s + _CHUNK, len(paths)))) for s in range(0, len(paths), _CHUNK)]
            loader = DataLoader(_StoreDecoder(paths, transform), batch_sampler=chunks,
                                num_workers=min(workers, len(chunks)))
            done, reported = 0, 0
            label = f"decode cache: {len(paths):,} images → {'×'.join(map(str, first.shape))} uint8"
            for batch, batch_sizes in loader:
                images[done:done + len(batch)] = batch.numpy()
                sizes[done:done + len(batch)] = batch_sizes.numpy()
                done += len(batch)
                # A text bar on stderr: runs may execute in worker processes, where a live display would fight the
                # grid's own display for the terminal.
                if done * 4 // len(paths) > reported or done == len(paths):
                    reported = done * 4 // len(paths)
                    bar = "#" * (20 * done // len(paths))
                    print(f"{label} [{bar:<20}] {done}/{len(paths)} {time.perf_counter() - start:.1f} s",
                          file=sys.stderr, flush=True)
            images.flush()
            del images
            np.save(temporary / "sizes.npy", sizes)
            seconds = time.perf_counter() - start
            build = {"seconds": seconds, "images_per_s": len(paths) / seconds, "workers": min(workers, len(chunks)),
                     "bytes": nbytes, "shape": list(first.shape)}
            (temporary / "meta.json").write_text(json.dumps({"steps": steps, "images": len(paths), "build": build}))
        events.append(self._event(key, "built", len(paths), steps))
        return True


def _allocated_memmap(path: Path, shape: tuple[int, ...]) -> np.memmap:
    """A new uint8 `.npy` file of `shape`, memory-mapped, its blocks allocated before anything is written: a full disk
    refuses the allocation (an OSError) where a write into a hole of the map would kill the process (SIGBUS)."""
    images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    with open(path, "r+b") as fh:
        os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)
    return images


def _stat(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except OSError as exc:
        raise RuntimeError(f"cannot read image {path}: {exc}; run `bench data check`") from None


@dataclass(frozen=True)
class DataPath:
    """One run's way to decoded splits: its worker's decode cache, and the run's own log of what its splits read,
    built or were refused there (the record's `data_path`; empty when every pass decoded the files)."""

    cache: DecodeCache
    events: list[dict[str, Any]] = field(default_factory=list)

    def get(self, paths: list[Path], transform: Callable[[Image.Image], Image.Image], steps: list[str],
            workers: int) -> Decoded | None:
        """`DecodeCache.get`, logged in this run's events."""
        return self.cache.get(paths, transform, steps, workers, self.events)
