"""The grid: expand methods × tasks × hyper-parameter sweeps × seeds into run specs, skip finished ones, run the rest.

A run that fails is recorded as failed with its reason and the grid goes on.
"""

from __future__ import annotations

import itertools
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from bench import BenchError
from bench.config import RunSpec
from bench.engine import resolve_hparams, run
from bench.method import METHODS
from bench.store import Store


def parse_sets(items: list[str]) -> dict[str, list[str]]:
    """`["lr=0.1,0.01", "num_prompts=5"]` -> `{"lr": ["0.1", "0.01"], "num_prompts": ["5"]}` (a comma list sweeps)."""
    sweeps: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise BenchError(f"bad --set {item!r}; expected key=value or key=v1,v2 (e.g. --set lr=0.1,0.01)")
        sweeps[key.strip()] = [v.strip() for v in values.split(",") if v.strip()]
    return sweeps


def expand_grid(
    methods: list[str],
    tasks: list[str],
    backbone: str,
    seeds: list[int],
    sweeps: dict[str, list[str]],
    weights: str | None = None,
) -> list[RunSpec]:
    """Every (method, task, sweep point, seed), each hyper-parameter applied to the methods that have it."""
    fields = {m: set(METHODS.get(m).config_cls.__dataclass_fields__) for m in methods}
    for key in sweeps:
        if not any(key in f for f in fields.values()):
            valid = sorted(set().union(*fields.values()))
            raise BenchError(f"no selected method has hyper-parameter {key!r}; valid: {', '.join(valid)}")
    specs: list[RunSpec] = []
    for method in methods:
        own = {k: v for k, v in sweeps.items() if k in fields[method]}
        for point in itertools.product(*own.values()):
            overrides = dict(zip(own, point))
            for task in tasks:
                hparams = resolve_hparams(method, task, overrides)
                specs.extend(RunSpec(method, task, backbone, seed, hparams, weights) for seed in seeds)
    return list({spec.run_id: spec for spec in specs}.values())


@dataclass
class GridResult:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[RunSpec, str]] = field(default_factory=list)


class Progress:
    """What a grid reports while it runs; the CLI renders it (rich live display or plain lines)."""

    def grid_started(self, total: int, skipped: int) -> None: ...

    def run_started(self, spec: RunSpec) -> None: ...

    def epoch(self, spec: RunSpec, epoch: int, epochs: int, loss: float, val_acc: float) -> None: ...

    def run_finished(self, spec: RunSpec, record: dict[str, Any]) -> None: ...


def run_grid(specs: list[RunSpec], store: Store, device: str = "cpu", progress: Progress | None = None) -> GridResult:
    progress = progress or Progress()
    result = GridResult()
    finished = {spec.run_id for spec in specs if store.is_done(spec.run_id)}
    pending = [spec for spec in specs if spec.run_id not in finished]
    result.skipped = sorted(finished)
    progress.grid_started(len(specs), len(result.skipped))
    for spec in pending:
        progress.run_started(spec)
        on_epoch: Callable[[int, int, float, float], None] = (
            lambda e, n, loss, acc, spec=spec: progress.epoch(spec, e, n, loss, acc)
        )
        try:
            record = run(spec, device=device, on_epoch=on_epoch)
        except BenchError:
            raise
        except Exception as exc:  # any failure of one run is recorded; the grid goes on
            reason = f"{type(exc).__name__}: {exc}"
            record = {
                "id": spec.run_id,
                "spec": spec.to_dict(),
                "status": "failed",
                "error": reason,
                "traceback": traceback.format_exc(limit=-8),
            }
            result.failed.append((spec, reason))
        else:
            result.done.append(spec.run_id)
        store.write(record)
        progress.run_finished(spec, record)
    return result
