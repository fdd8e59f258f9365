"""k-means in torch for SPT's prompt construction: greedy k-means++ seeding, then Lloyd iterations.

It runs on the device of the tokens (no copy to NumPy), is seeded by a torch.Generator, and stops once no
assignment changes. Seeding follows the greedy variant scikit-learn uses (2 + log k candidates per centre, keep the
one that lowers the potential most), which is what makes a single run land near scikit-learn's inertia.
"""

from __future__ import annotations

import math

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
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [x[first]]
    closest = squared_distances(x, x[first:first + 1]).squeeze(1)
    for _ in range(1, k):
        weights = closest.double().cpu()
        if float(weights.sum()) == 0:  # fewer distinct tokens than centres: any token will do
            weights = torch.ones_like(weights)
        candidates = torch.multinomial(weights, trials, replacement=True, generator=generator).to(x.device)
        candidate_dist = torch.minimum(closest.unsqueeze(0), squared_distances(x, x[candidates]).T)
        best = int(candidate_dist.sum(1).argmin())
        centres.append(x[candidates[best]])
        closest = candidate_dist[best]
    return torch.stack(centres)


def kmeans(x: torch.Tensor, k: int, generator: torch.Generator, max_iters: int = 50) -> torch.Tensor:
    """Return k centroids (k×D) of the rows of x (N×D), N ≥ k, seeded by `generator` (a CPU generator)."""
    if x.ndim != 2 or x.shape[0] < k:
        raise ValueError(f"k-means needs at least k={k} rows in a 2-D tensor, got shape {tuple(x.shape)}")
    x = x.float()
    centres = kmeans_plusplus(x, k, generator)
    labels = None
    for _ in range(max_iters):
        new_labels = squared_distances(x, centres).argmin(1)
        if labels is not None and torch.equal(new_labels, labels):
            break
        labels = new_labels
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        occupied = counts > 0
        centres[occupied] = sums[occupied] / counts[occupied].unsqueeze(1).to(x.dtype)
    return centres
