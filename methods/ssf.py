"""SSF (Lian et al., "Scaling & Shifting Your Features: A New Baseline for Efficient Model Tuning", NeurIPS 2022,
Section 3.2): after every operation of the backbone — the patch embedding, every linear layer (qkv, proj, fc1, fc2)
and every LayerNorm — the features are scaled and shifted per channel, y = γ ⊙ x + β; only γ, β and the head learn.

The reference code draws γ ~ N(1, 0.02²) and β ~ N(0, 0.02²) (`init_ssf_scale_shift` in dongzelian/SSF); that is
the default here, and `init_std=0` starts exactly at the backbone (γ = 1, β = 0).

Hand-written because peft has no scale-and-shift method. It runs timm's own modules: a forward hook on each
operation applies its γ, β to the output's channel (last) dimension, so no ViT code is forked. The hooks stay on the
backbone it adapts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.backbone import Pooling, ViTFeatures
from bench.config import TrainConfig, _check
from bench.method import Adapted, BuildContext, linear_head, StartsAsBackbone, register_method


class ScaleShift(nn.Module):
    """y = scale ⊙ x + shift over the last dimension."""

    def __init__(self, dim: int, init_std: float, generator: torch.Generator) -> None:
        super().__init__()
        self.scale = nn.Parameter(1.0 + init_std * torch.randn(dim, generator=generator))
        self.shift = nn.Parameter(init_std * torch.randn(dim, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def ssf_targets(vit: nn.Module) -> dict[str, int]:
    """The operations SSF follows, by module name, with their output width."""
    targets = {"patch_embed": vit.embed_dim}
    for name, module in vit.named_modules():
        if isinstance(module, nn.Linear) and name.startswith("blocks."):
            targets[name] = module.out_features
        elif isinstance(module, nn.LayerNorm):
            targets[name] = module.normalized_shape[-1]
    return targets


class SSFViT(ViTFeatures):
    """timm's forward with a `ScaleShift` after every targeted operation (forward hooks on the backbone's modules)."""

    def __init__(self, vit: nn.Module, pooling: Pooling, init_std: float, generator: torch.Generator) -> None:
        super().__init__(vit, pooling)
        targets = ssf_targets(vit)
        # ModuleDict keys may not contain dots.
        self.ssf = nn.ModuleDict({name.replace(".", "/"): ScaleShift(dim, init_std, generator)
                                  for name, dim in targets.items()})
        modules = dict(vit.named_modules())
        for name in targets:
            ssf = self.ssf[name.replace(".", "/")]
            modules[name].register_forward_hook(lambda _module, _inputs, output, ssf=ssf: ssf(output))


@dataclass(frozen=True)
class SSFConfig(TrainConfig):
    """SSF's hyper-parameters (see `TrainConfig` for the optimisation ones). The defaults are the reference's most
    common VTAB-1k values (lr 5e-3, weight decay 5e-5, on 10 of 19 tasks). Its scripts (dongzelian/SSF,
    train_scripts/vit/{vtab,fgvc}/<task>/train_ssf.sh) set lr, weight decay and drop-path per task: lr 1e-3 to 5e-2
    on VTAB-1k and 2e-4 to 2e-2 on FGVC, weight decay 5e-5 or 5e-2, drop-path 0, 0.1 or 0.2; all train AdamW with
    32 images on each of 2 GPUs (64 a step), 100 epochs plus 10 of cool-down at min-lr 1e-8, 10 warm-up epochs from
    1e-7, fp16 AMP. The recipe `ssf-paper` (bench/recipes.py) holds the per-task values and lists what it departs from.

    Attributes:
        init_std: γ starts at 1 + init_std·N(0, 1), β at init_std·N(0, 1) (the reference: 0.02; 0 = identity).
    """

    init_std: float = 0.02
    lr: float = 5e-3
    weight_decay: float = 5e-5

    def validate(self) -> None:
        super().validate()
        _check(self.init_std >= 0, "init_std", self.init_std, "a float >= 0")


# The reference's commonest VTAB-1k values, and one step below (`ssf-paper` searches around each task's own lr).
SEARCH = {"lr": [5e-3, 2e-3, 1e-3], "weight_decay": [5e-5, 5e-2]}


@register_method("ssf", SSFConfig, "SSF: learned per-channel scale and shift after every operation of the backbone",
                 SEARCH, starts_as_backbone=StartsAsBackbone({"init_std": 0.0}, "γ starts at 1 and β at 0"))
def build_ssf(config: SSFConfig, ctx: BuildContext) -> Adapted:
    trunk = SSFViT(ctx.backbone.model, ctx.backbone.pooling, config.init_std, ctx.generator)
    return Adapted(trunk, linear_head(ctx.backbone, ctx.num_classes), trunk_frozen=False,
                   info={"scaled_operations": len(trunk.ssf)})
