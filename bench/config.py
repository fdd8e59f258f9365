"""Hyper-parameters and run specs.

Every method's config is a dataclass that extends `TrainConfig`; a run is fully described by a `RunSpec`, whose
stable id (a hash of its canonical JSON) names its record in the store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bench import BenchError

C = TypeVar("C", bound="TrainConfig")

# Field metadata of an option added to a method after runs of it were recorded: at its default the option stays out
# of the resolved hyper-parameters (`TrainConfig.to_dict`), so those runs keep their ids; a config built from such a
# spec takes the default back.
ADDED_LATER = {"omitted_at_default": True}


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings every method shares. Methods override the defaults that suit them.

    Attributes:
        epochs: training epochs; 0 means the task's default.
        batch_size: images per step.
        optimizer: `adamw` or `sgd` (momentum 0.9).
        lr: peak learning rate, reached after a linear warm-up from 0, then cosine-decayed to `min_lr` (the SPT
            reference's schedule, `utils.adjust_learning_rate`, stepped per batch).
        min_lr: the learning rate the cosine ends at.
        weight_decay: applied to the method's weights (2-D and larger: prompts, projections), never to biases or
            norm parameters.
        head_weight_decay: weight decay of the classifier head's weight; None means `weight_decay` (the SPT
            reference decays the head separately, `--wd_head`).
        warmup_epochs: linear warm-up length in epochs (fractions allowed).
        lr_step: `batch` updates the learning rate every step (the SPT reference), `epoch` once per epoch (VPT's
            trainer calls its scheduler once per epoch, so the first epoch of its warm-up trains at lr 0).
        drop_path: stochastic depth rate of the backbone's blocks during training.
        warmup_lr: the learning rate the warm-up starts from (timm's `--warmup-lr`: SSF 1e-7, NOAH 1e-6).
        warmup_prefix: the cosine starts after the warm-up; false: it counts from the first epoch, the warm-up
            inside it (timm's `CosineLRScheduler(warmup_prefix=False)`, which SSF and NOAH train with).
        cooldown_epochs: epochs trained at `min_lr` after `epochs` (timm's `--cooldown-epochs`: SSF trains 10).
    """

    epochs: int = 0
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 1e-3
    min_lr: float = 0.0
    weight_decay: float = 1e-4
    head_weight_decay: float | None = None
    warmup_epochs: float = 1.0
    lr_step: str = "batch"
    drop_path: float = 0.0
    warmup_lr: float = field(default=0.0, metadata=ADDED_LATER)
    warmup_prefix: bool = field(default=True, metadata=ADDED_LATER)
    cooldown_epochs: int = field(default=0, metadata=ADDED_LATER)

    def validate(self) -> None:
        _check(self.epochs >= 0, "epochs", self.epochs, "an integer >= 0 (0 = the task's default)")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        _check(self.optimizer in ("adamw", "sgd"), "optimizer", self.optimizer, "adamw or sgd")
        _check(self.lr > 0, "lr", self.lr, "a positive float")
        _check(0 <= self.min_lr <= self.lr, "min_lr", self.min_lr, f"a float in [0, lr={self.lr}]")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a float >= 0")
        _check(self.head_weight_decay is None or self.head_weight_decay >= 0, "head_weight_decay",
               self.head_weight_decay, "a float >= 0, or none to use weight_decay")
        _check(self.warmup_epochs >= 0, "warmup_epochs", self.warmup_epochs, "a float >= 0")
        _check(self.lr_step in ("batch", "epoch"), "lr_step", self.lr_step, "batch or epoch")
        _check(0 <= self.drop_path < 1, "drop_path", self.drop_path, "a float in [0, 1)")
        _check(0 <= self.warmup_lr <= self.lr, "warmup_lr", self.warmup_lr, f"a float in [0, lr={self.lr}]")
        _check(self.cooldown_epochs >= 0, "cooldown_epochs", self.cooldown_epochs, "an integer >= 0")

    @classmethod
    def from_overrides(cls: type[C], overrides: dict[str, Any]) -> C:
        """Build a validated config from `key -> value` overrides; string values are parsed to the field's type."""
        hints = typing.get_type_hints(cls)
        unknown = sorted(set(overrides) - set(hints))
        if unknown:
            raise BenchError(
                f"unknown hyper-parameter {unknown[0]!r} for this method; valid: {', '.join(sorted(hints))}"
            )
        values = {key: _parse(key, value, hints[key]) for key, value in overrides.items()}
        config = cls(**values)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        """Every value, except an `ADDED_LATER` option at its default."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if not (f.metadata.get("omitted_at_default") and getattr(self, f.name) == f.default)}


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise BenchError(f"bad value {key}={value!r}; expected {expected}")


def _parse(key: str, value: Any, kind: Any) -> Any:
    if not isinstance(value, str):
        return value
    optional = typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in typing.get_args(kind)
    if optional:
        if value.lower() == "none":
            return None
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    try:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return value.lower() in ("true", "1", "yes")
        return kind(value)
    except ValueError:
        raise BenchError(f"bad value {key}={value!r}; expected {kind.__name__}") from None


@dataclass(frozen=True)
class RunSpec:
    """One run: a method with resolved hyper-parameters, on a task, with a backbone and seed."""

    method: str
    task: str
    backbone: str
    seed: int
    hparams: dict[str, Any]
    weights: str | None = None
    stage: str = "fixed"  # fixed | tune (train -> val) | final (train+val -> test)
    recipe: str | None = None  # the named recipe `hparams` were resolved from (bench.recipes), if any
    # The pipeline values that differ from the harness's defaults (`bench.protocol.Protocol.changes`). Written only
    # when there are some: a run on the harness's own pipeline keeps the id it had before protocols existed.
    protocol: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if not self.protocol:
            del out["protocol"]
        return out

    @property
    def run_id(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        stage = "" if self.stage == "fixed" else f" · {self.stage}"
        return f"{self.method} · {self.task} · {self.backbone} · seed {self.seed}{stage}"
