"""Every fast path against its slow twin, for correctness only (`bench perf` measures the speed; CI times nothing).

Threaded/worker image loading yielding the same batches in order as in-process decoding is pinned by
tests/test_data_layouts.py::test_augmentation_is_seeded_by_the_generator_not_the_workers (workers 0 vs 2).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench import engine
from bench.config import RunSpec
from bench.kmeans import CENTROIDS, CentroidCache, inertia, kmeans
from bench.method import METHODS
from bench.perf import naive_frozen_probe, vit_b_like_tokens


def test_cached_feature_linear_probe_equals_the_naive_loop(tiny_registered):
    backbone, task = tiny_registered
    spec = RunSpec("linear", task, backbone, 3, engine.resolve_hparams("linear", task, {"epochs": 3}))
    cached = engine.run(spec)
    naive = naive_frozen_probe(spec)
    torch.testing.assert_close(torch.tensor(cached["curves"]["train_loss"]),
                               torch.tensor(naive["curves"]["train_loss"]), rtol=1e-5, atol=1e-6)
    assert cached["curves"]["val_acc"] == naive["curves"]["val_acc"]
    assert cached["metrics"]["test_acc"] == naive["test_acc"]


def test_multi_head_sweep_equals_separate_single_head_runs():
    gen = torch.Generator().manual_seed(0)
    features = (torch.randn(70, 16, generator=gen), torch.randint(4, (70,), generator=gen))
    config_cls = METHODS.get("linear").config_cls
    configs = [config_cls.from_overrides({"epochs": 3, "lr": lr, "batch_size": 16}) for lr in (0.1, 0.01, 0.001)]

    def heads() -> list[nn.Linear]:
        torch.manual_seed(5)
        return [nn.Linear(16, 4) for _ in configs]

    swept = heads()
    engine.fit_heads(swept, configs, features, seed=1)
    for head, single, config in zip(swept, heads(), configs):
        engine.fit_heads([single], [config], features, seed=1)
        assert torch.equal(head.weight, single.weight) and torch.equal(head.bias, single.bias)
    assert not torch.equal(swept[0].weight, swept[1].weight), "different learning rates train different heads"


def test_fast_kmeans_inertia_within_one_percent_of_sklearn_on_a_vit_b_like_problem():
    """ViT-B's shape at small scale (768 dims, 20 centroids) and more tokens than the seeding sample, so the
    sample -> full-set refinement path runs."""
    from sklearn.cluster import KMeans

    x = vit_b_like_tokens(6_000, 768, seed=0)
    ours = kmeans(x, 20, torch.Generator().manual_seed(0), sample=2_000)
    reference = KMeans(20, n_init=1, random_state=0).fit(x.numpy())
    assert inertia(x, ours) <= 1.01 * inertia(x, torch.from_numpy(reference.cluster_centers_).float())


def test_centroid_cache_hits_return_identical_centroids_and_keys_separate(tmp_path):
    x = vit_b_like_tokens(500, 32, seed=1)
    cache = CentroidCache(tmp_path)
    computed = cache.get_or_compute("a", lambda: kmeans(x, 4, torch.Generator().manual_seed(0)))
    again = cache.get_or_compute("a", lambda: pytest.fail("a hit must not recompute"))
    from_disk = CentroidCache(tmp_path).get_or_compute("a", lambda: pytest.fail("a disk hit must not recompute"))
    assert torch.equal(computed, again) and torch.equal(computed, from_disk)
    assert (cache.hits, cache.misses) == (1, 1)
    cache.get_or_compute("b", lambda: kmeans(x, 4, torch.Generator().manual_seed(1)))
    assert cache.misses == 2


def _spt_kmeans_prompts(micro_vit, seed: int) -> torch.Tensor:
    from bench.data import Preprocess, TensorSplit
    from bench.method import BuildContext

    gen = torch.Generator().manual_seed(11)
    split = TensorSplit(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=gen),
                        torch.zeros(4, dtype=torch.long))
    method = METHODS.get("spt-deep")
    config = method.config_cls.from_overrides({"init": "kmeans", "num_prompts": "3", "init_images": "4"})
    preprocess = Preprocess(micro_vit.input_size, micro_vit.mean, micro_vit.std)
    ctx = BuildContext(micro_vit, 10, split, preprocess, torch.Generator().manual_seed(seed), torch.device("cpu"))
    return method.build(config, ctx).trunk.prompts.detach()


def test_spt_kmeans_init_is_cached_per_block_and_seed(micro_vit, monkeypatch):
    monkeypatch.setattr(CENTROIDS, "_memory", {})
    monkeypatch.setattr(CENTROIDS, "directory", None)
    blocks = len(micro_vit.model.blocks)
    hits, misses = CENTROIDS.hits, CENTROIDS.misses
    first = _spt_kmeans_prompts(micro_vit, seed=0)
    assert (CENTROIDS.hits - hits, CENTROIDS.misses - misses) == (0, blocks)
    assert torch.equal(_spt_kmeans_prompts(micro_vit, seed=0), first)
    assert CENTROIDS.hits - hits == blocks
    other = _spt_kmeans_prompts(micro_vit, seed=1)
    assert CENTROIDS.misses - misses == 2 * blocks, "another seed is another key"
    assert not torch.equal(other, first)
