"""Pixel baseline ("no backbone"): a linear classifier on the images as the backbone would receive them.

The images are resized and normalised exactly as for the backbone (its resolution, mean and std), then, when that
resolution is larger than `size`, downsized to `size`×`size` so that the baseline stays a few thousand features
whatever the backbone (a 224-pixel input would give 150,528 per image). The backbone itself is never run: this row
says what a method on top of a backbone must beat to show the backbone is worth anything.

The trunk learns nothing, so the engine caches its "features" (the flattened pixels) and trains only the head, as
for the linear probe.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.config import _check
from bench.method import Adapted, BuildContext, StartsAsBackbone, register_method
from bench.methods.linear import SEARCH, LinearConfig, probe_head


@dataclass(frozen=True)
class PixelsConfig(LinearConfig):
    """The linear probe's optimisation and feature standardisation; `size`: the largest side, in pixels, the
    classifier sees."""

    size: int = 32

    def validate(self) -> None:
        super().validate()
        _check(self.size >= 1, "size", self.size, "an integer >= 1 (pixels per side)")


class FlatPixels(nn.Module):
    """Preprocessed images -> their pixels as one vector each, downsized (antialiased) to at most `size` per side."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if max(images.shape[-2:]) > self.size:
            images = F.interpolate(images, size=(self.size, self.size), mode="bilinear", antialias=True)
        return images.flatten(start_dim=1)


# The linear probe's sweep: the two differ only in what the head reads.
@register_method("pixels", PixelsConfig, "Sanity baseline: a linear classifier on the resized, normalised pixels "
                 "(no backbone)", SEARCH, starts_as_backbone=StartsAsBackbone(
                     None, "it has no backbone: the trunk is the resized pixels"))
def build_pixels(config: PixelsConfig, ctx: BuildContext) -> Adapted:
    side = min(config.size, ctx.backbone.input_size)
    features = 3 * side * side
    trunk = FlatPixels(config.size)
    return Adapted(trunk, probe_head(features, ctx.num_classes, config.feature_norm), trunk_frozen=True,
                   info={"pixels_per_side": side, "features": features})
