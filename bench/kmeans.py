"""k-means in torch for SPT's prompt construction: greedy k-means++ seeding, then Lloyd iterations.

It runs on the device of the tokens (no copy to NumPy), is seeded by a torch.Generator, and stops once no
assignment changes (on large token sets, once the inertia stops falling). Seeding follows the greedy variant
scikit-learn uses (2 + log k candidates per centre, keep the one that lowers the potential most), which is what makes
a single run land near scikit-learn's inertia.

Cost model (ViT-B: ~100k tokens × 768 dims per block): a pass over the full token set is one float32 matmul, an
argmin and a scatter-add (the ‖x‖² term of the distance is skipped: it is the same for every centre). When there are
more than `SAMPLE` tokens, almost all the work happens on subsamples: `RESTARTS` seedings, each followed by Lloyd, on
`SEED_SAMPLE` tokens; the one with the lowest inertia on `SAMPLE` tokens is refined there and then on all tokens, each
stage stopping once an iteration lowers the inertia by less than `TOL` (relative). The restarts make the result
better than one full-size seeding, and the full-set stage starts next to a local optimum, so it takes a few passes.
With at most `SAMPLE` tokens (SPT on the micro suite) every start runs to a fixed point on all tokens.
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
SEED_SAMPLE = 4_096
RESTARTS = 3
# Relative inertia drop below which the subsample and full-set stages stop; chosen on ViT-B-sized problems (100k
# tokens × 768 dims, k = 20), where `bench perf` checks the result against scikit-learn's inertia and time.
TOL = 1e-4
REFINE_ITERS = 10


def lloyd(x: torch.Tensor, centres: torch.Tensor, max_iters: int, tol: float = 0.0) -> torch.Tensor:
    """Lloyd iterations from `centres` until no assignment changes (then every centre is the mean of its tokens, a
    fixed point), an iteration lowers the inertia by at most `tol` of it, or `max_iters`; a centre that loses all
    its tokens stays where it is."""
    centres = centres.clone()
    labels = None
    norms_total = float(torch.linalg.vector_norm(x)) ** 2 if tol > 0 else 0.0
    previous = math.inf
    for _ in range(max_iters):
        # argmin_j ‖x − c_j‖² = argmin_j ‖c_j‖² − 2·x·c_j: ‖x‖² is the same for every centre, so it is only summed once.
        nearest, new_labels = torch.addmm((centres * centres).sum(1), x, centres.T, alpha=-2).min(1)
        if labels is not None and torch.equal(new_labels, labels):
            break
        if tol > 0:
            current = norms_total + float(nearest.sum(dtype=torch.float64))
            if previous - current <= tol * current:
                break
            previous = current
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
        max_iters: Lloyd iterations per start, and on the sample.
        sample: above this many rows, seedings run on `SEED_SAMPLE` rows and are judged and refined on `sample` rows.
        restarts: seedings tried; the one with the lowest inertia is kept.
        refine_iters: Lloyd iterations on all rows after the sample (only when N > `sample`).
    """
    if x.ndim != 2 or x.shape[0] < k:
        raise ValueError(f"k-means needs at least k={k} rows in a 2-D tensor, got shape {tuple(x.shape)}")
    x = x.float().contiguous()
    if len(x) <= sample:
        starts = [lloyd(x, kmeans_plusplus(x, k, generator), max_iters) for _ in range(restarts)]
        return min(starts, key=lambda centres: inertia(x, centres))
    subset = x[torch.randperm(len(x), generator=generator)[:sample].to(x.device)]
    seeding = subset[:max(k, min(SEED_SAMPLE, sample))]
    starts = [lloyd(seeding, kmeans_plusplus(seeding, k, generator), max_iters, TOL) for _ in range(restarts)]
    best = min(starts, key=lambda centres: inertia(subset, centres))
    return lloyd(x, lloyd(subset, best, max_iters, TOL), refine_iters, TOL)

