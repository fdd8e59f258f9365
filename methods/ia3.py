"""(IA)³ (Liu et al., "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning",
NeurIPS 2022, Section 3.3), from Hugging Face `peft`: learned vectors rescale the attention's keys and values and
the MLP's intermediate activations; they start at one, so the model starts as the backbone.

On a timm ViT, keys and values come out of the fused `qkv` layer, so the vector rescales its whole output (queries
too: 3·D values per block, not the paper's 2·D); the MLP's intermediate activations are the input of `fc2`.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.config import TrainConfig
from bench.method import Adapted, BuildContext, StartsAsBackbone, register_method
from bench.methods._peft import block_layers_regex, build_with_peft


@dataclass(frozen=True)
class IA3Config(TrainConfig):
    """(IA)³ has no hyper-parameter of its own; the paper trains its vectors with a large learning rate (3e-3,
    Adafactor, Section 3.3), taken here with AdamW."""

    lr: float = 3e-3
    weight_decay: float = 0.0


SEARCH = {"lr": [1e-2, 3e-3, 1e-3]}


@register_method("ia3", IA3Config, "(IA)³ via peft: learned rescaling of qkv outputs and MLP hidden activations",
                 SEARCH, starts_as_backbone=StartsAsBackbone({}, "the rescaling vectors start at one"))
def build_ia3(config: IA3Config, ctx: BuildContext) -> Adapted:
    from peft import IA3Config as PeftIA3

    peft_config = PeftIA3(target_modules=block_layers_regex(["qkv", "fc2"]),
                          feedforward_modules=block_layers_regex(["fc2"]))
    return build_with_peft(peft_config, ctx, {"targets": ["qkv", "fc2 (input)"]})
