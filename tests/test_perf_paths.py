"""Every fast path against its slow twin, for correctness only (`bench perf` measures the speed; CI times nothing).

Threaded/worker image loading yielding the same batches in order as in-process decoding is pinned by
tests/test_data_layouts.py::test_augmentation_is_seeded_by_the_generator_not_the_workers (workers 0 vs 2).
"""

from __future__ import annotations

import pytest
import torch

from bench import engine
from bench.cache import TensorCache
from bench.engine import Caches
from bench.kmeans import inertia, kmeans
from bench.method import METHODS
from bench.perf import naive_frozen_probe, vit_b_like_tokens
from bench.recipes import make_spec


def test_cached_feature_linear_probe_equals_the_naive_loop(tiny_registered):
    backbone, task = tiny_registered
    spec = make_spec("linear", task, backbone, 3, {"epochs": 3})
    cached = engine.run(spec)
    naive = naive_frozen_probe(spec)
    torch.testing.assert_close(torch.tensor(cached.curves["train_loss"]),
                               torch.tensor(naive["curves"]["train_loss"]), rtol=1e-5, atol=1e-6)
    assert cached.curves["val_acc"] == naive["curves"]["val_acc"]
    assert cached.metrics.test_acc == naive["test_acc"]


def test_a_linear_sweep_shares_one_feature_pass_and_each_run_equals_one_that_extracts_its_own(
    tiny_registered, tmp_path
):
    backbone, task = tiny_registered
    sweep = [make_spec("linear", task, backbone, 0, {"epochs": 2, "lr": lr}, stage="tune") for lr in (0.1, 0.01)]
    worker = Caches(features=TensorCache(tmp_path))
    shared = [engine.run(spec, caches=worker) for spec in sweep]
    assert (worker.features.misses, worker.features.hits) == (2, 2), "train and val features once, for both runs"
    assert len(list(tmp_path.glob("*.pt"))) == 2
    assert shared[0].curves != shared[1].curves, "different learning rates train different heads"

    for spec, record in zip(sweep, shared):
        alone = engine.run(spec)  # no caches given: it extracts its own features
        assert alone.curves == record.curves and alone.metrics == record.metrics

    # Another process (an empty memory) on the same results directory reads the features from disk.
    other_process = Caches(features=TensorCache(tmp_path))
    assert engine.run(sweep[1], caches=other_process).curves == shared[1].curves
    assert (other_process.features.misses, other_process.features.hits) == (0, 2)


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
    cache = TensorCache(tmp_path)
    computed = cache.get_or_compute("a", lambda: kmeans(x, 4, torch.Generator().manual_seed(0)))
    again = cache.get_or_compute("a", lambda: pytest.fail("a hit must not recompute"))
    from_disk = TensorCache(tmp_path).get_or_compute("a", lambda: pytest.fail("a disk hit must not recompute"))
    assert torch.equal(computed, again) and torch.equal(computed, from_disk)
    assert (cache.hits, cache.misses) == (1, 1)
    cache.get_or_compute("b", lambda: kmeans(x, 4, torch.Generator().manual_seed(1)))
    assert cache.misses == 2


def _spt_kmeans_prompts(micro_vit, seed: int, centroids: TensorCache) -> torch.Tensor:
    from bench.data import Preprocess, TensorSplit
    from bench.method import BuildContext

    gen = torch.Generator().manual_seed(11)
    split = TensorSplit(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=gen),
                        torch.zeros(4, dtype=torch.long))
    method = METHODS.get("spt-deep")
    config = method.config_cls.from_overrides({"init": "kmeans", "num_prompts": "3", "init_images": "4"})
    preprocess = Preprocess(micro_vit.input_size, micro_vit.mean, micro_vit.std)
    ctx = BuildContext(micro_vit, 10, split, preprocess, torch.Generator().manual_seed(seed), torch.device("cpu"),
                       centroids)
    return method.build(config, ctx).trunk.prompts.detach()


def test_spt_kmeans_init_is_cached_per_block_and_seed(micro_vit):
    blocks = len(micro_vit.model.blocks)
    centroids = TensorCache()
    first = _spt_kmeans_prompts(micro_vit, 0, centroids)
    assert (centroids.hits, centroids.misses) == (0, blocks)
    assert torch.equal(_spt_kmeans_prompts(micro_vit, 0, centroids), first)
    assert centroids.hits == blocks
    other = _spt_kmeans_prompts(micro_vit, 1, centroids)
    assert centroids.misses == 2 * blocks, "another seed is another key"
    assert not torch.equal(other, first)
    assert torch.equal(_spt_kmeans_prompts(micro_vit, 0, TensorCache()), first), "a hit gives what k-means computes"


def test_the_memory_of_a_cache_keeps_the_most_recently_used_entries_within_its_byte_budget(monkeypatch):
    from bench import cache as cache_module

    monkeypatch.setattr(cache_module, "MEMORY_BYTES", 2 * 4 * 100)  # two entries of 100 float32
    cache = TensorCache()
    for key in "abc":
        cache.get_or_compute(key, lambda: (torch.zeros(100), torch.ones(0)))
    cache.get_or_compute("b", lambda: pytest.fail("b was used recently and must be held"))
    computed = []
    cache.get_or_compute("a", lambda: computed.append("a") or (torch.zeros(100), torch.ones(0)))
    assert computed == ["a"], "a, the least recently used, was evicted"


def test_the_data_path_and_device_figures_measure_the_paths_they_name_on_the_cpu(tiny_registered, tmp_path):
    """`bench perf`'s issue-13 figures, device-agnostic code run here on the CPU at toy sizes: each must measure a
    finite positive ratio, and the engine's run must have read the decode cache, not the files."""
    import math

    from bench.perf import data_path, engine_vs_bare, fixed_cost, jobs_on_one_device, jpeg_fixture

    backbone, _ = tiny_registered
    root = jpeg_fixture(tmp_path / "data", classes=2, per_class={"train": 4, "val": 1, "test": 2}, size=(64, 48))
    cpu = torch.device("cpu")
    figures = data_path(root, cpu, repeats=1) + engine_vs_bare(root, backbone, cpu, epochs=1)
    figures += [fixed_cost(root, backbone, cpu), jobs_on_one_device(tmp_path, "cpu", (1, 2), ["linear"], ["digits"], 1)]
    assert len(figures) == 10
    assert all(f.ratio is None or (math.isfinite(f.ratio) and f.ratio > 0) for f in figures), figures
    assert len(list((root / "cache").glob("*/images.npy"))) == 4, "train (eval and stored), val, test"
