"""SPT prompt construction, built through the real `spt-deep` builder and checked against oracles computed here
from timm's own modules (patch tokens per depth), scikit-learn (k-means inertia), math (VPT's bound) and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench import BenchError
from bench.data import Preprocess, TensorSplit
from bench.kmeans import kmeans
from bench.method import METHODS, BuildContext
from bench.methods.prompt import run_pool


def _context(backbone, split, seed):
    preprocess = Preprocess(backbone.input_size, backbone.mean, backbone.std)
    gen = torch.Generator().manual_seed(seed)
    return BuildContext(backbone, 10, split, preprocess, gen, torch.device("cpu"))


def _noise_split(count: int, seed: int = 11) -> TensorSplit:
    """Random uint8 images: every patch token differs from every other, so membership checks are sharp."""
    gen = torch.Generator().manual_seed(seed)
    return TensorSplit(torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=gen),
                       torch.zeros(count, dtype=torch.long))


def _drawn_images(split: TensorSplit, count: int, seed: int) -> torch.Tensor:
    """The images the builder draws: its first use of the seeded generator draws `count` indices with replacement,
    as the reference's `torch.randint(len(train_data), size=(sample_size,))`."""
    gen = torch.Generator().manual_seed(seed)
    return split.images[torch.randint(len(split), (count,), generator=gen)]


@torch.no_grad()
def _timm_patch_tokens(vit, x: torch.Tensor) -> list[torch.Tensor]:
    """Oracle from timm modules: block 0 -> patch_embed(x) (no position); block i >= 1 -> output of block i-1 with
    the class/register tokens removed. Each entry is images×patches×D."""
    out = [vit.patch_embed(x)]
    tokens = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
    for block in list(vit.blocks)[:-1]:
        tokens = block(tokens)
        out.append(tokens[:, vit.num_prefix_tokens:])
    return out


def _build(backbone, split, seed, **overrides):
    method = METHODS.get("spt-deep")
    config = method.config_cls.from_overrides({k: str(v) for k, v in overrides.items()})
    return method.build(config, _context(backbone, split, seed))


def _members(queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """For each query row, whether it equals (bit for bit) some row of `rows`."""
    return (queries[:, None, :] == rows[None, :, :]).all(dim=2).any(dim=1)


def _split_tokens(backbone, split: TensorSplit) -> list[torch.Tensor]:
    x = Preprocess(backbone.input_size, backbone.mean, backbone.std)(split.images)
    return [t.flatten(0, 1) for t in _timm_patch_tokens(backbone.model, x)]


def test_spt_sampled_prompts_are_patch_tokens_of_their_block_over_the_train_split(micro_vit):
    split, seed, n = _noise_split(6), 3, 5
    adapted = _build(micro_vit, split, seed, init="sampled", num_prompts=n)
    prompts = adapted.trunk.prompts.detach()
    depth = len(micro_vit.model.blocks)
    assert prompts.shape == (depth, n, micro_vit.num_features)
    assert adapted.info["init_images"] == len(split), "the reference draws len(train) images"

    oracle = _split_tokens(micro_vit, split)
    x = Preprocess(micro_vit.input_size, micro_vit.mean, micro_vit.std)(split.images)
    with torch.no_grad():
        with_position = micro_vit.model._pos_embed(micro_vit.model.patch_embed(x))[:, 1:].flatten(0, 1)
    for i in range(depth):
        assert torch.unique(prompts[i], dim=0).shape[0] == n, "drawn without replacement"
        for j in range(depth):
            members = _members(prompts[i], oracle[j])
            if j == i:
                assert members.all(), f"a prompt of block {i} is not a patch token entering block {i}"
            else:
                assert not members.any(), f"a prompt of block {i} comes from depth {j}"
    # Block 0 takes patch embeddings before the positional embedding (prompts carry no position).
    assert not _members(prompts[0], with_position).any()



def test_spt_shallow_prompts_are_patch_embeddings_entering_block_0_only(micro_vit):
    split, seed, n = _noise_split(6), 3, 7
    method = METHODS.get("spt-shallow")
    config = method.config_cls.from_overrides({"num_prompts": str(n)})
    adapted = method.build(config, _context(micro_vit, split, seed))
    prompts = adapted.trunk.prompts.detach()
    assert prompts.shape == (1, n, micro_vit.num_features) and adapted.info["depth"] == "shallow"
    assert torch.unique(prompts[0], dim=0).shape[0] == n
    oracle = _split_tokens(micro_vit, split)
    assert _members(prompts[0], oracle[0]).all(), "a prompt is not a patch embedding of a training image"
    assert not any(_members(prompts[0], tokens).any() for tokens in oracle[1:])
    # The same draw as the deep method's first block: one construction, cut to one block.
    deep = _build(micro_vit, split, seed, init="sampled", num_prompts=n).trunk.prompts.detach()
    assert torch.equal(prompts[0], deep[0])

def test_spt_draws_images_with_replacement_and_uses_only_those(micro_vit):
    """With init_images set, the images are drawn with replacement and prompts come from the drawn images only."""
    split, seed = _noise_split(8), 4
    adapted = _build(micro_vit, split, seed, init="sampled", num_prompts=20, init_images=2)
    x = Preprocess(micro_vit.input_size, micro_vit.mean, micro_vit.std)(_drawn_images(split, 2, seed))
    block0 = micro_vit.model.patch_embed(x).detach().flatten(0, 1)
    assert _members(adapted.trunk.prompts.detach()[0], block0).all()


def _reference_runs(tokens: torch.Tensor, n: int, reduce: str) -> torch.Tensor:
    """The reference's `mean_pooling`/`max_pooling` candidates, written from its description: window = L // (n-1);
    run p covers tokens [p·window, (p+1)·window) for p < n-1; the last slot pools `x[:, -(L % window):]`, which in
    Python is the whole sequence when L % window == 0. Returns images×n×D."""
    length = tokens.shape[1]
    window = length // (n - 1)
    remain = length % window
    slices = [tokens[:, p * window:(p + 1) * window] for p in range(n - 1)] + [tokens[:, -remain:]]
    reduce_fn = (lambda t: t.mean(dim=1)) if reduce == "mean" else (lambda t: t.max(dim=1).values)
    return torch.stack([reduce_fn(t) for t in slices], dim=1)


@pytest.mark.parametrize("reduce", ["mean", "max"])
@pytest.mark.parametrize("n", [2, 5, 7, 9])  # 64 tokens: remainders 0 (whole-sequence slot), 4, 4, 0
def test_run_pooling_equals_the_reference_on_a_hand_built_tensor(reduce, n):
    tokens = torch.arange(2 * 64 * 3, dtype=torch.float32).view(2, 64, 3) ** 1.5 % 17
    assert torch.equal(run_pool(tokens, n, reduce), _reference_runs(tokens, n, reduce))


def test_run_pooling_with_more_prompts_than_tokens_is_one_clear_error():
    with pytest.raises(BenchError, match="num_prompts - 1 <= the 4 patch tokens"):
        run_pool(torch.zeros(1, 4, 3), 6, "mean")


@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_spt_pooled_prompts_are_reference_runs_of_their_block(micro_vit, reduce):
    split, seed, n = _noise_split(3), 5, 6
    prompts = _build(micro_vit, split, seed, init=reduce, num_prompts=n).trunk.prompts.detach()
    x = Preprocess(micro_vit.input_size, micro_vit.mean, micro_vit.std)(split.images)
    for i, tokens in enumerate(_timm_patch_tokens(micro_vit.model, x)):
        runs = _reference_runs(tokens, n, reduce).flatten(0, 1)
        for row in prompts[i]:
            distance = float((runs - row).abs().amax(dim=1).min())
            assert distance <= 1e-5, f"{reduce} prompt of block {i} is no pooled run of that block (off by {distance})"


def test_prompt_norm_rescales_every_prompt_and_keeps_what_the_blocks_compute(micro_vit):
    split, seed = _noise_split(4), 1
    raw = _build(micro_vit, split, seed, init="sampled", num_prompts=4).trunk
    scaled = _build(micro_vit, split, seed, init="sampled", num_prompts=4, prompt_norm=1.5).trunk
    norms = scaled.prompts.detach().norm(dim=-1)
    torch.testing.assert_close(norms, torch.full_like(norms, 1.5))
    # Same directions: the same tokens were drawn, only their lengths changed.
    torch.testing.assert_close(scaled.prompts.detach() / 1.5, raw.prompts.detach() / raw.prompts.detach().norm(
        dim=-1, keepdim=True))
    # Blocks read prompts through LayerNorm: class and patch tokens entering every block are unchanged.
    x = Preprocess(micro_vit.input_size, micro_vit.mean, micro_vit.std)(split.images)
    with torch.no_grad():
        for a, b in zip(raw.eval().forward_tokens(x), scaled.eval().forward_tokens(x)):
            torch.testing.assert_close(a[:, :1], b[:, :1], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(a[:, 1 + 4:], b[:, 1 + 4:], atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def structured_tokens():
    """3,072 real patch tokens: micro-vit's block-2 outputs on 48 digit images."""
    from bench.backbone import load_backbone
    from bench.data import TASKS

    backbone = load_backbone("micro-vit")
    images = TASKS.get("digits").load().train.images[:48]
    x = Preprocess(backbone.input_size, backbone.mean, backbone.std)(images)
    return _timm_patch_tokens(backbone.model, x)[2].flatten(0, 1).contiguous()


def _inertia(x: np.ndarray, centres: np.ndarray) -> float:
    x, centres = x.astype(np.float64), centres.astype(np.float64)
    return float(((x[:, None, :] - centres[None]) ** 2).sum(-1).min(1).sum())


def test_kmeans_inertia_within_one_percent_of_sklearn(structured_tokens):
    from sklearn.cluster import KMeans

    k = 10
    x = structured_tokens.numpy()
    reference = KMeans(n_clusters=k, n_init=1, random_state=0).fit(x)
    ours = kmeans(structured_tokens, k, torch.Generator().manual_seed(0)).numpy()
    assert ours.shape == (k, x.shape[1])
    sk_inertia = _inertia(x, reference.cluster_centers_)
    assert _inertia(x, ours) <= 1.01 * sk_inertia


def test_kmeans_centroids_are_means_of_their_clusters(structured_tokens):
    """Lloyd's fixed point: each centroid is the mean of the tokens nearest to it."""
    centres = kmeans(structured_tokens, 8, torch.Generator().manual_seed(1))
    x = structured_tokens.double()
    labels = torch.cdist(x, centres.double()).argmin(dim=1)
    for j in range(8):
        members = x[labels == j]
        assert len(members) > 0
        torch.testing.assert_close(members.mean(0), centres[j].double(), atol=1e-4, rtol=1e-4)


def test_kmeans_seeds_change_centroids_and_repeat_exactly(structured_tokens):
    a = kmeans(structured_tokens, 10, torch.Generator().manual_seed(0))
    b = kmeans(structured_tokens, 10, torch.Generator().manual_seed(1))
    again = kmeans(structured_tokens, 10, torch.Generator().manual_seed(0))
    assert torch.equal(a, again)
    assert not torch.allclose(a, b)


def test_spt_kmeans_prompts_are_centroids_of_each_blocks_tokens(micro_vit):
    """The builder clusters block i's tokens for prompt set i (a Lloyd fixed point on exactly those tokens)."""
    split, seed, n = _noise_split(4), 2, 5
    adapted = _build(micro_vit, split, seed, init="kmeans", num_prompts=n)
    prompts = adapted.trunk.prompts.detach()
    # Every token of the drawn images, repeats included, as the reference collects them.
    x = Preprocess(micro_vit.input_size, micro_vit.mean, micro_vit.std)(_drawn_images(split, len(split), seed))
    for i, tokens in enumerate(_timm_patch_tokens(micro_vit.model, x)):
        t = tokens.flatten(0, 1).double()
        labels = torch.cdist(t, prompts[i].double()).argmin(dim=1)
        for j in range(n):
            torch.testing.assert_close(t[labels == j].mean(0), prompts[i, j].double(), atol=1e-4, rtol=1e-4)


def test_spt_random_init_is_vpt_uniform_bound(micro_vit):
    from scipy import stats

    split = _noise_split(2)
    n = 10
    adapted = _build(micro_vit, split, 0, init="random", num_prompts=n)
    prompts = adapted.trunk.prompts.detach()
    vit = micro_vit.model
    patch_area = vit.patch_embed.patch_size[0] * vit.patch_embed.patch_size[1]
    bound = math.sqrt(6.0 / (3 * patch_area + vit.embed_dim))
    assert prompts.shape == (len(vit.blocks), n, vit.embed_dim)
    assert float(prompts.abs().max()) <= bound
    assert float(prompts.abs().max()) > 0.95 * bound
    assert stats.kstest(prompts.flatten().numpy() / bound, "uniform", args=(-1, 2)).pvalue > 1e-3

    # SPT's random baseline is exactly VPT's init for the same seed.
    vpt = METHODS.get("vpt-deep")
    vpt_adapted = vpt.build(vpt.config_cls.from_overrides({"num_prompts": str(n)}), _context(micro_vit, split, 0))
    assert torch.equal(vpt_adapted.trunk.prompts.detach(), prompts)


@pytest.mark.parametrize("method,init", [("spt-deep", "sampled"), ("vpt-deep", None)])
def test_prompt_init_depends_on_seed_only(micro_vit, method, init):
    split = _noise_split(4)
    m = METHODS.get(method)
    overrides = {"num_prompts": "4"} | ({"init": init} if init else {})
    config = m.config_cls.from_overrides(overrides)
    first = m.build(config, _context(micro_vit, split, 0)).trunk.prompts.detach()
    again = m.build(config, _context(micro_vit, split, 0)).trunk.prompts.detach()
    other = m.build(config, _context(micro_vit, split, 1)).trunk.prompts.detach()
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def _reference_shallow(backbone, images: torch.Tensor, n: int) -> torch.Tensor:
    """SPT's shallow branch (train_MAE.py:211-222; train.py:189-200, train_MoCo.py:192-203), whatever
    `--prompt_sample_type` says: the patch embeddings of every drawn image, flattened, N of them kept without
    replacement. Returns the candidate set (the reference's permutation comes from torch's unseeded RNG)."""
    with torch.no_grad():
        x = Preprocess(backbone.input_size, backbone.mean, backbone.std)(images)
        return backbone.model.patch_embed(x).flatten(0, 1)


@pytest.mark.parametrize("init", ["mean", "max", "kmeans"])
def test_shallow_spt_samples_tokens_whatever_init_says_as_the_reference(micro_vit, init):
    from bench.protocol import Protocol

    split, seed, n = _noise_split(6), 3, 7
    method = METHODS.get("spt-shallow")

    def build(init_name: str, shallow_init: str):
        config = method.config_cls.from_overrides({"num_prompts": str(n), "init": init_name})
        ctx = _context(micro_vit, split, seed)
        ctx = BuildContext(ctx.backbone, 10, split, ctx.preprocess, ctx.generator, ctx.device,
                           pipeline=Protocol(shallow_init=shallow_init))
        return method.build(config, ctx)

    as_reference = build(init, "sampled")
    prompts = as_reference.trunk.prompts.detach()[0]
    assert as_reference.info["init"] == init and as_reference.info["init_effective"] == "sampled"
    assert _members(prompts, _reference_shallow(micro_vit, split.images, n)).all()
    assert torch.unique(prompts, dim=0).shape[0] == n, "drawn without replacement"
    # Bit for bit the sampled construction under the same generator.
    assert torch.equal(prompts, build("sampled", "sampled").trunk.prompts.detach()[0])
    # The named departure pools or clusters as `init` says: no longer patch embeddings.
    pooled = build(init, "as_named").trunk.prompts.detach()[0]
    assert not _members(pooled, _reference_shallow(micro_vit, split.images, n)).all()
