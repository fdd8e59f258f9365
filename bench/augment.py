"""Random-resized crop and horizontal flip for a whole batch at once, on whatever device holds the batch.

The file path (`bench.imagefiles`) runs torchvision's PIL `Compose([RandomResizedCrop, RandomHorizontalFlip])` on each
decoded image under its own seed. Here the same draws are made for the same seeds (torchvision's draws, op for op, on
a CPU generator seeded the same way, in the same order), in the *original* image's pixel coordinates, and every box is
then cut out of the decode cache's fixed-size copy of the image by one batched `grid_sample`: the box's edges map to
the same fractions of the image whatever size it was stored at, so the stored copy only changes how much detail
there is to sample, not where the crop lies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import transforms as T

# grid_sample's modes for the PIL interpolations the file path may use.
_MODES = {T.InterpolationMode.BICUBIC: "bicubic", T.InterpolationMode.BILINEAR: "bilinear"}


@dataclass(frozen=True)
class CropFlip:
    """A family's training augmentation, read off its PIL pipeline so that the two can never disagree.

    Attributes:
        size: output side (RandomResizedCrop's square size).
        scale, ratio: RandomResizedCrop's ranges, as the file path uses them.
        mode: grid_sample's interpolation, the file path's resampling filter.
        flip_p: RandomHorizontalFlip's probability.
    """

    size: int
    scale: tuple[float, float]
    ratio: tuple[float, float]
    mode: str
    flip_p: float

    @classmethod
    def of(cls, transform: Any) -> CropFlip | None:
        """The crop-and-flip of `Compose([RandomResizedCrop(square), RandomHorizontalFlip()])`; None for any other
        pipeline (it then stays on the file path, where PIL runs it as written)."""
        steps = transform.transforms if isinstance(transform, T.Compose) else []
        if len(steps) != 2 or type(steps[0]) is not T.RandomResizedCrop or type(steps[1]) is not T.RandomHorizontalFlip:
            return None
        crop, flip = steps
        if crop.size[0] != crop.size[1] or crop.interpolation not in _MODES:
            return None
        return cls(crop.size[0], tuple(crop.scale), tuple(crop.ratio), _MODES[crop.interpolation], flip.p)

    def describe(self, stored: int) -> list[str]:
        return [
            f"decode once: PIL Resize(({stored}, {stored}), bicubic, antialiased) of the whole image, kept as uint8",
            f"per image, seeded as the file path: RandomResizedCrop.get_params(original h×w, scale={self.scale}, "
            f"ratio={self.ratio}) then flip if torch.rand(1) < {self.flip_p}",
            f"on the device, whole batch: grid_sample(mode={self.mode}, align_corners=False, padding_mode=border) of "
            f"each box to {self.size}×{self.size}, flipped by mirroring the sampling grid, rounded to uint8",
        ]

    def draw(self, seeds: Sequence[int], sizes: np.ndarray) -> torch.Tensor:
        """(top, left, height, width, flip) per image, in original pixels, for images of `sizes` (N×2: h, w).

        For each seed this makes the draws of torchvision's `RandomResizedCrop.get_params` and then
        `RandomHorizontalFlip`, op for op, from a CPU generator seeded as the file path's worker seeds its global one
        (`torch.manual_seed(seed)`: the same Mersenne Twister stream), so boxes and flips are the file path's, and
        no caller's random stream moves. Written out rather than called because `get_params` reads only the global
        generator; tests/test_decode_cache.py pins it to torchvision's transform, fallback branch included.
        """
        generator = torch.Generator()
        one = torch.empty(1)
        low, high = torch.log(torch.tensor(self.ratio)).tolist()
        rows = []
        for seed, (height, width) in zip(seeds, sizes.tolist()):
            generator.manual_seed(seed)
            area = height * width
            for _ in range(10):
                target_area = area * one.uniform_(self.scale[0], self.scale[1], generator=generator).item()
                aspect = torch.exp(one.uniform_(low, high, generator=generator)).item()
                w = int(round(math.sqrt(target_area * aspect)))
                h = int(round(math.sqrt(target_area / aspect)))
                if 0 < w <= width and 0 < h <= height:
                    top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
                    left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
                    break
            else:
                top, left, h, w = self._central(height, width)
            flip = float(torch.rand(1, generator=generator) < self.flip_p)
            rows.append((top, left, h, w, flip))
        return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), 5)

    def _central(self, height: int, width: int) -> tuple[int, int, int, int]:
        """RandomResizedCrop's fallback when ten tries found no box: the central crop within the ratio range."""
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            w, h = int(round(height * max(self.ratio))), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def apply(self, images: torch.Tensor, boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        """Crop every image's box, resample it to size×size and flip it where drawn; uint8 in, uint8 out.

        Args:
            images: N×3×S×S uint8, the stored copies (any S).
            boxes: N×5 from `draw`, in the original images' pixels.
            sizes: N×2 original (h, w).
        """
        # Non-blocking: a blocking copy to a GPU would wait for every step already queued there.
        boxes = boxes.to(images.device, torch.float32, non_blocking=True)
        sizes = sizes.to(images.device, torch.float32, non_blocking=True)
        top, left, h, w, flip = boxes.unbind(1)
        height, width = sizes.unbind(1)
        # With align_corners=False, -1 and 1 are the image's outer pixel edges and an output pixel's centre sits at
        # (2k+1)/size - 1: so the box's edges [left, left+w] land at 2·left/width - 1 and 2·(left+w)/width - 1,
        # which is PIL's pixel-centre convention for a resize of that box.
        sx = w / width
        sy = h / height
        theta = torch.zeros(len(images), 2, 3, device=images.device)
        theta[:, 0, 0] = torch.where(flip > 0, -sx, sx)
        theta[:, 0, 2] = (2 * left + w) / width - 1
        theta[:, 1, 1] = sy
        theta[:, 1, 2] = (2 * top + h) / height - 1
        grid = F.affine_grid(theta, [len(images), 3, self.size, self.size], align_corners=False)
        out = F.grid_sample(images.float(), grid, mode=self.mode, padding_mode="border", align_corners=False)
        return out.round_().clamp_(0, 255).to(torch.uint8)
