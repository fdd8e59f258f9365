"""The interface between the harness and a tuning method.

A method is a config dataclass (its validated hyper-parameters) and a builder that adapts a frozen backbone into a
trunk (images -> features) and a head (features -> logits). The engine never asks which method it runs: it trains
whatever the builder marked learnable, and caches trunk features when the builder says the trunk is frozen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from bench.backbone import Backbone
from bench.cache import TensorCache
from bench.config import TrainConfig
from bench.data import Preprocess, Split
from bench.protocol import Protocol
from bench.registry import Registry


@dataclass
class Adapted:
    """A backbone adapted by a method.

    Attributes:
        trunk: images (preprocessed) -> features.
        head: features -> logits.
        trunk_frozen: the trunk learns nothing and is deterministic, so its features may be computed once.
        extra_tokens: tokens the method adds to each image's sequence (per block for deep prompts).
        setup_seconds: wall-clock spent building the method before training (SPT's prompt construction).
        info: method-specific facts worth recording (prompt init, layers prompted, ...).
        probe: measurements the method wants recorded at init and after every epoch (SPT's prompt-patch NMI);
            None for methods with nothing to measure.
        constructed: the trunk's learnable tensors were constructed from the training data (SPT's prompts), so the
            engine keeps them as built, before training (the `init` artifact).
    """

    trunk: nn.Module
    head: nn.Module
    trunk_frozen: bool
    extra_tokens: int = 0
    setup_seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    probe: Probe | None = None
    constructed: bool = False


@dataclass(frozen=True)
class Probe:
    """A method's own measurement, taken by the engine on a fixed batch of training images so that curves are
    comparable across epochs, without the engine knowing what is measured.

    Attributes:
        images: how many training images the probe batch holds (the first ones of the train split).
        measure: preprocessed probe batch -> {curve name: JSON-ready value}; called in eval mode under no_grad.
    """

    images: int
    measure: Callable[[torch.Tensor], dict[str, Any]]


@dataclass(frozen=True)
class BuildContext:
    """What a builder may use: the backbone, the task's training split, a seeded generator and the device.

    Attributes:
        train: None when the build only gives the structure that a run's saved tensors are loaded into
            (`bench.load_run`): a method whose init reads the training data then skips it.
        centroids: where SPT's k-means init keeps its centroids (the worker's, shared by a sweep's runs); a build
            given none computes them afresh.
        pipeline: the run's pipeline values (SPT reads how to draw its prompt images and its shallow init).
    """

    backbone: Backbone
    num_classes: int
    train: Split | None
    preprocess: Preprocess
    generator: torch.Generator
    device: torch.device
    centroids: TensorCache = field(default_factory=TensorCache)
    pipeline: Protocol = field(default_factory=Protocol)


@dataclass(frozen=True)
class StartsAsBackbone:
    """Whether a method starts as its backbone: its trunk's features at init equal the frozen backbone's (the fresh
    head aside). tests/test_every_method.py holds every registered method to what it declares here.

    Attributes:
        given: the fewest hyper-parameters, over the config's defaults, under which it does ({}: the defaults do);
            None: no setting does.
        why: the reason, in a phrase: what starts at zero or one, or what the trunk computes instead.
    """

    given: dict[str, Any] | None
    why: str


@dataclass(frozen=True)
class Method:
    """A registered method.

    Attributes:
        config_cls: its hyper-parameters.
        build: adapts a backbone.
        starts_as_backbone: whether, and under which hyper-parameters, the adapted trunk starts as the backbone.
        search: the grid the `tune` protocol searches on val (hyper-parameter -> values).
    """

    config_cls: type[TrainConfig]
    build: Callable[[Any, BuildContext], Adapted]
    starts_as_backbone: StartsAsBackbone
    search: dict[str, list[Any]] = field(default_factory=dict)


METHODS: Registry[Method] = Registry("method")


def register_method(
    name: str, config_cls: type[TrainConfig], description: str, search: dict[str, list[Any]] | None = None, *,
    starts_as_backbone: StartsAsBackbone,
) -> Callable:
    """Decorator: register `build(config, ctx) -> Adapted` under `name` with its config class, search grid and
    whether it starts as the backbone."""

    def wrap(build: Callable[[Any, BuildContext], Adapted]) -> Callable[[Any, BuildContext], Adapted]:
        METHODS.register(name, Method(config_cls, build, starts_as_backbone, search or {}), description)
        return build

    return wrap


def linear_head(backbone: Backbone, num_classes: int) -> nn.Linear:
    """A fresh classifier on the backbone's pooled features (see `classifier`)."""
    return classifier(backbone.num_features, num_classes)


def classifier(in_features: int, num_classes: int) -> nn.Linear:
    """A fresh classifier, initialised as the SPT reference initialises its head (`train_MAE.py` create_model:
    truncated normal with std 0.02, zero bias); drawn from torch's global RNG, which the engine seeds per run."""
    head = nn.Linear(in_features, num_classes)
    nn.init.trunc_normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    return head
