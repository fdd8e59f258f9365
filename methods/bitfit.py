"""BitFit (Ben Zaken, Ravfogel and Goldberg, "BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based
Masked Language-models", ACL 2022): only the backbone's bias terms learn — those of every linear layer, of the
patch-embedding convolution and of every LayerNorm — with a fresh head.

Hand-written because it adds nothing: it marks existing tensors learnable (peft's BEFT adds new bias vectors to
linear layers instead, and leaves LayerNorm biases out).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.backbone import ViTFeatures
from bench.config import TrainConfig
from bench.method import Adapted, BuildContext, linear_head, StartsAsBackbone, register_method


@dataclass(frozen=True)
class BitFitConfig(TrainConfig):
    """No hyper-parameter of its own. Biases are 1-D, so the engine never decays them; the paper searches the
    learning rate in [1e-4, 1e-3] for BERT (Section 3), a ViT trained with AdamW from a fresh head wants more."""

    lr: float = 1e-3
    weight_decay: float = 1e-4


SEARCH = {"lr": [1e-2, 3e-3, 1e-3, 3e-4]}


@register_method("bitfit", BitFitConfig, "BitFit: only the backbone's bias terms and the head learn", SEARCH,
                 starts_as_backbone=StartsAsBackbone({}, "it adds nothing: the backbone's own biases learn"))
def build_bitfit(config: BitFitConfig, ctx: BuildContext) -> Adapted:
    vit = ctx.backbone.model
    biases = [p for name, p in vit.named_parameters() if name.endswith(".bias")]
    for bias in biases:
        bias.requires_grad_(True)
    trunk = ViTFeatures(vit, ctx.backbone.pooling)
    return Adapted(trunk, linear_head(ctx.backbone, ctx.num_classes), trunk_frozen=False,
                   info={"bias_tensors": len(biases)})
