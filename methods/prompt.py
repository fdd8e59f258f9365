"""Visual Prompt Tuning (Jia et al., ECCV 2022) and Self-Prompt Tuning (Wang et al., ICML 2024).

Both insert N learnable prompt tokens right after the class token (and any register tokens) of a frozen timm ViT.
Prompts carry no positional embedding. Shallow: one prompt set, inserted before block 0. Deep: a fresh set before
every block, replacing the previous block's prompt outputs. Only the prompts and the head learn.

SPT differs only in initialisation: prompts of block i are built from the patch tokens that enter block i in the
frozen, prompt-free backbone on a sample of training images (block 0: patch embeddings before the positional
embedding, as the reference code does; block i >= 1: the output of block i-1):
  random   VPT's uniform init (the baseline),
  sampled  N of those tokens drawn without replacement,
  mean/max N windows of w×w neighbouring patches of one random image each, mean- or max-pooled,
  kmeans   the N k-means centroids of those tokens.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from bench import kmeans as km
from bench import nmi
from bench.cache import cache_key
from bench.config import TrainConfig, _check
from bench.method import METHODS, Adapted, BuildContext, Probe, linear_head, register_method
from bench.registry import Registry


class PromptedViT(nn.Module):
    """Runs a timm ViT's own modules with prompt tokens inserted; maps images to pooled features.

    Args:
        vit: the frozen backbone (it is shared, not copied).
        prompts: L×N×D initial prompts; L = 1 for shallow, L = depth for deep.
        pooling: `token` (class token) or `avg` (mean of patch tokens; prompts and prefix tokens excluded,
            as timm excludes its register tokens).
        dropout: dropout on the prompts during training (VPT's option).
    """

    def __init__(self, vit: VisionTransformer, prompts: torch.Tensor, pooling: str, dropout: float = 0.0) -> None:
        super().__init__()
        if prompts.ndim != 3 or prompts.shape[0] not in (1, len(vit.blocks)) or prompts.shape[2] != vit.embed_dim:
            raise ValueError(f"prompts must be L×N×{vit.embed_dim} with L in (1, {len(vit.blocks)}), got {tuple(prompts.shape)}")
        self.vit = vit
        self.prompts = nn.Parameter(prompts.clone())
        self.pooling = pooling
        self.prompt_dropout = nn.Dropout(dropout)

    @property
    def num_prompts(self) -> int:
        return self.prompts.shape[1]

    def forward_tokens(self, images: torch.Tensor) -> Iterator[torch.Tensor]:
        """Yield the token sequence entering each block (prompts in place), then the final normed sequence."""
        vit = self.vit
        tokens = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(images))))
        prefix, n = vit.num_prefix_tokens, self.num_prompts
        for depth, block in enumerate(vit.blocks):
            if depth < self.prompts.shape[0]:
                prompts = self.prompt_dropout(self.prompts[depth]).expand(tokens.shape[0], -1, -1)
                kept = tokens[:, prefix:] if depth == 0 else tokens[:, prefix + n:]
                tokens = torch.cat([tokens[:, :prefix], prompts.to(tokens.dtype), kept], dim=1)
            yield tokens
            tokens = block(tokens)
        yield vit.norm(tokens)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        *_, tokens = self.forward_tokens(images)
        if self.pooling == "token":
            pooled = tokens[:, 0]
        else:
            pooled = tokens[:, self.vit.num_prefix_tokens + self.num_prompts:].mean(dim=1)
        return self.vit.head_drop(self.vit.fc_norm(pooled))

    def prompts_and_patches(self, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per block, the (prompt tokens, patch tokens) entering it: what bench.nmi compares."""
        start, n = self.vit.num_prefix_tokens, self.num_prompts
        *entering, _ = self.forward_tokens(images)
        return [(tokens[:, start:start + n], tokens[:, start + n:]) for tokens in entering]


@torch.no_grad()
def patch_tokens_per_block(vit: VisionTransformer, images: torch.Tensor) -> Iterator[torch.Tensor]:
    """For each block i, yield the patch tokens (no class/register tokens) that enter it in the prompt-free model,
    shaped images×patches×D. Block 0 gets the patch embeddings before the positional embedding."""
    embedded = vit.patch_embed(images)
    yield embedded.flatten(1, 2) if embedded.ndim == 4 else embedded
    tokens = vit.norm_pre(vit.patch_drop(vit._pos_embed(embedded)))
    for block in vit.blocks[:-1]:
        tokens = block(tokens)
        yield tokens[:, vit.num_prefix_tokens:]


# An initialiser maps (patch tokens images×patches×D, N, context) to N×D prompts.
Initialiser = Callable[[torch.Tensor, int, "InitContext"], torch.Tensor]
INITIALISERS: Registry[Initialiser] = Registry("prompt init")


@dataclass(frozen=True)
class InitContext:
    """What an initialiser may use besides the tokens.

    Attributes:
        source: digest of what determines this block's tokens (backbone, sampled images, block, device), for caches.
    """

    generator: torch.Generator
    grid_size: tuple[int, int]
    window: int
    source: str = ""


def _register_init(name: str, description: str) -> Callable[[Initialiser], Initialiser]:
    return INITIALISERS.decorator(name, description)


@_register_init("sampled", "N patch tokens drawn without replacement")
def _sampled(tokens: torch.Tensor, n: int, ctx: InitContext) -> torch.Tensor:
    flat = tokens.flatten(0, 1)
    return flat[torch.randperm(len(flat), generator=ctx.generator)[:n].to(flat.device)]


def _pooled_windows(tokens: torch.Tensor, n: int, ctx: InitContext, reduce: str) -> torch.Tensor:
    rows, cols = ctx.grid_size
    w = min(ctx.window, rows, cols)
    grid = tokens.view(tokens.shape[0], rows, cols, tokens.shape[-1])
    image = torch.randint(tokens.shape[0], (n,), generator=ctx.generator).tolist()
    top = torch.randint(rows - w + 1, (n,), generator=ctx.generator).tolist()
    left = torch.randint(cols - w + 1, (n,), generator=ctx.generator).tolist()
    windows = torch.stack([grid[i, t:t + w, l:l + w].flatten(0, 1) for i, t, l in zip(image, top, left)])
    return windows.mean(1) if reduce == "mean" else windows.amax(1)


@_register_init("mean", "mean of a w×w window of neighbouring patch tokens of one image, N windows")
def _mean(tokens: torch.Tensor, n: int, ctx: InitContext) -> torch.Tensor:
    return _pooled_windows(tokens, n, ctx, "mean")


@_register_init("max", "max of a w×w window of neighbouring patch tokens of one image, N windows")
def _max(tokens: torch.Tensor, n: int, ctx: InitContext) -> torch.Tensor:
    return _pooled_windows(tokens, n, ctx, "max")


@_register_init("kmeans", "the N k-means centroids of the patch tokens")
def _kmeans(tokens: torch.Tensor, n: int, ctx: InitContext) -> torch.Tensor:
    # One draw from the run's generator whether the cache hits or not, so later draws (the training order) never
    # depend on what happened to be cached.
    seed = int(torch.randint(2**62, (1,), generator=ctx.generator))
    key = cache_key(ctx.source, n, seed, km.SAMPLE, km.SEED_SAMPLE, km.RESTARTS, km.TOL, km.REFINE_ITERS)
    compute = lambda: km.kmeans(tokens.flatten(0, 1), n, torch.Generator().manual_seed(seed))  # noqa: E731
    return km.CENTROIDS.get_or_compute(key, compute)


def vpt_uniform(vit: VisionTransformer, layers: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """VPT's init: uniform in ±sqrt(6 / (3·patch² + D)), Xavier for a patch-to-token projection."""
    patch = math.prod(vit.patch_embed.patch_size)
    bound = math.sqrt(6.0 / float(3 * patch + vit.embed_dim))
    return (torch.rand(layers, n, vit.embed_dim, generator=generator) * 2 - 1) * bound


@dataclass(frozen=True)
class VPTConfig(TrainConfig):
    """VPT's hyper-parameters (see `TrainConfig` for the optimisation ones).

    Attributes:
        num_prompts: prompt tokens per prompted block (0 reduces to the frozen backbone plus a head).
        prompt_dropout: dropout on prompt tokens during training.
    """

    num_prompts: int = 10
    prompt_dropout: float = 0.0
    lr: float = 1e-2
    weight_decay: float = 1e-4

    def validate(self) -> None:
        super().validate()
        _check(self.num_prompts >= 0, "num_prompts", self.num_prompts, "an integer >= 0")
        _check(0 <= self.prompt_dropout < 1, "prompt_dropout", self.prompt_dropout, "a float in [0, 1)")


@dataclass(frozen=True)
class SPTConfig(VPTConfig):
    """SPT's hyper-parameters on top of VPT's.

    Attributes:
        init: random | sampled | mean | max | kmeans.
        init_images: training images passed through the frozen backbone to collect patch tokens.
        pool_window: side w of the w×w patch windows pooled by `mean`/`max`.
    """

    init: str = "sampled"
    init_images: int = 64
    pool_window: int = 2

    def validate(self) -> None:
        super().validate()
        valid = ["random", *INITIALISERS.names()]
        _check(self.init in valid, "init", self.init, " | ".join(valid))
        _check(self.init_images >= 1, "init_images", self.init_images, "an integer >= 1")
        _check(self.pool_window >= 1, "pool_window", self.pool_window, "an integer >= 1")


def build_prompts(config: VPTConfig, ctx: BuildContext, deep: bool) -> tuple[torch.Tensor, dict]:
    vit = ctx.backbone.model
    layers = len(vit.blocks) if deep else 1
    init = getattr(config, "init", "random")
    if init == "random" or config.num_prompts == 0:
        return vpt_uniform(vit, layers, config.num_prompts, ctx.generator), {"init": init}

    raw = ctx.train.sample_images(config.init_images, ctx.generator)
    images = ctx.preprocess(raw.to(ctx.device))
    sample = hashlib.sha256(raw.contiguous().numpy().tobytes()).hexdigest()
    backbone = json.dumps(ctx.backbone.describe(), sort_keys=True, default=str)
    init_ctx = InitContext(ctx.generator, tuple(vit.patch_embed.grid_size), config.pool_window)
    initialiser = INITIALISERS.get(init)
    needed = config.num_prompts if init in ("sampled", "kmeans") else 1
    prompts = []
    for block, tokens in enumerate(patch_tokens_per_block(vit, images)):
        if tokens.shape[0] * tokens.shape[1] < needed:
            raise ValueError(f"{init} init needs {needed} tokens, the sample has {tokens.shape[0] * tokens.shape[1]}")
        source = cache_key(backbone, sample, block, ctx.device.type)
        block_ctx = dataclasses.replace(init_ctx, source=source)
        prompts.append(initialiser(tokens, config.num_prompts, block_ctx).float().cpu())
        if len(prompts) == layers:
            break
    return torch.stack(prompts), {"init": init, "init_images": int(images.shape[0])}


def _build(config: VPTConfig, ctx: BuildContext, deep: bool) -> Adapted:
    start = time.perf_counter()
    prompts, info = build_prompts(config, ctx, deep)
    seconds = time.perf_counter() - start
    trunk = PromptedViT(ctx.backbone.model, prompts, ctx.backbone.pooling, config.prompt_dropout)
    layers = prompts.shape[0]
    info.update(depth="deep" if deep else "shallow", prompted_blocks=layers)
    probe = None
    if config.num_prompts > 0:
        estimator = nmi.PromptPatchNMI()
        probe = Probe(nmi.PROBE_IMAGES, lambda images: {"nmi": estimator(trunk.prompts_and_patches(images))})
        info["nmi"] = {"probe_images": nmi.PROBE_IMAGES, "codes": nmi.CODES, "seed": nmi.SEED}
    return Adapted(trunk, linear_head(ctx.backbone, ctx.num_classes), trunk_frozen=False,
                   extra_tokens=config.num_prompts, setup_seconds=seconds, info=info, probe=probe)


# VPT tunes learning rate × weight decay on val; AdamW needs a narrower lr range than VPT's SGD grid.
SEARCH = {"lr": [0.03, 0.01, 0.003], "weight_decay": [1e-3, 1e-4, 0.0]}


def _register_prompt_methods() -> None:
    for family, config_cls, what in (
        ("vpt", VPTConfig, "VPT, uniform prompt init"),
        ("spt", SPTConfig, "Self-Prompt Tuning, prompts from the data's patch tokens (init=sampled|mean|max|kmeans|random)"),
    ):
        for depth, deep in (("shallow", False), ("deep", True)):
            where = "before every block" if deep else "at the input only"
            register_method(f"{family}-{depth}", config_cls, f"{what}; prompts {where}", SEARCH)(
                lambda config, ctx, deep=deep: _build(config, ctx, deep)
            )
        METHODS.alias(family, [f"{family}-shallow", f"{family}-deep"])


_register_prompt_methods()
