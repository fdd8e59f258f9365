"""Hyper-parameters and run specs.

Every method's config is a dataclass that extends `TrainConfig`; a run is fully described by a `RunSpec`, whose
stable id (a hash of its canonical JSON) names its record in the store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

from bench import BenchError

C = TypeVar("C", bound="TrainConfig")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings every method shares. Methods override the defaults that suit them.

    Attributes:
        epochs: training epochs; 0 means the task's default.
        batch_size: images per step.
        optimizer: `adamw` or `sgd` (momentum 0.9).
        lr: peak learning rate, reached after the warm-up, then cosine-decayed to 0.
        weight_decay: applied to weights only, never to biases or norm parameters.
        warmup_epochs: linear warm-up length in epochs (fractions allowed).
    """

    epochs: int = 0
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0

    def validate(self) -> None:
        _check(self.epochs >= 0, "epochs", self.epochs, "an integer >= 0 (0 = the task's default)")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        _check(self.optimizer in ("adamw", "sgd"), "optimizer", self.optimizer, "adamw or sgd")
        _check(self.lr > 0, "lr", self.lr, "a positive float")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a float >= 0")
        _check(self.warmup_epochs >= 0, "warmup_epochs", self.warmup_epochs, "a float >= 0")

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
        return dataclasses.asdict(self)


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise BenchError(f"bad value {key}={value!r}; expected {expected}")


def _parse(key: str, value: Any, kind: type) -> Any:
    if not isinstance(value, str):
        return value
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def run_id(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        stage = "" if self.stage == "fixed" else f" · {self.stage}"
        return f"{self.method} · {self.task} · {self.backbone} · seed {self.seed}{stage}"
