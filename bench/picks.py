"""Reusable tuning picks: the `tune` protocol's stage-1 choice per (method, task, backbone, recipe), written by
`bench report --export-tuned FILE` from the records of a store and read by `bench run --from-tuned FILE`, which then
skips stage 1 for the cells the file covers and trains stage 2 with the picked hyper-parameters.

A pick holds the whole stage-1 spec that won (hyper-parameters, pipeline, recipe, weights), so the final runs it
makes are the very runs (same ids) that stage 2 would have trained after that stage 1; and the val accuracy and the
run ids it came from, so that no pick travels without the measurement behind it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import BenchError
from bench.atomic import replacing
from bench.config import RunSpec
from bench.method import METHODS

FORMAT = "bench-tuned-picks"
VERSION = 1

Cell = tuple[str, str, str, str | None, str | None]


def cell(spec: RunSpec) -> Cell:
    """What a pick stands for: (method, task, backbone, recipe, weights)."""
    return spec.method, spec.task, spec.backbone, spec.recipe, spec.weights


@dataclass(frozen=True)
class Pick:
    """A stage-1 choice.

    Attributes:
        spec: the stage-1 run that won (stage `tune`).
        val_acc: its val accuracy (%).
        candidates: the finished stage-1 runs of its cell it was chosen from, by id.
    """

    spec: RunSpec
    val_acc: float
    candidates: list[str]

    def origin(self, file: Path) -> dict[str, Any]:
        """What the final runs it makes record as `hparams_from`."""
        return {"from": "tuned file", "file": str(file), "run": self.spec.run_id, "val_acc": self.val_acc}

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.spec.method, "task": self.spec.task, "backbone": self.spec.backbone,
                "recipe": self.spec.recipe, "val_acc": self.val_acc, "run": self.spec.run_id,
                "candidates": self.candidates, "spec": self.spec.to_dict()}


def write_picks(path: Path, picks: list[Pick], results: Path) -> None:
    data = {"format": FORMAT, "version": VERSION, "results": str(results),
            "picks": [pick.to_dict() for pick in sorted(picks, key=lambda p: cell(p.spec))]}
    with replacing(path, "the tuning picks") as temporary:
        temporary.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def read_picks(path: Path) -> dict[Cell, Pick]:
    """The picks of a file `bench report --export-tuned` wrote, by cell.

    Raises:
        BenchError: the file is missing or is not such a file (one line, naming what is wrong).
    """
    how = "write one with bench report --results DIR --export-tuned FILE"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BenchError(f"--from-tuned {path} does not exist; {how}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BenchError(f"--from-tuned {path} is not JSON ({exc}); {how}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("picks"), list):
        raise BenchError(f"--from-tuned {path} is not a tuned-picks file (no format {FORMAT!r} with picks); {how}")
    if data.get("version") != VERSION:
        raise BenchError(f"--from-tuned {path} has version {data.get('version')!r}; this bench reads {VERSION}; {how}")
    picks: dict[Cell, Pick] = {}
    for index, entry in enumerate(data["picks"]):
        pick = _pick(entry, f"--from-tuned {path}: pick {index + 1}")
        if cell(pick.spec) in picks:
            raise BenchError(f"--from-tuned {path}: two picks for {' · '.join(map(str, cell(pick.spec)[:4]))}; "
                             f"keep one per (method, task, backbone, recipe)")
        picks[cell(pick.spec)] = pick
    return picks


def _pick(entry: Any, where: str) -> Pick:
    try:
        spec = RunSpec(**entry["spec"])
        val_acc, candidates = float(entry["val_acc"]), [str(c) for c in entry["candidates"]]
    except (TypeError, KeyError, ValueError) as exc:
        raise BenchError(f"{where} lacks or mangles spec, val_acc or candidates ({exc!r}); export it again") from None
    if spec.stage != "tune" or spec.run_id != entry.get("run"):
        raise BenchError(f"{where} is not the stage-1 run it names ({entry.get('run')}); export it again")
    # The method's own check of its values: a pick edited by hand into an invalid setting fails here, before a run.
    METHODS.get(spec.method).config_cls.from_overrides(spec.hparams)
    return Pick(spec, val_acc, candidates)
