"""Visual Prompt Tuning (Jia et al., ECCV 2022) and Self-Prompt Tuning (Wang et al., ICML 2024).

Both insert N learnable prompt tokens right after the class token (and any register tokens) of a frozen timm ViT.
Prompts carry no positional embedding. Shallow: one prompt set, inserted before block 0. Deep: a fresh set before
every block, replacing the previous block's prompt outputs. Only the prompts and the head learn. Features are pooled
as the SPT reference pools (`bench.backbone.pool_features`: on mean-pooled backbones the prompts are in the mean).

SPT differs only in initialisation, following the reference's `prompt_generator` (`train_MAE.py`): len(train) images
are drawn with replacement from the training split and passed through the frozen, prompt-free backbone; the prompts
of block i are built from the patch tokens that enter block i (block 0: patch embeddings before the positional
embedding; block i >= 1: the output of block i-1 without the class token):
  random   VPT's uniform init (the baseline),
  sampled  N of those tokens drawn uniformly without replacement (the reference calls it `random`),
  mean/max each image's L tokens cut into runs of L // (N-1) consecutive tokens in raster order plus the remainder,
           each run mean- or max-pooled; N of these pooled tokens drawn without replacement (`mean_pooling` /
           `max_pooling`),
  kmeans   the N k-means centroids of those tokens (a uniform subsample of at most `kmeans_tokens` per block).
Tokens stream batch by batch; only the drawn ones are kept, so memory stays bounded by the prompts (and the k-means
subsample), not by the training split.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from bench import BenchError, nmi
from bench import kmeans as km
from bench.backbone import embed, pool_features, with_position
from bench.cache import TensorCache, cache_key
from bench.config import TrainConfig, _check
from bench.method import METHODS, Adapted, BuildContext, Probe, StartsAsBackbone, linear_head, register_method
from bench.registry import Registry


class PromptedViT(nn.Module):
    """Runs a timm ViT's own modules with prompt tokens inserted; maps images to pooled features.

    Args:
        vit: the frozen backbone (it is shared, not copied).
        prompts: L×N×D initial prompts; L = 1 for shallow, L = depth for deep.
        pooling: `token` or `avg`, as `bench.backbone.pool_features` defines them (prompts are in the `avg` mean).
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
        """Yield the token sequence entering each block (prompts in place), then the last block's output."""
        vit = self.vit
        tokens = embed(vit, images)
        prefix, n = vit.num_prefix_tokens, self.num_prompts
        for depth, block in enumerate(vit.blocks):
            if depth < self.prompts.shape[0]:
                prompts = self.prompt_dropout(self.prompts[depth]).expand(tokens.shape[0], -1, -1)
                kept = tokens[:, prefix:] if depth == 0 else tokens[:, prefix + n:]
                tokens = torch.cat([tokens[:, :prefix], prompts.to(tokens.dtype), kept], dim=1)
            yield tokens
            tokens = block(tokens)
        yield tokens

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        *_, tokens = self.forward_tokens(images)
        return pool_features(self.vit, tokens, self.pooling)

    def prompts_and_patches(self, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per block, the (prompt tokens, patch tokens) entering it as the block sees them: after its first
        LayerNorm, so that rescaling the prompts changes nothing here (what bench.nmi compares)."""
        start, n = self.vit.num_prefix_tokens, self.num_prompts
        *entering, _ = self.forward_tokens(images)
        seen = [block.norm1(tokens) for block, tokens in zip(self.vit.blocks, entering)]
        return [(tokens[:, start:start + n], tokens[:, start + n:]) for tokens in seen]


@torch.no_grad()
def patch_tokens_per_block(vit: VisionTransformer, images: torch.Tensor) -> Iterator[torch.Tensor]:
    """For each block i, yield the patch tokens (no class/register tokens) that enter it in the prompt-free model,
    shaped images×patches×D. Block 0 gets the patch embeddings before the positional embedding. Stop iterating to
    skip the remaining blocks."""
    embedded = vit.patch_embed(images)
    yield embedded.flatten(1, 2) if embedded.ndim == 4 else embedded
    tokens = with_position(vit, embedded)
    for block in vit.blocks[:-1]:
        tokens = block(tokens)
        yield tokens[:, vit.num_prefix_tokens:]


def run_pool(tokens: torch.Tensor, n: int, reduce: str) -> torch.Tensor:
    """The reference's `mean_pooling` / `max_pooling` candidates: images×L×D tokens -> images×n×D.

    Each image's L tokens (raster order) are cut into n-1 runs of w = L // (n-1) consecutive tokens, and one more
    slot pools the last L % w tokens. When L % w is 0 the reference's slice `[-0:]` is the whole sequence, so that
    slot pools every token; this follows it. n = 1 (undefined there: a division by zero) pools the whole sequence.
    """
    length = tokens.shape[1]
    if n - 1 > length:
        raise BenchError(
            f"mean/max init needs num_prompts - 1 <= the {length} patch tokens of an image, got num_prompts={n}; "
            "lower num_prompts or use init=sampled"
        )
    pool = (lambda x: x.mean(dim=1)) if reduce == "mean" else (lambda x: x.amax(dim=1))
    if n == 1:
        return pool(tokens).unsqueeze(1)
    width = length // (n - 1)
    remainder = length % width
    runs = [pool(tokens[:, p * width:(p + 1) * width]) for p in range(n - 1)]
    runs.append(pool(tokens[:, length - remainder:] if remainder else tokens))
    return torch.stack(runs, dim=1)


@dataclass(frozen=True)
class InitContext:
    """What an initialiser's last step may use.

    Attributes:
        source: digest of what determines this block's tokens (backbone, drawn images, block, device), for caches.
        centroids: the build's k-means centroid cache.
    """

    generator: torch.Generator
    source: str
    centroids: TensorCache


@dataclass(frozen=True)
class Initialiser:
    """How SPT turns the tokens entering a block into N prompts, in three steps that let the tokens stream.

    Attributes:
        candidates: (images×L×D tokens of a batch, N) -> images×K×D tokens to draw from.
        per_image: (L, N) -> K, the candidates each image gives.
        keep: (candidates in all, N, config) -> how many to draw uniformly without replacement.
        finish: (drawn keep×D, N, context) -> N×D prompts.
    """

    candidates: Callable[[torch.Tensor, int], torch.Tensor]
    per_image: Callable[[int, int], int]
    keep: Callable[[int, int, "SPTConfig"], int]
    finish: Callable[[torch.Tensor, int, InitContext], torch.Tensor]


INITIALISERS: Registry[Initialiser] = Registry("prompt init")


def _tokens(tokens: torch.Tensor, n: int) -> torch.Tensor:
    return tokens


def _patches(length: int, n: int) -> int:
    return length


def _as_drawn(drawn: torch.Tensor, n: int, ctx: InitContext) -> torch.Tensor:
    return drawn


def _n(total: int, n: int, config: "SPTConfig") -> int:
    return n


def _kmeans(drawn: torch.Tensor, n: int, ctx: InitContext) -> torch.Tensor:
    # One draw from the run's generator whether the cache hits or not, so later draws (the training order) never
    # depend on what happened to be cached.
    seed = int(torch.randint(2**62, (1,), generator=ctx.generator))
    key = cache_key(ctx.source, n, seed, km.SAMPLE, km.SEED_SAMPLE, km.RESTARTS, km.TOL, km.REFINE_ITERS)
    compute = lambda: km.kmeans(drawn, n, torch.Generator().manual_seed(seed))  # noqa: E731
    return ctx.centroids.get_or_compute(key, compute)


INITIALISERS.register("sampled", Initialiser(_tokens, _patches, _n, _as_drawn),
                      "N patch tokens drawn without replacement (the reference's `random`)")
for _reduce in ("mean", "max"):
    INITIALISERS.register(
        _reduce,
        Initialiser(lambda t, n, r=_reduce: run_pool(t, n, r), lambda length, n: n, _n, _as_drawn),
        f"N of the {_reduce}-pooled runs of L // (N-1) consecutive patch tokens (the reference's `{_reduce}_pooling`)",
    )
INITIALISERS.register(
    "kmeans",
    Initialiser(_tokens, _patches, lambda total, n, config: min(total, config.kmeans_tokens), _kmeans),
    "the N k-means centroids of (a uniform subsample of) the patch tokens",
)


def vpt_uniform(vit: VisionTransformer, layers: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """VPT's init: uniform in ±sqrt(6 / (3·patch² + D)), Xavier for a patch-to-token projection."""
    patch = math.prod(vit.patch_embed.patch_size)
    bound = math.sqrt(6.0 / float(3 * patch + vit.embed_dim))
    return (torch.rand(layers, n, vit.embed_dim, generator=generator) * 2 - 1) * bound


# The SPT reference's prompt counts (README.md: "num_prompts is 20 for deep, and 100 for shallow").
SHALLOW_PROMPTS = 100
DEEP_PROMPTS = 20


@dataclass(frozen=True)
class VPTConfig(TrainConfig):
    """VPT's hyper-parameters (see `TrainConfig` for the optimisation ones; recipes set those per backbone).

    Attributes:
        num_prompts: prompt tokens per prompted block (0 reduces to the frozen backbone plus a head).
        prompt_dropout: dropout on prompt tokens during training.
    """

    num_prompts: int = SHALLOW_PROMPTS
    prompt_dropout: float = 0.0
    lr: float = 1e-2
    weight_decay: float = 1e-4

    def validate(self) -> None:
        super().validate()
        _check(self.num_prompts >= 0, "num_prompts", self.num_prompts, "an integer >= 0")
        _check(0 <= self.prompt_dropout < 1, "prompt_dropout", self.prompt_dropout, "a float in [0, 1)")


@dataclass(frozen=True)
class VPTDeepConfig(VPTConfig):
    num_prompts: int = DEEP_PROMPTS


@dataclass(frozen=True)
class SPTConfig(VPTConfig):
    """SPT's hyper-parameters on top of VPT's.

    Attributes:
        init: random | sampled | mean | max | kmeans.
        init_images: training images drawn with replacement to collect tokens from; 0 means len(train), as the
            reference draws.
        kmeans_tokens: at most this many tokens per block (a uniform subsample) go into k-means. The reference
            reads centroids computed offline (`./kmeans-prompt/0.3/`) by code it does not publish.
        prompt_norm: rescale every constructed prompt token to this L2 norm; 0 keeps the construction's scale. A
            block reads a prompt only through LayerNorm, so this asks whether SPT's gain is its content or its
            scale (optimisers step prompts by amounts that do not grow with their norm).
    """

    init: str = "sampled"
    init_images: int = 0
    kmeans_tokens: int = 65536
    prompt_norm: float = 0.0

    def validate(self) -> None:
        super().validate()
        valid = ["random", *INITIALISERS.names()]
        _check(self.init in valid, "init", self.init, " | ".join(valid))
        _check(self.init_images >= 0, "init_images", self.init_images, "an integer >= 0 (0 = the training split's size)")
        _check(self.kmeans_tokens >= 1, "kmeans_tokens", self.kmeans_tokens, "an integer >= 1")
        _check(self.prompt_norm >= 0, "prompt_norm", self.prompt_norm, "a float >= 0 (0 = unchanged)")


@dataclass(frozen=True)
class SPTDeepConfig(SPTConfig):
    num_prompts: int = DEEP_PROMPTS


def construct_prompts(config: SPTConfig, ctx: BuildContext, layers: int, init: str | None = None
                      ) -> tuple[torch.Tensor, dict]:
    """SPT's prompts for the first `layers` blocks from the training split, streamed batch by batch, built as
    `init` says (`config.init` when None). The images go through the pipeline `ctx.pipeline.prompt_images` names."""
    vit = ctx.backbone.model
    init = init or config.init
    strategy = INITIALISERS.get(init)
    n, length = config.num_prompts, vit.patch_embed.num_patches
    count = config.init_images or len(ctx.train)
    picks = torch.randint(len(ctx.train), (count,), generator=ctx.generator)
    per_image = strategy.per_image(length, n)
    total = count * per_image
    keep = strategy.keep(total, n, config)
    if total < keep:
        raise BenchError(
            f"init={init} needs {keep} tokens per block but {count} image(s) give {total}; "
            "raise init_images or lower num_prompts"
        )
    orders = [torch.randperm(total, generator=ctx.generator)[:keep] for _ in range(layers)]
    drawn = [torch.empty(keep, vit.embed_dim) for _ in range(layers)]
    digest = hashlib.sha256()
    offset = 0
    augment = ctx.generator if ctx.pipeline.prompt_images == "train" else None
    for raw in ctx.train.image_batches(picks, config.batch_size, augment):
        digest.update(raw.contiguous().numpy().tobytes())
        blocks = patch_tokens_per_block(vit, ctx.preprocess(raw.to(ctx.device)))
        for block, tokens in zip(range(layers), blocks):
            candidates = strategy.candidates(tokens, n).flatten(0, 1).float().cpu()
            low = offset * per_image
            inside = (orders[block] >= low) & (orders[block] < low + len(candidates))
            drawn[block][inside] = candidates[orders[block][inside] - low]
        offset += len(raw)

    backbone = json.dumps(ctx.backbone.describe(), sort_keys=True, default=str)
    prompts = []
    for block in range(layers):
        source = cache_key(backbone, digest.hexdigest(), block, keep, ctx.device.type)
        block_ctx = InitContext(ctx.generator, source, ctx.centroids)
        prompts.append(strategy.finish(drawn[block].to(ctx.device), n, block_ctx).float().cpu())
    info = {"init": config.init, "init_images": count, "tokens_per_block": keep,
            "prompt_images": ctx.pipeline.prompt_images}
    if init != config.init:
        info["init_effective"] = init
    return torch.stack(prompts), info


def from_data(config: VPTConfig, ctx: BuildContext) -> bool:
    """Whether the prompts are constructed from the training data; without data (`BuildContext.train` None) only
    their shape matters, since a run's saved prompts are loaded over them."""
    return isinstance(config, SPTConfig) and config.init != "random" and config.num_prompts > 0 and \
        ctx.train is not None


def build_prompts(config: VPTConfig, ctx: BuildContext, deep: bool) -> tuple[torch.Tensor, dict]:
    vit = ctx.backbone.model
    layers = len(vit.blocks) if deep else 1
    if not from_data(config, ctx):
        init = config.init if isinstance(config, SPTConfig) else "random"
        prompts, info = vpt_uniform(vit, layers, config.num_prompts, ctx.generator), {"init": init}
    else:
        # The SPT reference's shallow branch samples patch tokens whatever its sample type says
        # (train_MAE.py:211-222); `shallow_init=as_named` pools or clusters as `init` names instead.
        as_reference = not deep and ctx.pipeline.shallow_init == "sampled"
        prompts, info = construct_prompts(config, ctx, layers, "sampled" if as_reference else None)
    if isinstance(config, SPTConfig) and config.prompt_norm > 0:
        # A positive factor per token: LayerNorm, the only way a block reads a prompt, cancels it.
        prompts = prompts * (config.prompt_norm / prompts.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        info["prompt_norm"] = config.prompt_norm
    if config.num_prompts > 0:
        info["initial_prompt_norm"] = float(prompts.norm(dim=-1).mean())
    return prompts, info


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
        info["nmi"] = {"probe_images": nmi.PROBE_IMAGES, "codes": nmi.CODES, "seed": nmi.SEED,
                       "tokens": "after each block's first LayerNorm"}
    return Adapted(trunk, linear_head(ctx.backbone, ctx.num_classes), trunk_frozen=False,
                   extra_tokens=config.num_prompts, setup_seconds=seconds, info=info, probe=probe,
                   constructed=from_data(config, ctx))


# Used under `--recipe none`; the recipes (bench.recipes) carry the references' grids. The learning rates include
# the SPT reference's 5e-2 (MAE) and 1e-3 (MoCo-v3, supervised).
SEARCH = {"lr": [0.05, 0.01, 0.001], "weight_decay": [1e-2, 1e-4, 0.0]}
ZERO_PROMPTS = StartsAsBackbone({"num_prompts": 0}, "prompts are added tokens; with none, the trunk is the backbone")


def _register_prompt_methods() -> None:
    for family, what, configs in (
        ("vpt", "VPT, uniform prompt init", (VPTConfig, VPTDeepConfig)),
        ("spt", "Self-Prompt Tuning, prompts from the data's patch tokens (init=sampled|mean|max|kmeans|random)",
         (SPTConfig, SPTDeepConfig)),
    ):
        for (depth, deep), config_cls in zip((("shallow", False), ("deep", True)), configs):
            where = "before every block" if deep else "at the input only"
            register_method(f"{family}-{depth}", config_cls, f"{what}; prompts {where}", SEARCH,
                            starts_as_backbone=ZERO_PROMPTS)(lambda config, ctx, deep=deep: _build(config, ctx, deep))
        METHODS.alias(family, [f"{family}-shallow", f"{family}-deep"])


_register_prompt_methods()
