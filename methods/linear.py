"""Linear probe: the backbone stays frozen and only a linear classifier on its pooled features learns.

Because the trunk is frozen and deterministic, the engine extracts features once and trains the head on them
(as DINOv2's linear evaluation does) instead of re-running the backbone every epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from bench.backbone import ViTFeatures
from bench.config import TrainConfig, _check
from bench.method import Adapted, BuildContext, classifier, StartsAsBackbone, register_method

FEATURE_NORMS = ("none", "batchnorm")


@dataclass(frozen=True)
class LinearConfig(TrainConfig):
    """The probe's optimisation.

    Attributes:
        epochs: 100 whatever the task: VPT's linear probe trains 100 epochs, and on cached features an epoch costs
            milliseconds, so the head is trained to convergence even where a task's default is short (the micro suite's
            prompt runs).
        feature_norm: `none` (VPT's probe: the head reads the pooled features as they are) or `batchnorm` (MAE's
            `main_linprobe.py`: a BatchNorm1d without affine parameters standardises each feature before the head; MAE
            features are badly scaled for a linear head without it).
    """

    epochs: int = 100
    lr: float = 1e-2
    weight_decay: float = 0.0
    warmup_epochs: float = 0.0
    feature_norm: str = "none"

    def validate(self) -> None:
        super().validate()
        _check(self.feature_norm in FEATURE_NORMS, "feature_norm", self.feature_norm, " or ".join(FEATURE_NORMS))


# Tuning a linear head is cheap on cached features: a wide learning-rate sweep.
SEARCH = {"lr": [0.1, 0.03, 0.01, 0.003, 0.001], "weight_decay": [0.0, 1e-4]}


@register_method("linear", LinearConfig, "Linear probe: frozen backbone, only the classifier head learns", SEARCH,
                 starts_as_backbone=StartsAsBackbone({}, "the trunk is the frozen backbone"))
def build_linear(config: LinearConfig, ctx: BuildContext) -> Adapted:
    trunk = ViTFeatures(ctx.backbone.model, ctx.backbone.pooling)
    head = probe_head(ctx.backbone.num_features, ctx.num_classes, config.feature_norm)
    return Adapted(trunk, head, trunk_frozen=True)


def probe_head(in_features: int, num_classes: int, feature_norm: str) -> nn.Module:
    """The probe's classifier, behind MAE's feature standardisation when `feature_norm` is `batchnorm`."""
    head = classifier(in_features, num_classes)
    if feature_norm == "batchnorm":
        return nn.Sequential(nn.BatchNorm1d(in_features, affine=False, eps=1e-6), head)
    return head
