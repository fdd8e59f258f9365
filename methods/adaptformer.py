"""AdaptFormer (Chen et al., "AdaptFormer: Adapting Vision Transformers for Scalable Visual Recognition",
NeurIPS 2022, Section 3.2): beside each block's MLP, a bottleneck adapter (down-projection to d̂, ReLU,
up-projection back) reads the same LayerNorm output as the MLP, and its output, scaled by s, is added to the MLP's:
    x = x' + MLP(LN(x')) + s · up(ReLU(down(LN(x')))).
The up-projection starts at zero (the reference's "lora" init), so the model starts as the backbone.

The reference code (ShoufaChen/AdaptFormer `models/custom_modules.py:77-79`) departs from that equation: its adapter
reads the block's residual stream x', before `norm2` (`input=residual` here), and drops out its ReLU output with
p = 0.1 (L70, `models/adapter.py:57`; `dropout=0.1` here). The defaults follow the paper.

Hand-written because peft has no parallel adapter. It runs timm's own blocks: a forward hook on each block's `mlp`
adds the adapter's output to the MLP's, so no ViT code is forked. The hooks stay on the backbone it adapts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from bench.backbone import Pooling, ViTFeatures
from bench.config import ADDED_LATER, TrainConfig, _check
from bench.method import Adapted, BuildContext, linear_head, StartsAsBackbone, register_method


class Bottleneck(nn.Module):
    """down (D → d̂, kaiming-uniform) → ReLU → dropout → up (d̂ → D, zero), times `scale`."""

    def __init__(self, dim: int, bottleneck: int, scale: float, generator: torch.Generator, dropout: float = 0.0
                 ) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.dropout = nn.Dropout(dropout)
        self.scale = scale
        with torch.no_grad():
            # kaiming_uniform(a=√5) as nn.Linear's own default, drawn from the run's generator so runs repeat.
            bound = 1.0 / math.sqrt(dim)
            self.down.weight.uniform_(-bound, bound, generator=generator)
            self.down.bias.zero_()
            self.up.weight.zero_()
            self.up.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(self.dropout(torch.relu(self.down(x))))


class AdaptFormerViT(ViTFeatures):
    """timm's forward with one `Bottleneck` beside every block's MLP (added by forward hooks on `block.mlp`). It reads
    the MLP's input, `norm2(x')` (`adapter_input=normed`), or the residual x' that `norm2` reads (`residual`)."""

    def __init__(self, vit: nn.Module, pooling: Pooling, bottleneck: int, scale: float, generator: torch.Generator,
                 adapter_input: str = "normed", dropout: float = 0.0) -> None:
        super().__init__(vit, pooling)
        self.adapters = nn.ModuleList(Bottleneck(vit.embed_dim, bottleneck, scale, generator, dropout)
                                      for _ in vit.blocks)
        for block, adapter in zip(vit.blocks, self.adapters):
            if adapter_input == "normed":
                block.mlp.register_forward_hook(
                    lambda _mlp, inputs, output, adapter=adapter: output + adapter(inputs[0]))
            else:
                # norm2 runs right before the MLP in timm's block: the residual it reads is held for the MLP's hook.
                held: list[torch.Tensor] = []
                block.norm2.register_forward_hook(lambda _norm, inputs, _output, held=held: held.append(inputs[0]))
                block.mlp.register_forward_hook(
                    lambda _mlp, _inputs, output, adapter=adapter, held=held: output + adapter(held.pop()))


@dataclass(frozen=True)
class AdaptFormerConfig(TrainConfig):
    """AdaptFormer's hyper-parameters (see `TrainConfig` for the optimisation ones).

    Attributes:
        bottleneck: d̂, the adapter's middle width (the paper's default 64).
        scale: s, the factor on the adapter's output (the paper's default 0.1).
        adapter_input: `normed` (the MLP's input, LN(x'), as the paper writes it) or `residual` (x', as the reference
            code feeds it).
        dropout: dropout on the adapter's ReLU output (the reference code: 0.1).
    """

    bottleneck: int = 64
    scale: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 1e-4
    adapter_input: str = field(default="normed", metadata=ADDED_LATER)
    dropout: float = field(default=0.0, metadata=ADDED_LATER)

    def validate(self) -> None:
        super().validate()
        _check(self.bottleneck >= 1, "bottleneck", self.bottleneck, "an integer >= 1")
        _check(self.scale > 0, "scale", self.scale, "a positive float")
        _check(self.adapter_input in ("normed", "residual"), "adapter_input", self.adapter_input, "normed | residual")
        _check(0 <= self.dropout < 1, "dropout", self.dropout, "a float in [0, 1)")


SEARCH = {"lr": [1e-2, 3e-3, 1e-3], "bottleneck": [8, 64]}


@register_method("adaptformer", AdaptFormerConfig, "AdaptFormer: scaled bottleneck adapter in parallel with each "
                 "block's MLP (up-projection zero at init); adapter_input=residual dropout=0.1 as its code", SEARCH,
                 starts_as_backbone=StartsAsBackbone({}, "the up-projection starts at zero"))
def build_adaptformer(config: AdaptFormerConfig, ctx: BuildContext) -> Adapted:
    trunk = AdaptFormerViT(ctx.backbone.model, ctx.backbone.pooling, config.bottleneck, config.scale, ctx.generator,
                           config.adapter_input, config.dropout)
    return Adapted(trunk, linear_head(ctx.backbone, ctx.num_classes), trunk_frozen=False,
                   info={"adapted_blocks": len(trunk.adapters)})
