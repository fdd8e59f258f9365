"""LayerNorm tuning (Qi et al., "Parameter-Efficient Tuning on Layer Normalization for Pre-trained Language
Models", 2022), from Hugging Face `peft`: only the scale and bias of every LayerNorm of the backbone learn (each
block's norm1 and norm2 and the final norm). peft trains a copy of each LayerNorm and keeps the original frozen, so
the model starts as the backbone and the backbone's tensors never change.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from bench.config import TrainConfig
from bench.method import Adapted, BuildContext, StartsAsBackbone, register_method
from bench.methods._peft import build_with_peft, layer_norms_regex


@dataclass(frozen=True)
class LNTuningConfig(TrainConfig):
    """No hyper-parameter of its own; norm parameters are 1-D, so the engine never decays them."""

    lr: float = 1e-3
    weight_decay: float = 0.0


SEARCH = {"lr": [1e-2, 3e-3, 1e-3, 3e-4]}


@register_method("ln-tuning", LNTuningConfig, "LayerNorm tuning via peft: only LayerNorm scales and biases learn",
                 SEARCH, starts_as_backbone=StartsAsBackbone({}, "its LayerNorms start as copies of the backbone's"))
def build_ln_tuning(config: LNTuningConfig, ctx: BuildContext) -> Adapted:
    from peft import LNTuningConfig as PeftLNTuning

    peft_config = PeftLNTuning(target_modules=layer_norms_regex(ctx.backbone.model))
    with warnings.catch_warnings():
        # peft knows torch's LayerNorm class, not timm's subclass of it; LN tuning only copies the module, so it fits.
        warnings.filterwarnings("ignore", "Unsupported layer type", UserWarning)
        return build_with_peft(peft_config, ctx, {"targets": "every LayerNorm"})
