"""k-means in torch for SPT's prompt construction: greedy k-means++ seeding, then Lloyd iterations.

It runs on the device of the tokens (no copy to NumPy), is seeded by a torch.Generator, and stops once no
assignment changes. Seeding follows the greedy variant scikit-learn uses (2 + log k candidates per centre, keep the
one that lowers the potential most), which is what makes a single run land near scikit-learn's inertia.

Cost model (ViT-B: ~100k tokens × 768 dims per block): the full token set is touched only by the final Lloyd
iterations, each one float32 matmul plus an argmin (the ‖x‖² term is skipped: it is the same for every centre).
Seeding and the first Lloyd iterations run on a random subsample of `SAMPLE` tokens, from `RESTARTS` seedings of
which the lowest-inertia one is kept: that makes the result better than one full-size seeding, for a fraction of its
cost, and the full-set iterations that follow start next to the optimum and converge in a few steps.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Callable

import torch


def squared_distances(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """‖x_i − c_j‖² for every token and centre, clamped at 0 against rounding."""
    dist = (x * x).sum(1, keepdim=True) - 2 * x @ centres.T + (centres * centres).sum(1)
    return dist.clamp_min_(0)


def inertia(x: torch.Tensor, centres: torch.Tensor) -> float:
    return float(squared_distances(x, centres).min(1).values.sum())


def kmeans_plusplus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    norms = (x * x).sum(1)
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [x[first]]
    closest = (norms - 2 * x @ x[first] + norms[first]).clamp_min_(0)
    for _ in range(1, k):
        weights = closest.double().cpu()
        if float(weights.sum()) == 0:  # fewer distinct tokens than centres: any token will do
            weights = torch.ones_like(weights)
        candidates = torch.multinomial(weights, trials, replacement=True, generator=generator).to(x.device)
        to_candidates = torch.addmm(norms[candidates], x, x[candidates].T, alpha=-2)
        to_candidates.add_(norms[:, None]).clamp_min_(0)
        candidate_dist = torch.minimum(closest.unsqueeze(0), to_candidates.T)
        best = int(candidate_dist.sum(1).argmin())
        centres.append(x[candidates[best]])
        closest = candidate_dist[best]
    return torch.stack(centres)


SAMPLE = 16_384
RESTARTS = 3
# Each pass over all rows costs about as much as all the work on the sample. Measured on a ViT-B-sized problem
# (100k tokens × 768 dims, k = 20), 10 passes from the best sampled start land within 1% of scikit-learn's inertia
# at a fraction of its time (`bench perf` checks both); full convergence can take 50 passes for the last 0.5%.
REFINE_ITERS = 10


def lloyd(x: torch.Tensor, centres: torch.Tensor, max_iters: int) -> torch.Tensor:
    """Lloyd iterations from `centres` until no assignment changes (then every centre is the mean of its tokens, a
    fixed point) or `max_iters`; a centre that loses all its tokens stays where it is."""
    centres = centres.clone()
    labels = None
    for _ in range(max_iters):
        # argmin_j ‖x − c_j‖² = argmin_j ‖c_j‖² − 2·x·c_j: ‖x‖² is the same for every centre, so it is never computed.
        new_labels = torch.addmm((centres * centres).sum(1), x, centres.T, alpha=-2).argmin(1)
        if labels is not None and torch.equal(new_labels, labels):
            break
        labels = new_labels
        counts = torch.bincount(labels, minlength=len(centres))
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        occupied = counts > 0
        centres[occupied] = sums[occupied] / counts[occupied].unsqueeze(1).to(x.dtype)
    return centres


def kmeans(
    x: torch.Tensor, k: int, generator: torch.Generator, max_iters: int = 50, sample: int = SAMPLE,
    restarts: int = RESTARTS, refine_iters: int = REFINE_ITERS,
) -> torch.Tensor:
    """Return k centroids (k×D) of the rows of x (N×D), N ≥ k, seeded by `generator` (a CPU generator).

    With N ≤ `sample` the result is a Lloyd fixed point on x (unless `max_iters` runs out first).

    Args:
        max_iters: Lloyd iterations per start on the sample.
        sample: rows the seedings and first iterations use (all rows when N is smaller).
        restarts: seedings tried on the sample; the one with the lowest sample inertia is refined on all rows.
        refine_iters: Lloyd iterations on all rows after the sample (only when N > `sample`).
    """
    if x.ndim != 2 or x.shape[0] < k:
        raise ValueError(f"k-means needs at least k={k} rows in a 2-D tensor, got shape {tuple(x.shape)}")
    x = x.float().contiguous()
    subset = x if len(x) <= sample else x[torch.randperm(len(x), generator=generator)[:sample].to(x.device)]
    starts = [lloyd(subset, kmeans_plusplus(subset, k, generator), max_iters) for _ in range(restarts)]
    best = min(starts, key=lambda centres: inertia(subset, centres))
    return best if subset is x else lloyd(x, best, refine_iters)


class CentroidCache:
    """Centroids by key, kept in this process and, when `directory` is set, on disk, so that a sweep (learning
    rates × weight decays × prompt counts ...) runs k-means once per (backbone, sample, layer, k, seed).

    Keys are content hashes chosen by the caller (see `methods.prompt`), so a hit can only return what the same
    inputs would compute; files are written to a temporary name and renamed, so a killed run leaves no torn entry.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self.hits = 0
        self.misses = 0
        self._memory: dict[str, torch.Tensor] = {}

    def get_or_compute(self, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        if key not in self._memory and self.directory is not None and (self.directory / f"{key}.pt").is_file():
            self._memory[key] = torch.load(self.directory / f"{key}.pt", weights_only=True)
        if key in self._memory:
            self.hits += 1
            return self._memory[key].clone()
        self.misses += 1
        centres = compute().detach().cpu()
        self._memory[key] = centres
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            temporary = self.directory / f".{key}.{os.getpid()}.tmp"
            torch.save(centres, temporary)
            temporary.replace(self.directory / f"{key}.pt")
        return centres.clone()


def cache_key(*parts: object) -> str:
    """A file-name-safe digest of `parts` (their reprs), for `CentroidCache`."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


# The process-wide cache SPT's k-means init uses; `bench.scheduler` points it at the results directory.
CENTROIDS = CentroidCache()
