"""The methods beyond prompts — LoRA, DoRA, LoHa, LoKr, (IA)³ and LayerNorm tuning through `peft`; BitFit,
AdaptFormer and SSF over timm's own modules — built by their real registered builders and checked for: the
backbone's exact features at init, gradients only where the method says, a bit-identical backbone after training
(merged = unmerged for the peft methods that merge), and learnable-parameter counts equal to each method's closed
form on ViT-B/16."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn
from torch.testing import assert_close

from bench import BenchError, engine
from bench.backbone import Backbone, load_backbone
from bench.data import Preprocess, TensorSplit
from bench.method import METHODS, Adapted, BuildContext
from bench.recipes import make_spec
from bench.store import Store

# Overrides that make each method start as exactly the backbone (all but SSF do so by default).
NEW = {
    "lora": {}, "dora": {}, "loha": {}, "lokr": {}, "ia3": {}, "ln-tuning": {}, "bitfit": {}, "adaptformer": {},
    "ssf": {"init_std": "0"},
}
PEFT_MERGEABLE = ("lora", "dora", "loha", "lokr", "ia3")


def _backbone(vit: nn.Module) -> Backbone:
    """`vit` as `load_backbone` hands it to a method: frozen."""
    vit.requires_grad_(False)
    return Backbone("test-vit", vit, "token", "none", int(vit.patch_embed.img_size[0]), (0.5,) * 3, (0.5,) * 3,
                    "random-init(test)", None, None)


def _build(method: str, vit: nn.Module, seed: int = 0, **overrides: str) -> Adapted:
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    backbone = _backbone(vit)
    ctx = BuildContext(backbone, 5, TensorSplit(images, torch.zeros(4, dtype=torch.long)),
                       Preprocess(backbone.input_size, backbone.mean, backbone.std),
                       torch.Generator().manual_seed(seed), torch.device("cpu"))
    m = METHODS.get(method)
    return m.build(m.config_cls.from_overrides({**NEW[method], **overrides}), ctx)


def _features(vit: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return vit.forward_head(vit.forward_features(images), pre_logits=True)


def _added(adapted: Adapted, backbone_params: set[int]) -> dict[str, nn.Parameter]:
    return {n: p for n, p in adapted.trunk.named_parameters() if p.requires_grad and id(p) not in backbone_params}


@pytest.mark.parametrize("method", list(NEW))
def test_identity_at_init_gives_the_backbones_features(tiny_vit, images, method):
    vit = tiny_vit()
    before = _features(vit, images)
    adapted = _build(method, vit)
    with torch.no_grad():
        after = adapted.trunk.eval()(images)
    if method == "dora":  # magnitude · direction / ‖direction‖ equals W only up to rounding
        assert_close(after, before, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(after, before)

    # The added parameters are on the forward path: moving them moves the features.
    with torch.no_grad():
        for p in adapted.trunk.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
        assert not torch.allclose(adapted.trunk(images), before)


@pytest.mark.parametrize("method", list(NEW))
def test_gradients_reach_only_the_method_and_head_and_the_backbone_stays_bit_identical(tiny_vit, images, method):
    vit = tiny_vit()
    originals = dict(vit.named_parameters())
    at_load = {n: p.detach().clone() for n, p in originals.items()}
    adapted = _build(method, vit)
    model = nn.Sequential(adapted.trunk, adapted.head).train()
    learnable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    at_start = {n: p.detach().clone() for n, p in learnable.items()}
    optimizer = torch.optim.AdamW(learnable.values(), lr=1e-2)
    labels = torch.arange(len(images)) % 5
    # Three steps: a zero-initialised factor (LoRA's B) lets its partner (A) learn only from the second step on.
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        assert {n for n, p in model.named_parameters() if p.grad is not None} == set(learnable)
        optimizer.step()
    for name, param in learnable.items():
        assert not torch.equal(param.detach(), at_start[name]), f"{name} did not learn"

    biases = {n for n in originals if n.endswith(".bias")} if method == "bitfit" else set()
    for name, param in originals.items():
        if name in biases:
            assert param.requires_grad and not torch.equal(param, at_load[name]), name
        else:
            assert not param.requires_grad and torch.equal(param, at_load[name]), f"backbone tensor {name} changed"
    if method != "bitfit":
        assert _added(adapted, {id(p) for p in originals.values()}), "the method added nothing learnable"

    if method in PEFT_MERGEABLE:
        from peft.tuners.tuners_utils import BaseTunerLayer

        model.eval()
        with torch.no_grad():
            unmerged = adapted.trunk(images)
            layers = [m for m in vit.modules() if isinstance(m, BaseTunerLayer)]
            assert layers
            for layer in layers:
                layer.merge()
            assert_close(adapted.trunk(images), unmerged, rtol=1e-5, atol=1e-5)


# ViT-B/16: width D = 768, 12 blocks, qkv 768 → 2304, MLP 768 → 3072 → 768. Per block, the biases are those of qkv,
# proj, fc1, fc2 and the two LayerNorms (2304 + 768 + 3072 + 768 + 768 + 768 = 8448); the patch embedding and the
# final LayerNorm add 768 each.
D, DEPTH, QKV, HIDDEN = 768, 12, 2304, 3072
BIASES = DEPTH * (QKV + D + HIDDEN + D + 2 * D) + 2 * D
CLOSED_FORM = {
    "lora": DEPTH * 8 * (D + QKV),                       # B: 2304×8, A: 8×768 per block: 294,912
    "dora": DEPTH * (8 * (D + QKV) + QKV),               # LoRA + one magnitude per output channel
    "loha": DEPTH * 2 * 8 * (D + QKV),                   # two rank-8 pairs
    "lokr": DEPTH * (48 * 24 + 8 * (48 + 32)),           # 2304×768 = (48·48)×(24·32): W1 48×24, A2 48×8, B2 8×32
    "ia3": DEPTH * (QKV + HIDDEN),                       # qkv outputs, fc2 inputs
    "ln-tuning": (2 * DEPTH + 1) * 2 * D,                # norm1, norm2 per block + final norm; scale and bias
    "bitfit": BIASES,
    "adaptformer": DEPTH * (D * 64 + 64 + 64 * D + D),  # down 768→64, up 64→768, with biases: 1,189,632
    "ssf": 2 * BIASES,                                   # a scale and a shift after every operation that has a bias
}


@pytest.fixture(scope="module")
def vit_b16() -> nn.Module:
    """ViT-B/16 with random weights (no download); each test adapts a deep copy."""
    torch.manual_seed(0)
    return timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0).requires_grad_(False).eval()


@pytest.mark.parametrize("method", list(CLOSED_FORM))
def test_learnable_parameters_equal_the_closed_form_on_vit_b16(vit_b16, method):
    vit = copy.deepcopy(vit_b16)
    backbone_params = sum(p.numel() for p in vit.parameters())
    adapted = _build(method, vit)
    counts = engine._param_counts(adapted, engine._learnable(adapted), backbone_params)
    assert counts.learnable_without_head == CLOSED_FORM[method]
    assert counts.head == D * 5 + 5


def test_lora_on_the_mlp_too_adds_fc1_and_fc2(vit_b16):
    adapted = _build("lora", copy.deepcopy(vit_b16), targets="qkv,fc1,fc2")
    counts = engine._param_counts(adapted, engine._learnable(adapted), 1)
    assert counts.learnable_without_head == DEPTH * 8 * ((D + QKV) + (D + HIDDEN) + (HIDDEN + D))


@pytest.mark.parametrize("bad", ["qvk", "proj,qq", "patch_embed", ""])
def test_unknown_lora_targets_are_a_one_line_error_naming_the_valid_layers(bad):
    with pytest.raises(BenchError, match=r"targets=.*qkv \| proj \| fc1 \| fc2"):
        METHODS.get("lora").config_cls.from_overrides({"targets": bad})


def test_record_counts_the_backbone_before_peft_injects_its_layers(tiny_registered):
    backbone_name, task = tiny_registered
    fresh = sum(p.numel() for p in load_backbone(backbone_name).model.parameters())
    record = engine.run(make_spec("lora", task, backbone_name, 0, {"epochs": "1", "rank": "2"}))
    d, depth = 32, 2  # tests/conftest.py's TINY_ARCH
    assert record.params.backbone == record.backbone["num_params"] == fresh
    assert record.params.learnable_without_head == depth * 2 * (d + 3 * d)
    assert record.method_info["adapted_layers"] == depth


def test_same_seed_same_adapters_for_hand_written_methods(tiny_vit):
    for method, overrides in (("adaptformer", {}), ("ssf", {"init_std": "0.02"})):
        first = _build(method, tiny_vit(), seed=3, **overrides)
        again = _build(method, tiny_vit(), seed=3, **overrides)
        other = _build(method, tiny_vit(), seed=4, **overrides)
        flat = [torch.cat([p.flatten() for p in a.trunk.parameters() if p.requires_grad]) for a in (first, again, other)]
        assert torch.equal(flat[0], flat[1]) and not torch.equal(flat[0], flat[2])


def test_one_bench_run_trains_every_new_method_and_the_report_shows_them(tiny_registered, tmp_path, capsys):
    from bench.cli import main
    from bench.report import build_report

    backbone, task = tiny_registered
    results = tmp_path / "results"
    assert main(["run", "--methods", ",".join(NEW), "--tasks", task, "--backbone", backbone, "--epochs", "1",
                 "--protocol", "fixed", "--results", str(results)]) == 0
    records = Store(results).records()
    assert sorted(r.spec.method for r in records) == sorted(NEW)
    for r in records:
        assert r.status == "done" and len(r.curves["train_loss"]) == 1, r.spec.method
        assert 0 < r.params.learnable_without_head < r.params.backbone

    # The report code knows nothing of these methods; its summary and Pareto figure include them all.
    report = build_report(results, tmp_path / "report", ["csv"])
    assert sorted(v for _, v, _ in report.summary.rows) == sorted(NEW)
    assert tmp_path / "report" / "acc_vs_params_pareto.png" in report.paths


@pytest.mark.parametrize("method", list(NEW))
def test_every_search_grid_point_is_a_valid_config(method):
    m = METHODS.get(method)
    assert m.search, f"{method} registers no search grid"
    for key, values in m.search.items():
        for value in values:
            assert getattr(m.config_cls.from_overrides({key: str(value)}), key) == value
