"""The pipeline around a method: what a recipe fixes besides the method's hyper-parameters.

A `Protocol` holds the data pipeline and training details that make a paper's number and that no method config
carries: input normalisation, the image pipelines, the head's init, whether the last partial batch trains, the
arithmetic precision, how SPT collects its prompt images, the norm a mean-pooled backbone pools through, and what the
final stage trains on. Its defaults are the harness's own pipeline (the micro
suite's); a run spec stores only the values that differ from them (`RunSpec.protocol`), so a run without a recipe
keeps the id it always had, and a record stores every value (`RunRecord.protocol`).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from bench import BenchError
from bench.imagefiles import ImageTransforms
from bench.registry import Registry

# Named image pipelines a recipe may put in place of a task family's own (`Protocol.transforms`); each family's file
# registers the ones its references use, beside its own pipeline.
PIPELINES: Registry[ImageTransforms] = Registry("image pipeline")

NORMALISATIONS = {"weights": None, "imagenet": (tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD))}
HEAD_INITS = ("trunc-normal-0.02", "trunc-normal-0.01", "kaiming-fan-out", "bn-trunc-normal-0.01")
PRECISIONS = ("auto", "fp32")


@dataclass(frozen=True)
class Protocol:
    """Pipeline values; the defaults are the harness's own.

    Attributes:
        normalisation: `weights` (the mean/std the backbone's weights were trained with) or `imagenet` (ImageNet's,
            whatever the backbone: the SPT and VPT references' `Normalize`).
        transforms: `task` (the task family's own pipelines) or a name in `PIPELINES`.
        head_init: `trunc-normal-0.02` (zero bias; SPT's `train_MAE.py`/`train.py`), `trunc-normal-0.01` (SPT's
            `train_MoCo.py`) or `kaiming-fan-out` (VPT's `src/models/mlp.py`: Kaiming-normal, fan-out, every bias
            -log(99)) or `bn-trunc-normal-0.01` (AdaptFormer's `main_image.py:227-231`: std 0.01, behind a
            `BatchNorm1d(affine=False, eps=1e-6)` that standardises the pooled features).
        drop_last: drop the last partial training batch, and count an epoch's steps without it.
        precision: `auto` (bf16 autocast on CUDA, fp32 on the CPU) or `fp32` everywhere.
        prompt_images: the pipeline SPT's prompt images go through: `eval`, or `train` (the training augmentation,
            seeded per image from the run's generator: SPT draws them from its training dataset object).
        shallow_init: `as_named` (shallow SPT pools or clusters as `init` says) or `sampled` (shallow SPT samples
            tokens whatever `init` says, as the reference's shallow branch does).
        pool_norm: on a mean-pooled backbone (MAE), the LayerNorm the pooled mean goes through: `checkpoint` (the
            checkpoint's final `norm`, as SPT's MAE models do) or `fresh` (a new, frozen LayerNorm with weight 1 and
            bias 0 in its place: VPT's `fc_norm`, src/models/vit_backbones/vit_mae.py:21-25). Class-token backbones
            always use `norm`, so `fresh` is refused there.
        final_train: what the `tune` protocol's final stage trains on: `train+val` (the field's VTAB protocol) or
            `train` (VPT's FGVC final runs, train.py:66-71).
    """

    normalisation: str = "weights"
    transforms: str = "task"
    head_init: str = "trunc-normal-0.02"
    drop_last: bool = False
    precision: str = "auto"
    prompt_images: str = "eval"
    shallow_init: str = "as_named"
    pool_norm: str = "checkpoint"
    final_train: str = "train+val"

    def validate(self) -> None:
        _check(self.normalisation in NORMALISATIONS, "normalisation", self.normalisation, " | ".join(NORMALISATIONS))
        pipelines = ["task", *PIPELINES.names()]
        _check(self.transforms in pipelines, "transforms", self.transforms, " | ".join(pipelines))
        _check(self.head_init in HEAD_INITS, "head_init", self.head_init, " | ".join(HEAD_INITS))
        _check(self.precision in PRECISIONS, "precision", self.precision, " | ".join(PRECISIONS))
        _check(self.prompt_images in ("eval", "train"), "prompt_images", self.prompt_images, "eval | train")
        _check(self.shallow_init in ("as_named", "sampled"), "shallow_init", self.shallow_init, "as_named | sampled")
        _check(self.pool_norm in ("checkpoint", "fresh"), "pool_norm", self.pool_norm, "checkpoint | fresh")
        _check(self.final_train in ("train+val", "train"), "final_train", self.final_train, "train+val | train")

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> Protocol:
        """A validated protocol from `key -> value` (strings parsed: `--set drop_last=false`)."""
        parsed = {key: _parse(key, value) for key, value in values.items()}
        protocol = cls(**parsed)
        protocol.validate()
        return protocol

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def changes(self) -> dict[str, Any]:
        """The values that differ from the harness's defaults: what a run spec stores."""
        default = Protocol()
        return {k: v for k, v in self.to_dict().items() if getattr(default, k) != v}

    def mean_std(self, weights_mean: tuple[float, ...], weights_std: tuple[float, ...]
                 ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        fixed = NORMALISATIONS[self.normalisation]
        return fixed if fixed is not None else (weights_mean, weights_std)


FIELDS = frozenset(f.name for f in dataclasses.fields(Protocol))


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise BenchError(f"bad value {key}={value!r}; expected {expected}")


def _parse(key: str, value: Any) -> Any:
    if key not in FIELDS:
        raise BenchError(f"unknown protocol value {key!r}; valid: {', '.join(sorted(FIELDS))}")
    if not isinstance(value, str) or typing.get_type_hints(Protocol)[key] is not bool:
        return value
    if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise BenchError(f"bad value {key}={value!r}; expected true or false")
    return value.lower() in ("true", "1", "yes")


def init_head(head: nn.Module, name: str) -> nn.Module:
    """Draw the weights of every linear layer of `head` as `name` says, from torch's global RNG (seeded per run); the
    head to train: `head`, or for `bn-` a BatchNorm without affine parameters before it."""
    for layer in (m for m in head.modules() if isinstance(m, nn.Linear)):
        if name == "kaiming-fan-out":
            nn.init.kaiming_normal_(layer.weight, a=0, mode="fan_out")
            # VPT's `special_bias`: every class starts at prior 0.01. A constant shift of all logits: the softmax
            # ignores it, but it is the reference's tensor.
            nn.init.constant_(layer.bias, -math.log((1 - 0.01) / 0.01))
        else:
            nn.init.trunc_normal_(layer.weight, std=float(name.rsplit("-", 1)[1]))
            nn.init.zeros_(layer.bias)
    if name.startswith("bn-"):
        features = next(m for m in head.modules() if isinstance(m, nn.Linear)).in_features
        return nn.Sequential(nn.BatchNorm1d(features, affine=False, eps=1e-6), head)
    return head
