"""LoHa and LoKr, the LyCORIS family's Hadamard- and Kronecker-product updates, from Hugging Face `peft`.

LoHa (Hyeon-Woo et al., "FedPara: Low-rank Hadamard Product for Communication-Efficient Federated Learning",
ICLR 2022): ΔW = (A1·B1) ⊙ (A2·B2), two rank-r pairs, so the update can reach rank r².
LoKr (Yeh et al., "Navigating Text-To-Image Customization: From LyCORIS Fine-Tuning to Model Evaluation",
ICLR 2024): ΔW = W1 ⊗ (A2·B2), a small full factor W1 Kronecker a rank-r factor; the factor sizes come from
peft's factorisation of each layer's shape (qkv of ViT-B: 2304×768 = (48·48)×(24·32), so W1 is 48×24 and A2·B2
is 48×r · r×32).
peft initialises one factor of each product at zero, so both start as the backbone. Default target: `qkv`.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.method import Adapted, BuildContext, StartsAsBackbone, register_method
from bench.methods._peft import LowRankConfig, block_layers_regex, build_with_peft, parse_targets


@dataclass(frozen=True)
class LycorisConfig(LowRankConfig):
    """Hyper-parameters shared by LoHa and LoKr (see `LowRankConfig`; peft's default alpha = rank = 8)."""


@dataclass(frozen=True)
class LoHaConfig(LycorisConfig):
    """LoHa: two rank-r pairs per layer."""


@dataclass(frozen=True)
class LoKrConfig(LycorisConfig):
    """LoKr: a Kronecker product of a small full factor and a rank-r factor."""


SEARCH = {"lr": [1e-2, 3e-3, 1e-3], "rank": [4, 8]}
ZERO_FACTOR = StartsAsBackbone({}, "peft starts one factor of each product at zero")


@register_method("loha", LoHaConfig, "LoHa via peft: Hadamard product of two low-rank updates beside qkv", SEARCH,
                 starts_as_backbone=ZERO_FACTOR)
def build_loha(config: LoHaConfig, ctx: BuildContext) -> Adapted:
    from peft import LoHaConfig as PeftLoHa

    names = parse_targets(config.targets)
    peft_config = PeftLoHa(r=config.rank, alpha=config.alpha, target_modules=block_layers_regex(names))
    return build_with_peft(peft_config, ctx, {"targets": names})


@register_method("lokr", LoKrConfig, "LoKr via peft: Kronecker product of a small factor and a low-rank one beside "
                 "qkv", SEARCH, starts_as_backbone=ZERO_FACTOR)
def build_lokr(config: LoKrConfig, ctx: BuildContext) -> Adapted:
    from peft import LoKrConfig as PeftLoKr

    names = parse_targets(config.targets)
    peft_config = PeftLoKr(r=config.rank, alpha=config.alpha, target_modules=block_layers_regex(names))
    return build_with_peft(peft_config, ctx, {"targets": names})
