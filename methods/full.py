"""Full fine-tuning: every backbone parameter learns, with a fresh classifier head."""

from __future__ import annotations

from dataclasses import dataclass

from bench.backbone import ViTFeatures
from bench.config import TrainConfig
from bench.method import Adapted, BuildContext, linear_head, StartsAsBackbone, register_method


@dataclass(frozen=True)
class FullConfig(TrainConfig):
    lr: float = 1e-4
    weight_decay: float = 0.05


SEARCH = {"lr": [3e-4, 1e-4, 3e-5], "weight_decay": [0.05, 0.01]}


@register_method("full", FullConfig, "Full fine-tuning: every backbone parameter and the head learn", SEARCH,
                 starts_as_backbone=StartsAsBackbone({}, "the trunk is the backbone itself"))
def build_full(config: FullConfig, ctx: BuildContext) -> Adapted:
    ctx.backbone.model.requires_grad_(True)
    trunk = ViTFeatures(ctx.backbone.model, ctx.backbone.pooling)
    return Adapted(trunk, linear_head(ctx.backbone, ctx.num_classes), trunk_frozen=False)
