"""Normalised mutual information between prompt tokens and patch tokens (Figure 2 of Wang et al., ICML 2024).

The SPT paper motivates initialising prompts from the data by the NMI between prompts and patch tokens, but its code
does not publish the estimator. `bench` defines it as follows, for one block and a fixed probe batch of B images:

1. Take the tokens entering the block as the block sees them, after its first LayerNorm (`norm1`): per image, N
   prompt tokens and M patch tokens (no class/register tokens). A block reads tokens only through that norm, so
   rescaling the prompts by any c > 0 leaves the score unchanged (up to LayerNorm's eps), while raw Euclidean
   distances would make the score a statement about the prompts' scale.
2. Shared codebook: K centroids found by k-means on the B·M patch tokens at the first measurement (at init), then
   kept for every later epoch, so a curve measures the prompts against one fixed ruler (and k-means runs once per
   run, not once per epoch). Every token, prompt or patch, is discretised to the index of its nearest centroid.
3. Pairing: every patch token x is paired with the prompt p*(x) nearest to it (Euclidean) among the prompts of its
   own image, the ones it attends to. This gives B·M pairs of codes (code(x), code(p*(x))).
4. NMI of those pairs: I(A; B) / ((H(A) + H(B)) / 2), the arithmetic normalisation that
   `sklearn.metrics.normalized_mutual_info_score` uses by default; 1 when both codings are constant.

Read it as: "knowing which prompt speaks for a patch token, how much do we know about which part of the token
distribution the patch comes from?". It is 1 when the prompts reproduce the patch tokens' cluster structure (prompts
equal to the patch tokens, or to the centroids with N = K) and near 0 when the prompts ignore it (prompts that are
independent of the patch tokens, or one prompt nearest to every patch). It is invariant to renumbering the codes and
to reordering the prompts. With N < K the prompts can separate at most N codes, which caps the value below 1; with
N = 1 it is 0 by construction.

Cost per measurement: one no-grad forward of the probe batch, then per block a distance matrix and a bincount, all
in torch on the model's device, with no Python loop over tokens; plus one k-means per block at init (defaults:
8 images, K = 8).
"""

from __future__ import annotations

from typing import Sequence

import torch

from bench.kmeans import kmeans, squared_distances

PROBE_IMAGES = 8
CODES = 8
SEED = 0
CODEBOOK_ITERS = 10


def entropy(counts: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of the distribution proportional to `counts`, along the last dimension."""
    p = counts.double() / counts.sum(-1, keepdim=True)
    return -(p * torch.log(p.where(p > 0, torch.ones_like(p)))).sum(-1)


def nmi(a: torch.Tensor, b: torch.Tensor) -> float:
    """NMI of two discrete labelings of the same items, arithmetic normalisation (scikit-learn's default).

    Labels may be any integers; only which items share a label matters, so renumbering either side changes nothing.
    Both labelings constant gives 1 (they agree perfectly), as in scikit-learn.

    Args:
        a, b: 1-D integer tensors of equal length.
    """
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"nmi needs two non-empty 1-D label tensors of equal length, got {tuple(a.shape)}, {tuple(b.shape)}")
    _, a = torch.unique(a, return_inverse=True)
    _, b = torch.unique(b, return_inverse=True)
    ka, kb = int(a.max()) + 1, int(b.max()) + 1
    if ka == kb == 1:
        return 1.0
    joint = torch.bincount(a * kb + b, minlength=ka * kb).view(ka, kb).double()
    h_a, h_b = entropy(joint.sum(1)), entropy(joint.sum(0))
    mutual = h_a + h_b - entropy(joint.flatten())
    denominator = (h_a + h_b) / 2
    return float((mutual / denominator).clamp(0.0, 1.0)) if denominator > 0 else 0.0


def fit_codebook(patches: torch.Tensor, codes: int = CODES, seed: int = SEED) -> torch.Tensor:
    """K×D k-means centroids of B×M×D patch tokens; seeded, so a codebook depends only on the tokens."""
    flat = patches.flatten(0, 1).float()
    # The codebook is a fixed ruler, not a result: one seeding and at most 10 Lloyd steps keep the probe's one-off
    # cost small against an epoch (bench perf reports probe / training time), at no cost to its being fixed.
    generator = torch.Generator().manual_seed(seed)
    return kmeans(flat, min(codes, len(flat)), generator, max_iters=CODEBOOK_ITERS, restarts=1)


def prompt_patch_nmi(prompts: torch.Tensor, patches: torch.Tensor, codebook: torch.Tensor) -> float:
    """NMI between prompts and patch tokens of one block, as defined in the module docstring.

    Args:
        prompts: B×N×D prompt tokens entering the block (the same N rows for every image with deep prompts).
        patches: B×M×D patch tokens entering the block.
        codebook: K×D centroids that discretise both (see `fit_codebook`).
    """
    if prompts.ndim != 3 or patches.ndim != 3 or prompts.shape[0] != patches.shape[0]:
        raise ValueError(f"expected B×N×D prompts and B×M×D patches, got {tuple(prompts.shape)}, {tuple(patches.shape)}")
    prompts, patches, codebook = prompts.float(), patches.float(), codebook.float()
    patch_codes = squared_distances(patches.flatten(0, 1), codebook).argmin(1)
    prompt_codes = squared_distances(prompts.flatten(0, 1), codebook).argmin(1).view(prompts.shape[:2])
    # Nearest prompt in each patch's own image: argmin of ‖p‖² − 2·x·p, the squared distance less ‖x‖², a constant.
    nearest = ((prompts * prompts).sum(-1).unsqueeze(1) - 2 * patches @ prompts.transpose(1, 2)).argmin(-1)
    return nmi(patch_codes, prompt_codes.gather(1, nearest).flatten())


class PromptPatchNMI:
    """Per-block prompt-patch NMI over a run: fits each block's codebook at the first call and reuses it after."""

    def __init__(self, codes: int = CODES, seed: int = SEED) -> None:
        self.codes = codes
        self.seed = seed
        self.codebooks: list[torch.Tensor] | None = None

    def __call__(self, blocks: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
        """NMI per block from (prompts B×N×D, patches B×M×D) pairs, one per block, in block order."""
        if self.codebooks is None:
            self.codebooks = [fit_codebook(patches, self.codes, self.seed) for _, patches in blocks]
        return [prompt_patch_nmi(p, x, c) for (p, x), c in zip(blocks, self.codebooks)]
