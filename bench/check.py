"""`bench check`: a regression check for CI on a small, fixed subset of the micro suite.

The baseline file lists the runs to check (their full specs) and the test accuracy each reached when the baseline
was made. A check recomputes every run in a fresh results directory — a stored record would hide a regression — and
fails on any run that drops more than the tolerance below its baseline, or that fails or goes missing.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import BenchError
from bench.backbone import DEFAULT_BACKBONE
from bench.config import RunSpec
from bench.scheduler import Execution, Grid, GridEvents, execute
from bench.store import Store

DEFAULT_BASELINE = Path("results/baselines/check.json")
DEFAULT_TOLERANCE = 3.0


def default_subset() -> Grid:
    """Cheap but not trivial: the default methods and LoRA on one real and two structured micro tasks, 4 epochs, one
    seed. Both prompt methods run under `spt-paper`: `vpt-paper`'s fixed-protocol point (VPT's CUB setting, SGD at
    lr 0.1) does not train VPT on the micro suite, and a check of a run that learns nothing would catch little."""
    return Grid(
        methods=["linear", "vpt-deep", "spt-deep", "lora"],
        tasks=["digits", "sprites-loc", "shapes-count"],
        backbones=[DEFAULT_BACKBONE],
        seeds=[0],
        sweeps={"epochs": ["4"]},
        recipe="spt-paper",
    )


@dataclass(frozen=True)
class CheckRow:
    label: str
    baseline: float | None
    now: float | None
    status: str  # ok | regressed | failed | new

    @property
    def delta(self) -> float | None:
        return None if self.baseline is None or self.now is None else self.now - self.baseline


@dataclass(frozen=True)
class BaselineRun:
    """One run of a baseline file: what ran, and the test accuracy (%) it reached when the baseline was made."""

    spec: RunSpec
    test_acc: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.spec.label, "spec": self.spec.to_dict(), "test_acc": self.test_acc}


def read_baseline(path: Path) -> list[BaselineRun]:
    try:
        runs = json.loads(path.read_text())["runs"]
        return [BaselineRun(RunSpec(**run["spec"]), run["test_acc"]) for run in runs]
    except FileNotFoundError:
        raise BenchError(f"baseline {path} does not exist; create it with `bench check --update`") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BenchError(f"baseline {path} is not a bench check baseline ({type(exc).__name__}); "
                         "recreate it with `bench check --update`") from None


def run_check(
    baseline_path: Path, tolerance: float, update: bool, progress: GridEvents, results: Path | None = None
) -> list[CheckRow]:
    """Recompute the baseline's runs (the default subset when updating) and compare them with the baseline."""
    baseline = [] if update else read_baseline(baseline_path)
    specs = default_subset().fixed_specs() if update else [run.spec for run in baseline]
    expected = {run.spec.run_id: run.test_acc for run in baseline}
    with contextlib.ExitStack() as stack:
        store = Store(results or stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-check-")))
        execute(specs, Execution(store), progress, "check")
        records = {spec.run_id: store.read(spec.run_id) for spec in specs}

    rows = []
    for spec in specs:
        record = records[spec.run_id]
        now = record.test_acc if record is not None and record.done else None
        before = expected.get(spec.run_id)
        if now is None:
            status = "failed"
        elif before is None:
            status = "new"
        else:
            status = "ok" if now >= before - tolerance else "regressed"
        rows.append(CheckRow(spec.label, before, now, status))

    if update:
        if any(row.status == "failed" for row in rows):
            raise BenchError("a check run failed; the baseline was not updated (see the table above)")
        write_baseline(baseline_path, specs, rows)
    return rows


def write_baseline(path: Path, specs: list[RunSpec], rows: list[CheckRow]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    runs = [BaselineRun(spec, row.now).to_dict() for spec, row in zip(specs, rows)]
    note = "bench check baseline: rewrite with `bench check --update`; accuracies are test %, CPU, one seed"
    path.write_text(json.dumps({"note": note, "runs": runs}, indent=1) + "\n")
