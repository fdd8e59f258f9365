"""Content-keyed tensor caches shared by the runs of a grid: what a sweep would otherwise recompute in every run.

Two things are worth caching because every point of a hyper-parameter sweep computes them identically: SPT's k-means
centroids (`Caches.centroids`, one k-means per backbone, sample, block, k and seed) and a frozen trunk's features of a
split (`Caches.features`, one feature pass per backbone, task and split for a whole linear-probe sweep, the tune
protocol's stage 1 and the final stage's seeds included); `bench.engine.Caches` holds both for the runs of a worker.

Keys are digests of everything the value depends on, chosen by the caller, so a hit can only return what the same
inputs would compute. Entries live in this process (the most recently used, up to `MEMORY_BYTES`) and, with a
`directory` (the results directory's, for `bench run`), on disk, where runs in other processes or on other machines
of a cluster find them; files are written to a temporary name and renamed, so a killed run leaves no torn entry.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Callable, Union

import torch

from bench.atomic import replacing

Value = Union[torch.Tensor, tuple[torch.Tensor, ...]]

MEMORY_BYTES = 1 << 30


class TensorCache:
    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self.hits = 0
        self.misses = 0
        self._memory: dict[str, Value] = {}

    def clear(self) -> None:
        """Forget the entries held in memory (those on disk stay)."""
        self._memory.clear()

    def get_or_compute(self, key: str, compute: Callable[[], Value]) -> Value:
        """The value stored under `key`, or `compute()`'s result (stored on the CPU); always a fresh copy."""
        value = self._memory.pop(key, None)
        if value is None and self.directory is not None and (self.directory / f"{key}.pt").is_file():
            value = torch.load(self.directory / f"{key}.pt", weights_only=True)
        if value is not None:
            self.hits += 1
        else:
            self.misses += 1
            value = _detached_cpu(compute())
            if self.directory is not None:
                # A write the disk refuses stops `bench` (see bench.atomic) rather than letting the run go on
                # uncached: a full disk would refuse its record next, after the run's whole training.
                with replacing(self.directory / f"{key}.pt", "a cache entry") as temporary:
                    # Serialised in memory, then written as bytes: torch's own writer reports a short write as a
                    # RuntimeError, a Python file as the OSError it is.
                    serialised = io.BytesIO()
                    torch.save(value, serialised)
                    temporary.write_bytes(serialised.getbuffer())
        self._memory[key] = value  # re-inserted last: the dict's order is the recency order
        while len(self._memory) > 1 and sum(map(_nbytes, self._memory.values())) > MEMORY_BYTES:
            del self._memory[next(iter(self._memory))]
        return _copy(value)


def cache_key(*parts: object) -> str:
    """A file-name-safe digest of `parts` (their reprs)."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


def _detached_cpu(value: Value) -> Value:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    return tuple(t.detach().cpu() for t in value)


def _nbytes(value: Value) -> int:
    tensors = (value,) if isinstance(value, torch.Tensor) else value
    return sum(t.element_size() * t.numel() for t in tensors)


def _copy(value: Value) -> Value:
    if isinstance(value, torch.Tensor):
        return value.clone()
    return tuple(t.clone() for t in value)
