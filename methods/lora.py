"""LoRA (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022) and DoRA (Liu et al.,
"DoRA: Weight-Decomposed Low-Rank Adaptation", ICML 2024), both from Hugging Face `peft`.

LoRA adds B·A (rank r, scaled by alpha/r) beside each targeted frozen weight W; B starts at zero, so the adapted
model starts as the backbone. DoRA splits W + B·A into a learnable per-output-channel magnitude (initialised to the
norms of W) and a direction, so it also starts as the backbone, up to rounding. Default target: the fused `qkv`
projection of every block (timm fuses q, k and v; the LoRA paper adapts W_q and W_v, Section 7.1, which a fused
layer cannot single out); `targets=qkv,fc1,fc2` adds the MLP.

`init=noah` starts LoRA as NOAH's baseline does (ZhangYuanhan-AI/NOAH, the LoRA row VTAB tables copy): its
`model/supernet_vision_transformer_timm.py:225-228` draws A with `kaiming_uniform_(a=√5)` on an `nn.Linear(768, 8)`,
whose weight is (8, 768), fan-in 768: peft's draw, bound 1/√768 ≈ 0.036 (not 1/√8 ≈ 0.35). But the model's
`init_weights` (L462 → L531 `self.apply(_init_vit_weights)`, L686) then redraws every non-head `nn.Linear`, A and
B alike, from `trunc_normal_(std=.02)`: NOAH's LoRA trains from A, B ~ N(0, 0.02²), so B·A ≠ 0 at the start.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from bench.config import ADDED_LATER, _check
from bench.method import Adapted, BuildContext, StartsAsBackbone, register_method
from bench.methods._peft import LowRankConfig, block_layers_regex, build_with_peft, parse_targets


@dataclass(frozen=True)
class LoRAConfig(LowRankConfig):
    """LoRA's hyper-parameters (see `LowRankConfig`); alpha = rank = 8, since the paper sets alpha to the first r it
    tries and does not tune it (Section 4.1).

    Attributes:
        dropout: dropout on the input of A.
        init: `peft` (A kaiming-uniform, B = 0) or `noah` (A and B truncated normal, std 0.02, as NOAH's baseline
            trains them; see the module docstring).
    """

    dropout: float = 0.0
    init: str = field(default="peft", metadata=ADDED_LATER)

    def validate(self) -> None:
        super().validate()
        _check(0 <= self.dropout < 1, "dropout", self.dropout, "a float in [0, 1)")
        _check(self.init in INITS, "init", self.init, " | ".join(INITS))


INITS = ("peft", "noah")


@dataclass(frozen=True)
class DoRAConfig(LoRAConfig):
    """DoRA's hyper-parameters: LoRA's; the magnitude vector is the only addition. Its init is peft's: the
    magnitude starts at the norms of W, which a non-zero B·A would no longer match."""

    def validate(self) -> None:
        super().validate()
        _check(self.init == "peft", "init", self.init, "peft (noah is NOAH's LoRA init)")


# Rank and learning rate are what LoRA users tune; alpha stays at the first rank's value (the paper's practice).
# The fresh head learns at the same rate, hence 1e-2 in the grid: on micro-mae/digits, 4 epochs, LoRA reached
# 27.0% test at lr 1e-3 and 69.6% at 1e-2 (the linear probe: 52.0% at its default 1e-2).
SEARCH = {"lr": [1e-2, 3e-3, 1e-3], "rank": [8, 16]}


def _build(config: LoRAConfig, ctx: BuildContext, dora: bool) -> Adapted:
    from peft import LoraConfig

    names = parse_targets(config.targets)
    peft_config = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                             target_modules=block_layers_regex(names), use_dora=dora)
    adapted = build_with_peft(peft_config, ctx, {"targets": names})
    if config.init == "noah":
        noah_init(ctx.backbone.model)
    return adapted


def noah_init(vit: nn.Module) -> None:
    """Redraw every LoRA factor as NOAH's `_init_vit_weights` leaves it: truncated normal, std 0.02 (cut at ±2,
    timm's `trunc_normal_`), from torch's global RNG as NOAH (and peft) draw."""
    from peft.tuners.lora import LoraLayer

    with torch.no_grad():
        for layer in (m for m in vit.modules() if isinstance(m, LoraLayer)):
            for factor in (*layer.lora_A.values(), *layer.lora_B.values()):
                nn.init.trunc_normal_(factor.weight, std=0.02)


@register_method("lora", LoRAConfig, "LoRA via peft: low-rank B·A beside qkv (B = 0 at init); targets=qkv,fc1,fc2 "
                 "adds the MLP; init=noah starts as NOAH's baseline", SEARCH,
                 starts_as_backbone=StartsAsBackbone({}, "B starts at zero"))
def build_lora(config: LoRAConfig, ctx: BuildContext) -> Adapted:
    return _build(config, ctx, dora=False)


@register_method("dora", DoRAConfig, "DoRA via peft: LoRA's direction update plus a learnable magnitude per output "
                 "channel", SEARCH, starts_as_backbone=StartsAsBackbone(
                     {}, "B starts at zero and the magnitude at the norms of W (equal up to rounding)"))
def build_dora(config: DoRAConfig, ctx: BuildContext) -> Adapted:
    return _build(config, ctx, dora=True)
