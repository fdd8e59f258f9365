"""LoRA (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022) and DoRA (Liu et al.,
"DoRA: Weight-Decomposed Low-Rank Adaptation", ICML 2024), both from Hugging Face `peft`.

LoRA adds B·A (rank r, scaled by alpha/r) beside each targeted frozen weight W; B starts at zero, so the adapted
model starts as the backbone. DoRA splits W + B·A into a learnable per-output-channel magnitude (initialised to the
norms of W) and a direction, so it also starts as the backbone, up to rounding. Default target: the fused `qkv`
projection of every block (timm fuses q, k and v; the LoRA paper adapts W_q and W_v, Section 7.1, which a fused
layer cannot single out); `targets=qkv,fc1,fc2` adds the MLP.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.config import _check
from bench.method import Adapted, BuildContext, StartsAsBackbone, register_method
from bench.methods._peft import LowRankConfig, block_layers_regex, build_with_peft, parse_targets


@dataclass(frozen=True)
class LoRAConfig(LowRankConfig):
    """LoRA's hyper-parameters (see `LowRankConfig`); alpha = rank = 8, since the paper sets alpha to the first r it
    tries and does not tune it (Section 4.1).

    Attributes:
        dropout: dropout on the input of A.
    """

    dropout: float = 0.0

    def validate(self) -> None:
        super().validate()
        _check(0 <= self.dropout < 1, "dropout", self.dropout, "a float in [0, 1)")


@dataclass(frozen=True)
class DoRAConfig(LoRAConfig):
    """DoRA's hyper-parameters: LoRA's; the magnitude vector is the only addition."""


# Rank and learning rate are what LoRA users tune; alpha stays at the first rank's value (the paper's practice).
# The fresh head learns at the same rate, hence 1e-2 in the grid: on micro-mae/digits, 4 epochs, LoRA reached
# 27.0% test at lr 1e-3 and 69.6% at 1e-2 (the linear probe: 52.0% at its default 1e-2).
SEARCH = {"lr": [1e-2, 3e-3, 1e-3], "rank": [8, 16]}


def _build(config: LoRAConfig, ctx: BuildContext, dora: bool) -> Adapted:
    from peft import LoraConfig

    names = parse_targets(config.targets)
    peft_config = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                             target_modules=block_layers_regex(names), use_dora=dora)
    return build_with_peft(peft_config, ctx, {"targets": names})


@register_method("lora", LoRAConfig, "LoRA via peft: low-rank B·A beside qkv (B = 0 at init); targets=qkv,fc1,fc2 "
                 "adds the MLP", SEARCH, starts_as_backbone=StartsAsBackbone({}, "B starts at zero"))
def build_lora(config: LoRAConfig, ctx: BuildContext) -> Adapted:
    return _build(config, ctx, dora=False)


@register_method("dora", DoRAConfig, "DoRA via peft: LoRA's direction update plus a learnable magnitude per output "
                 "channel", SEARCH, starts_as_backbone=StartsAsBackbone(
                     {}, "B starts at zero and the magnitude at the norms of W (equal up to rounding)"))
def build_dora(config: DoRAConfig, ctx: BuildContext) -> Adapted:
    return _build(config, ctx, dora=True)
