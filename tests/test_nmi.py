"""The prompt-patch NMI estimator (bench.nmi) and its per-epoch curve in a real run."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score

import bench.methods  # noqa: F401  (registers the methods)
import bench.tasks  # noqa: F401  (registers the tasks)
from bench.engine import run
from bench.nmi import PromptPatchNMI, fit_codebook, nmi, prompt_patch_nmi
from bench.recipes import make_spec


def labels(seed: int, classes: int, count: int = 2000) -> torch.Tensor:
    return torch.randint(classes, (count,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("ka,kb,seed", [(2, 2, 0), (5, 7, 1), (10, 3, 2), (8, 8, 3)])
def test_discrete_nmi_matches_sklearn_on_the_same_labels(ka: int, kb: int, seed: int) -> None:
    a = labels(seed, ka)
    b = torch.where(labels(seed + 100, 4) == 0, labels(seed + 200, kb), a % kb)  # partly dependent on a
    assert nmi(a, b) == pytest.approx(normalized_mutual_info_score(a.numpy(), b.numpy()), abs=1e-9)


def test_discrete_nmi_edge_cases_match_sklearn() -> None:
    constant, varied = torch.zeros(50, dtype=torch.long), labels(0, 5, 50)
    for a, b in ((constant, constant), (constant, varied), (varied, constant)):
        assert nmi(a, b) == pytest.approx(normalized_mutual_info_score(a.numpy(), b.numpy()))


def test_discrete_nmi_is_one_against_itself_and_invariant_to_relabelling() -> None:
    a, b = labels(0, 6), labels(1, 4)
    assert nmi(a, a) == pytest.approx(1.0)
    renumbered = torch.tensor([42, 7, -3, 1000, 5, 9])[a]
    assert nmi(renumbered, b) == pytest.approx(nmi(a, b))


def test_discrete_nmi_is_near_zero_for_independent_labels() -> None:
    assert nmi(labels(0, 8, 20000), labels(1, 8, 20000)) < 0.005


def clustered_tokens(seed: int, images: int = 16, patches: int = 64, dim: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(8, dim, generator=g) * 4
    return centres[torch.randint(8, (images, patches), generator=g)] + torch.randn(images, patches, dim, generator=g)


def test_token_nmi_is_one_for_a_token_set_against_itself() -> None:
    tokens = clustered_tokens(0)
    assert prompt_patch_nmi(tokens, tokens, fit_codebook(tokens)) == pytest.approx(1.0)


def test_token_nmi_is_near_zero_for_independent_random_tokens() -> None:
    patches = torch.randn(16, 64, 192, generator=torch.Generator().manual_seed(0))
    prompts = torch.randn(16, 10, 192, generator=torch.Generator().manual_seed(1))
    assert prompt_patch_nmi(prompts, patches, fit_codebook(patches)) < 0.05


def test_token_nmi_is_one_for_centroid_prompts_and_ignores_prompt_order() -> None:
    patches = clustered_tokens(1)
    codebook = fit_codebook(patches)
    prompts = codebook.expand(16, -1, -1)
    assert prompt_patch_nmi(prompts, patches, codebook) == pytest.approx(1.0)
    shuffled = prompts[:, torch.randperm(8, generator=torch.Generator().manual_seed(0))]
    assert prompt_patch_nmi(shuffled, patches, codebook) == pytest.approx(1.0)


def test_estimator_fits_codebooks_once_and_keeps_them() -> None:
    estimator = PromptPatchNMI()
    patches = clustered_tokens(2)
    estimator([(patches[:, :8], patches)] * 2)
    first = [c.clone() for c in estimator.codebooks]
    estimator([(patches[:, :8], patches + 5.0)] * 2)
    assert all(torch.equal(a, b) for a, b in zip(first, estimator.codebooks))


def test_spt_deep_run_records_per_layer_nmi_at_init_and_after_every_epoch() -> None:
    spec = make_spec("spt-deep", "digits", "micro-vit", 0, {"epochs": 1})
    record = run(spec)
    curve = record.curves["nmi"]
    assert len(curve) == 2  # init + one epoch
    assert all(len(layers) == 6 and all(0.0 <= v <= 1.0 for v in layers) for layers in curve)
    assert record.wallclock.probe > 0
    assert record.method_info["nmi"]["probe_images"] == 8
    assert record.provenance.timm_name == "vit_tiny_patch16_224"
    assert record.provenance.transform["mean"] == [0.5, 0.5, 0.5]


def test_methods_without_prompts_record_no_nmi() -> None:
    spec = make_spec("linear", "digits", "micro-vit", 0, {"epochs": 1})
    record = run(spec)
    assert "nmi" not in record.curves and record.wallclock.probe == 0


@pytest.mark.parametrize("scale", [0.25, 4.0, 50.0])
def test_prompt_patch_nmi_does_not_change_when_prompts_are_rescaled(micro_vit, scale: float) -> None:
    """NMI compares tokens as each block sees them (after its first LayerNorm), so prompts c·p give the NMI of p.
    Raw Euclidean codes would not: rescaled prompts fall into other cells of the patch tokens' codebook. (LayerNorm's
    eps keeps this from being exact for prompts rescaled towards 0; the scales here stay clear of it.)"""
    from bench.data import TASKS, Preprocess
    from bench.methods.prompt import PromptedViT

    images = Preprocess(micro_vit.input_size, micro_vit.mean, micro_vit.std)(
        TASKS.get("digits").load().train.images[:8])
    with torch.no_grad():
        tokens = micro_vit.model.patch_embed(images).flatten(0, 1)
    # Data-like prompts (patch embeddings), so that the NMI is far from 0 and a change would show.
    prompts = tokens[torch.randperm(len(tokens), generator=torch.Generator().manual_seed(0))[:8]]
    prompts = prompts.expand(len(micro_vit.model.blocks), -1, -1).contiguous()
    with torch.no_grad():
        base = PromptPatchNMI()(PromptedViT(micro_vit.model, prompts, "token").eval().prompts_and_patches(images))
        scaled_trunk = PromptedViT(micro_vit.model, scale * prompts, "token").eval()
        scaled = PromptPatchNMI()(scaled_trunk.prompts_and_patches(images))
    assert base[0] > 0.2
    assert scaled == pytest.approx(base, abs=1e-6)
