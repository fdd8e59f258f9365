"""`bench report --compare A,B`: the paired difference of two methods' test accuracy, with a bootstrap interval."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench import BenchError
from bench.record import COLUMNS


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    pairs: int
    mean: float
    low: float
    high: float
    confidence: float


def _select(runs: pd.DataFrame, name: str) -> pd.DataFrame:
    chosen = runs[runs["variant"] == name]
    if chosen.empty:
        chosen = runs[runs[COLUMNS.method] == name]
    variants = sorted(chosen["variant"].unique())
    if chosen.empty:
        raise BenchError(f"--compare: no finished runs of {name!r}; recorded: {', '.join(sorted(runs['variant'].unique()))}")
    if len(variants) > 1:
        raise BenchError(f"--compare: {name!r} has several variants ({'; '.join(variants)}); name one of them")
    return chosen


def compare(runs: pd.DataFrame, a: str, b: str, resamples: int = 10_000, confidence: float = 0.95,
            seed: int = 0) -> Comparison:
    """Mean of acc(a) − acc(b) over (backbone, task, seed) pairs both ran, with a seeded percentile-bootstrap CI.

    Pairs are resampled with replacement, so the interval treats them as exchangeable: it reflects seed and task
    variation together, not either alone.
    """
    keys = [COLUMNS.backbone, COLUMNS.task, COLUMNS.seed]
    joined = _select(runs, a)[[*keys, "acc"]].merge(_select(runs, b)[[*keys, "acc"]], on=keys, suffixes=("_a", "_b"))
    if joined.empty:
        raise BenchError(f"--compare: {a!r} and {b!r} share no (backbone, task, seed); run both on the same grid")
    diff = (joined["acc_a"] - joined["acc_b"]).to_numpy()
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(len(diff), size=(resamples, len(diff)))].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return Comparison(a, b, len(diff), float(diff.mean()), float(low), float(high), confidence)
