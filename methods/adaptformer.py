"""AdaptFormer (Chen et al., "AdaptFormer: Adapting Vision Transformers for Scalable Visual Recognition",
NeurIPS 2022, Section 3.2): beside each block's MLP, a bottleneck adapter (down-projection to d̂, ReLU,
up-projection back) reads the same LayerNorm output as the MLP, and its output, scaled by s, is added to the MLP's:
    x = x' + MLP(LN(x')) + s · up(ReLU(down(LN(x')))).
The up-projection starts at zero (the reference's "lora" init), so the model starts as the backbone.

Hand-written because peft has no parallel adapter. It runs timm's own blocks: a forward hook on each block's `mlp`
adds the adapter's output to the MLP's, so no ViT code is forked. The hooks stay on the backbone it adapts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from bench.backbone import Pooling, ViTFeatures
from bench.config import TrainConfig, _check
from bench.method import Adapted, BuildContext, linear_head, StartsAsBackbone, register_method


class Bottleneck(nn.Module):
    """down (D → d̂, kaiming-uniform) → ReLU → up (d̂ → D, zero), times `scale`."""

    def __init__(self, dim: int, bottleneck: int, scale: float, generator: torch.Generator) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.scale = scale
        with torch.no_grad():
            # kaiming_uniform(a=√5) as nn.Linear's own default, drawn from the run's generator so runs repeat.
            bound = 1.0 / math.sqrt(dim)
            self.down.weight.uniform_(-bound, bound, generator=generator)
            self.down.bias.zero_()
            self.up.weight.zero_()
            self.up.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(torch.relu(self.down(x)))


class AdaptFormerViT(ViTFeatures):
    """timm's forward with one `Bottleneck` beside every block's MLP (added by forward hooks on `block.mlp`)."""

    def __init__(self, vit: nn.Module, pooling: Pooling, bottleneck: int, scale: float, generator: torch.Generator
                 ) -> None:
        super().__init__(vit, pooling)
        self.adapters = nn.ModuleList(Bottleneck(vit.embed_dim, bottleneck, scale, generator) for _ in vit.blocks)
        for block, adapter in zip(vit.blocks, self.adapters):
            block.mlp.register_forward_hook(lambda _mlp, inputs, output, adapter=adapter: output + adapter(inputs[0]))


@dataclass(frozen=True)
class AdaptFormerConfig(TrainConfig):
    """AdaptFormer's hyper-parameters (see `TrainConfig` for the optimisation ones).

    Attributes:
        bottleneck: d̂, the adapter's middle width (the paper's default 64).
        scale: s, the factor on the adapter's output (the paper's default 0.1).
    """

    bottleneck: int = 64
    scale: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 1e-4

    def validate(self) -> None:
        super().validate()
        _check(self.bottleneck >= 1, "bottleneck", self.bottleneck, "an integer >= 1")
        _check(self.scale > 0, "scale", self.scale, "a positive float")


SEARCH = {"lr": [1e-2, 3e-3, 1e-3], "bottleneck": [8, 64]}


@register_method("adaptformer", AdaptFormerConfig, "AdaptFormer: scaled bottleneck adapter in parallel with each "
                 "block's MLP (up-projection zero at init)", SEARCH,
                 starts_as_backbone=StartsAsBackbone({}, "the up-projection starts at zero"))
def build_adaptformer(config: AdaptFormerConfig, ctx: BuildContext) -> Adapted:
    trunk = AdaptFormerViT(ctx.backbone.model, ctx.backbone.pooling, config.bottleneck, config.scale, ctx.generator)
    return Adapted(trunk, linear_head(ctx.backbone, ctx.num_classes), trunk_frozen=False,
                   info={"adapted_blocks": len(trunk.adapters)})
