"""What learns and what stays frozen, parameter counts in the record, and seeding — through `bench.engine.run`
on a tiny registered backbone and task (real digit images), plus one hand-driven training step per method."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from bench import engine
from bench.backbone import LoadedBackbones, load_backbone
from bench.data import TASKS, Preprocess
from bench.engine import Caches
from bench.method import METHODS, BuildContext
from bench.recipes import make_spec

# The engine's real optimiser factory, captured before any test wraps it (spies must not wrap earlier spies).
_REAL_OPTIMIZER = engine._optimizer

PROMPTED = ("vpt-shallow", "vpt-deep", "spt-shallow", "spt-deep")


def _intended(method: str, name: str) -> bool:
    """Which engine parameter names (`trunk.*`, `head.*`) a method is meant to train."""
    if name.startswith("head."):
        return True
    if method == "full":
        return name.startswith("trunk.")
    if method in PROMPTED:
        return name == "trunk.prompts"
    return False


class Spy(LoadedBackbones):
    """The engine's real backbone source (given to the run in its caches) and optimiser factory, keeping hold of
    what they gave and were given."""

    def __init__(self, monkeypatch):
        super().__init__()
        self.backbone = None
        self.backbone_at_load: dict[str, torch.Tensor] = {}
        self.learnable: list[tuple[str, nn.Parameter]] = []
        self.learnable_at_start: dict[str, torch.Tensor] = {}

        def optimizer(learnable, config):
            self.learnable = list(learnable)
            self.learnable_at_start = {n: p.detach().clone() for n, p in self.learnable}
            return _REAL_OPTIMIZER(learnable, config)

        monkeypatch.setattr(engine, "_optimizer", optimizer)

    def get(self, *args, **kwargs):
        self.backbone = super().get(*args, **kwargs)
        self.backbone_at_load = {k: v.detach().clone() for k, v in self.backbone.model.state_dict().items()}
        return self.backbone


def _run(spy_patch, backbone: str, task: str, method: str, seed: int = 0, **overrides):
    spy = Spy(spy_patch)
    overrides = {"epochs": "1", **{k: str(v) for k, v in overrides.items()}}
    record = engine.run(make_spec(method, task, backbone, seed, overrides), caches=Caches(backbones=spy))
    return record, spy


@pytest.mark.parametrize("method", ["linear", "vpt-deep", "spt-deep", "vpt-shallow", "spt-shallow", "full"])
def test_only_intended_parameters_train_and_frozen_backbone_is_bit_identical(monkeypatch, tiny_registered, method):
    backbone_name, task = tiny_registered
    record, spy = _run(monkeypatch, backbone_name, task, method, batch_size=16)
    assert record.status == "done"

    names = [n for n, _ in spy.learnable]
    assert names and all(_intended(method, n) for n in names), names
    model = spy.backbone.model
    expected_names = {"head.weight", "head.bias"}
    if method in PROMPTED:
        expected_names.add("trunk.prompts")
    if method == "full":
        expected_names |= {f"trunk.vit.{n}" for n, _ in model.named_parameters()}
    assert set(names) == expected_names

    # Every learnable parameter moved during the epoch.
    for name, param in spy.learnable:
        assert not torch.equal(param.detach(), spy.learnable_at_start[name]), f"{name} did not change"

    after = model.state_dict()
    if method == "full":
        changed = [k for k, _ in model.named_parameters() if not torch.equal(after[k], spy.backbone_at_load[k])]
        assert len(changed) == len(list(model.parameters()))
    else:
        for key, value in spy.backbone_at_load.items():
            assert torch.equal(after[key], value), f"frozen backbone tensor {key} changed"
        assert not any(p.requires_grad for p in model.parameters())


def test_record_counts_learnable_parameters(monkeypatch, tiny_registered):
    backbone_name, task = tiny_registered
    ref = load_backbone(backbone_name).model
    d, depth, classes = ref.embed_dim, len(ref.blocks), TASKS.get(task).num_classes
    backbone_params = sum(p.numel() for p in ref.parameters())
    head = d * classes + classes
    n = 3
    expected = {
        "linear": head,
        "vpt-shallow": n * d * 1 + head,
        "vpt-deep": n * d * depth + head,
        "spt-deep": n * d * depth + head,
        "spt-shallow": n * d * 1 + head,
        "full": backbone_params + head,
    }
    for method, learnable in expected.items():
        overrides = {} if method in ("linear", "full") else {"num_prompts": n}
        record, _ = _run(monkeypatch, backbone_name, task, method, **overrides)
        params = record.params
        assert params.learnable == learnable, method
        assert params.head == head
        assert params.learnable_without_head == learnable - head
        assert params.backbone == backbone_params
        assert params.learnable_pct == pytest.approx(100.0 * learnable / backbone_params)
        assert record.cpu_share.build > 0 and record.cpu_share.train > 0


def test_the_timer_tells_cpu_seconds_from_wall_clock():
    idle, busy = engine._Timer(), engine._Timer()
    with idle:
        time.sleep(0.2)
    with busy:
        sum(i * i for i in range(1_000_000))
    assert idle.seconds >= 0.2 and idle.cpu_share(threads=1) < 0.25
    assert busy.cpu_seconds > 0 and engine._Timer().cpu_share(threads=1) is None


@pytest.mark.parametrize("method", ["linear", "vpt-deep", "spt-deep", "full"])
def test_one_training_step_sends_gradients_only_to_intended_parameters(method):
    backbone = load_backbone("micro-vit")
    digits = TASKS.get("digits").load()
    preprocess = Preprocess(backbone.input_size, backbone.mean, backbone.std)
    ctx = BuildContext(backbone, 10, digits.train, preprocess, torch.Generator().manual_seed(0), torch.device("cpu"))
    m = METHODS.get(method)
    config = m.config_cls.from_overrides({"num_prompts": "2", "init_images": "4"} if method.startswith("spt") else
                                         {"num_prompts": "2"} if method.startswith("vpt") else {})
    adapted = m.build(config, ctx)
    model = nn.Sequential(adapted.trunk, adapted.head).train()
    loss = nn.functional.cross_entropy(model(preprocess(digits.train.images[:8])), digits.train.labels[:8])
    loss.backward()
    named = dict(adapted.trunk.named_parameters(prefix="trunk")) | dict(adapted.head.named_parameters(prefix="head"))
    with_grad = {n for n, p in named.items() if p.grad is not None and p.grad.abs().sum() > 0}
    intended = {n for n in named if _intended(method, n)}
    assert with_grad == intended
    assert {n for n, p in named.items() if p.requires_grad} == intended


@pytest.mark.parametrize("method", ["vpt-deep", "spt-deep"])
def test_same_seed_same_record_and_other_seed_other_prompts(monkeypatch, tiny_registered, method):
    backbone_name, task = tiny_registered
    first, spy_first = _run(monkeypatch, backbone_name, task, method, seed=0, num_prompts=4)
    again, spy_again = _run(monkeypatch, backbone_name, task, method, seed=0, num_prompts=4)
    other, spy_other = _run(monkeypatch, backbone_name, task, method, seed=1, num_prompts=4)
    assert first.id == again.id != other.id
    assert first.metrics == again.metrics
    assert first.curves == again.curves
    p0, p0_again = spy_first.learnable_at_start["trunk.prompts"], spy_again.learnable_at_start["trunk.prompts"]
    p1 = spy_other.learnable_at_start["trunk.prompts"]
    assert torch.equal(p0, p0_again)
    assert not torch.equal(p0, p1)
    assert first.curves["train_loss"] != other.curves["train_loss"]
