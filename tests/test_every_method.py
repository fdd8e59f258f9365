"""Every registered method, walked as peft's test suite walks its tuners: it builds on a tiny ViT; it starts as the
backbone where it declares it does (`StartsAsBackbone`, given at registration); exactly what it marks learnable gets
gradients; and its run's record round-trips through the store. Registering a method is all it takes to be covered.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import pytest
import torch
from torch import nn

import bench.methods  # noqa: F401  (registers the methods this module walks)
from bench import engine
from bench.backbone import load_backbone
from bench.data import TASKS, Preprocess
from bench.method import METHODS, Adapted, BuildContext
from bench.recipes import make_spec
from bench.store import Store

EVERY_METHOD = METHODS.names()


@pytest.fixture
def context(tiny_registered, tiny_vit) -> Callable[[], BuildContext]:
    """Factory: a fresh build context on the tiny registered backbone and task. The backbone carries the perturbed
    weights of `tiny_vit` (timm's init leaves norms at one and biases at zero, where a wrongly rebuilt layer could
    still pass for the backbone's)."""
    backbone_name, task_name = tiny_registered

    def make() -> BuildContext:
        backbone = load_backbone(backbone_name)
        backbone.model.load_state_dict(tiny_vit().state_dict())
        task = TASKS.get(task_name)
        return BuildContext(backbone, task.num_classes, task.load().train,
                            Preprocess(backbone.input_size, backbone.mean, backbone.std),
                            torch.Generator().manual_seed(0), torch.device("cpu"))

    return make


def _batch(ctx: BuildContext) -> tuple[torch.Tensor, torch.Tensor]:
    return ctx.preprocess(ctx.train.images[:8]), ctx.train.labels[:8]


def _build(name: str, ctx: BuildContext, hparams: dict[str, Any]) -> Adapted:
    method = METHODS.get(name)
    return method.build(method.config_cls.from_overrides(hparams), ctx)


def _features_and_backbones(name: str, ctx: BuildContext, hparams: dict[str, Any]
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The adapted trunk's features at init, and the untouched backbone's pre-logits features by timm's own forward,
    on the same images. Methods adapt the backbone in place, so the reference is a copy taken before they do."""
    reference = copy.deepcopy(ctx.backbone.model)
    adapted = _build(name, ctx, hparams)
    images, _ = _batch(ctx)
    with torch.no_grad():
        return adapted.trunk.eval()(images), reference(images)


def _same(features: torch.Tensor, backbone: torch.Tensor) -> bool:
    return features.shape == backbone.shape and torch.allclose(features, backbone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", EVERY_METHOD)
def test_it_starts_as_the_backbone_where_it_declares_it_does(name, context):
    declared = METHODS.get(name).starts_as_backbone
    if declared.given is None:
        features, backbone = _features_and_backbones(name, context(), {})
        assert not _same(features, backbone), f"{name} declares it never starts as the backbone ({declared.why})"
        return
    features, backbone = _features_and_backbones(name, context(), declared.given)
    assert _same(features, backbone), f"{name} with {declared.given} should start as the backbone: {declared.why}"
    if declared.given:
        features, backbone = _features_and_backbones(name, context(), {})
        assert not _same(features, backbone), f"{name} starts as the backbone without {declared.given}: declare {{}}"


@pytest.mark.parametrize("name", EVERY_METHOD)
def test_only_what_it_marks_learnable_gets_gradients(name, context):
    ctx = context()
    adapted = _build(name, ctx, {})
    model = nn.Sequential(adapted.trunk, adapted.head).train()
    images, labels = _batch(ctx)
    nn.functional.cross_entropy(model(images), labels).backward()

    params = dict(model.named_parameters())
    learnable = {n for n, p in params.items() if p.requires_grad}
    assert learnable, f"{name} marks nothing learnable"
    assert {n for n, p in params.items() if p.grad is not None} == learnable
    # The engine caches a frozen trunk's features and trains only the head; a trunk that learns must not say so.
    assert adapted.trunk_frozen == (not any(p.requires_grad for p in adapted.trunk.parameters()))


@pytest.mark.parametrize("name", EVERY_METHOD)
def test_its_record_round_trips_through_the_store(name, tiny_registered, tmp_path):
    backbone, task = tiny_registered
    record = engine.run(make_spec(name, task, backbone, 0, {"epochs": "1"}))
    assert record.status == "done" and record.spec.method == name
    store = Store(tmp_path)
    store.write(record)
    assert store.read(record.id) == record
