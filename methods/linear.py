"""Linear probe: the backbone stays frozen and only a linear classifier on its pooled features learns.

Because the trunk is frozen and deterministic, the engine extracts features once and trains the head on them
(as DINOv2's linear evaluation does) instead of re-running the backbone every epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.backbone import ViTFeatures
from bench.config import TrainConfig
from bench.method import Adapted, BuildContext, linear_head, register_method


@dataclass(frozen=True)
class LinearConfig(TrainConfig):
    lr: float = 1e-2
    weight_decay: float = 0.0
    warmup_epochs: float = 0.0


# Tuning a linear head is cheap on cached features: a wide learning-rate sweep.
SEARCH = {"lr": [0.1, 0.03, 0.01, 0.003, 0.001], "weight_decay": [0.0, 1e-4]}


@register_method("linear", LinearConfig, "Linear probe: frozen backbone, only the classifier head learns", SEARCH)
def build_linear(config: LinearConfig, ctx: BuildContext) -> Adapted:
    trunk = ViTFeatures(ctx.backbone.model, ctx.backbone.pooling)
    return Adapted(trunk, linear_head(ctx.backbone, ctx.num_classes), trunk_frozen=True)
