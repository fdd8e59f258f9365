"""What the methods built on Hugging Face `peft` share: which timm ViT layers they may target, and one builder that
injects a `peft` config into the frozen backbone (peft's custom-model path, `inject_adapter_in_model`).

`peft` is imported inside the builder: importing it pulls in `transformers` (seconds), and every `bench` command
imports all methods to fill the registry, while only runs of these methods need it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import nn

from bench.backbone import ViTFeatures
from bench.config import TrainConfig, _check
from bench.method import Adapted, BuildContext, linear_head

# The linear layers of a timm ViT block, by the names a user writes, with their path inside the block. Targets are
# anchored to `blocks.N.` so that `proj` never also catches the patch embedding's `patch_embed.proj` convolution.
LINEAR_LAYERS = {"qkv": r"attn\.qkv", "proj": r"attn\.proj", "fc1": r"mlp\.fc1", "fc2": r"mlp\.fc2"}


@dataclass(frozen=True)
class LowRankConfig(TrainConfig):
    """Hyper-parameters of the low-rank updates (LoRA, DoRA, LoHa, LoKr; see `TrainConfig` for the optimisation ones).

    Attributes:
        rank: r of the low-rank factors.
        alpha: the update is scaled by alpha / rank.
        targets: comma list of block layers to adapt: qkv, proj, fc1, fc2.
    """

    rank: int = 8
    alpha: float = 8.0
    targets: str = "qkv"
    lr: float = 1e-3
    weight_decay: float = 1e-4

    def validate(self) -> None:
        super().validate()
        _check(self.rank >= 1, "rank", self.rank, "an integer >= 1")
        _check(self.alpha > 0, "alpha", self.alpha, "a positive float")
        check_targets(self.targets)


def parse_targets(targets: str) -> list[str]:
    return [t.strip() for t in targets.split(",") if t.strip()]


def check_targets(targets: str) -> None:
    names = parse_targets(targets)
    valid = " | ".join(LINEAR_LAYERS)
    _check(bool(names) and all(n in LINEAR_LAYERS for n in names), "targets", targets,
           f"a comma list of block layers from {valid}, e.g. qkv or qkv,fc1,fc2")


def block_layers_regex(names: list[str]) -> str:
    """A regex that peft matches in full against module names: the named linear layers of every block."""
    return rf"blocks\.\d+\.({'|'.join(LINEAR_LAYERS[n] for n in names)})"


def build_with_peft(config: Any, ctx: BuildContext, info: dict[str, Any]) -> Adapted:
    """Inject `config` (a peft config) into the backbone in place; only the injected parameters and the head learn.

    The backbone's own tensors stay where they were (peft keeps each wrapped layer as its `base_layer`), frozen.
    """
    import peft

    vit = ctx.backbone.model
    peft.inject_adapter_in_model(config, vit)
    adapted_layers = sorted(name for name, module in vit.named_modules()
                            if isinstance(module, peft.tuners.tuners_utils.BaseTunerLayer))
    trunk = ViTFeatures(vit, ctx.backbone.pooling)
    return Adapted(trunk, linear_head(ctx.backbone, ctx.num_classes), trunk_frozen=False,
                   info={**info, "peft_version": peft.__version__, "adapted_layers": len(adapted_layers)})


def layer_norms_regex(vit: nn.Module) -> str:
    """A regex that peft matches in full against module names: every LayerNorm of the backbone (the blocks'
    norm1/norm2, the final norm, fc_norm if any). A list of names would not do: peft also matches a name as a
    suffix, and `norm` would catch the blocks' `attn.norm` placeholders (Identity)."""
    return "|".join(re.escape(name) for name, module in vit.named_modules() if isinstance(module, nn.LayerNorm))
