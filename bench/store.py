"""The results store: one JSON record per run, named by the run's stable id.

Records are written to a temporary file in the same directory and renamed into place, so a reader (or a run killed
mid-write) never sees half a record.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from bench import BenchError
from bench.atomic import replacing

RECORDS = "runs"


CORRUPT = ".corrupt"
_REQUIRED = {"id": str, "status": str, "spec": dict}  # what every reader of a record relies on


def warn_stderr(message: str) -> None:
    print(f"bench: warning: {message}", file=sys.stderr, flush=True)


class Store:
    """Records under `root/runs/`. A record that cannot be read (truncated, not JSON, not a record) is renamed
    `<name>.corrupt` with one warning, and its run counts as not done: one bad file never blocks the directory.

    Attributes:
        set_aside: the files this store renamed, in order, for a report to mention.
    """

    def __init__(self, root: str | Path, warn: Callable[[str], None] = warn_stderr) -> None:
        self.root = Path(root)
        self.runs = self.root / RECORDS
        self.warn = warn
        self.set_aside: list[Path] = []

    def path(self, run_id: str) -> Path:
        return self.runs / f"{run_id}.json"

    def read(self, run_id: str) -> dict[str, Any] | None:
        return self._parse(self.path(run_id))

    def _parse(self, path: Path) -> dict[str, Any] | None:
        try:
            inode = path.stat().st_ino
            record = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            self._set_aside(path, inode, f"not valid JSON: {exc}")
            return None
        wrong = [key for key, kind in _REQUIRED.items() if not isinstance(record, dict)
                 or not isinstance(record.get(key), kind)]
        if not wrong and record["status"] == "done" and not isinstance(record.get("metrics"), dict):
            wrong = ["metrics"]  # a finished run is selected and reported by its metrics
        if wrong:
            self._set_aside(path, inode, f"not a run record: no {', '.join(wrong)}")
            return None
        return record

    def _set_aside(self, path: Path, inode: int, why: str) -> None:
        target = path.with_name(path.name + CORRUPT)
        for n in itertools.count(1):
            if not target.exists():
                break
            target = path.with_name(f"{path.name}{CORRUPT}.{n}")
        try:
            os.replace(path, target)
        except FileNotFoundError:  # another process set it aside first
            return
        if target.stat().st_ino != inode:
            # A run finished and wrote a good record in between reading the bad one and renaming it: put it back.
            os.replace(target, path)
            return
        self.set_aside.append(target)
        self.warn(f"set aside unreadable record {path} as {target.name} ({why}); its run counts as not done")

    def is_done(self, run_id: str) -> bool:
        record = self.read(run_id)
        return record is not None and record.get("status") == "done"

    def write(self, record: dict[str, Any]) -> Path:
        try:
            self.runs.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BenchError(f"cannot create results directory {self.runs}: {exc.strerror}; pass --results DIR") from None
        target = self.path(record["id"])
        with replacing(target, f"the record of run {record['id']}") as temporary, open(temporary, "w") as fh:
            json.dump(record, fh, indent=1, sort_keys=True, allow_nan=False)
            fh.flush()
            os.fsync(fh.fileno())
        return target

    def records(self) -> list[dict[str, Any]]:
        if not self.runs.is_dir():
            return []
        return [record for p in sorted(self.runs.glob("*.json")) if (record := self._parse(p)) is not None]

    def load(self) -> pd.DataFrame:
        """All records as one row each: spec fields, hyper-parameters (`hp.*`), metrics and efficiency columns."""
        rows = [flatten(record) for record in self.records()]
        return pd.DataFrame(rows)


def variant_labels(rows: pd.DataFrame) -> pd.Series:
    """Per run, the hyper-parameters that tell it apart from other runs of the same method on the same task and
    backbone (`init=kmeans`), or "" when there is nothing to tell apart. Settings chosen per task by the `tune`
    protocol do not vary within a task, so they never split a method into variants."""
    labels = pd.Series("", index=rows.index, dtype=object)
    hp = [c for c in rows.columns if c.startswith("hp.")]
    for _, group in rows.groupby("method"):
        within = group.groupby(["task", "backbone", "stage"], dropna=False)
        varying = [c for c in hp if (within[c].nunique(dropna=False) > 1).any()]
        # convert_dtypes: an integer hyper-parameter that other methods lack is a float column (NaN elsewhere); within
        # one method it is whole numbers again, so it reads `num_prompts=5`, not `num_prompts=5.0`.
        labels[group.index] = [
            ", ".join(f"{c[3:]}={value}" for c, value in zip(varying, row))
            for row in group[varying].convert_dtypes().itertuples(index=False)
        ] if varying else ""
    return labels


def summarise(frame: pd.DataFrame, run_ids: set[str] | None = None) -> pd.DataFrame:
    """Test accuracy per (method, variant, task, backbone) over seeds: mean, sample std (n − 1) and n.

    Only finished runs that read the test split (stages `fixed` and `final`) count; `run_ids` narrows to some runs.
    """
    if frame.empty:
        return pd.DataFrame()
    rows = frame[(frame["status"] == "done") & frame["stage"].isin(["fixed", "final"])]
    if run_ids is not None:
        rows = rows[rows["id"].isin(run_ids)]
    if rows.empty:
        return pd.DataFrame()
    rows = rows.assign(variant=variant_labels(rows))
    keys = ["method", "variant", "task", "backbone", "stage"]
    grouped = rows.groupby(keys, dropna=False).agg(
        mean=("test_acc", "mean"), std=("test_acc", "std"), n=("test_acc", "size")
    ).reset_index()
    grouped["test_acc"] = [
        f"{m:.2f}" if n < 2 else f"{m:.2f} ± {s:.2f}" for m, s, n in zip(grouped["mean"], grouped["std"], grouped["n"])
    ]
    return grouped[keys + ["test_acc", "n"]]


def flatten(record: dict[str, Any]) -> dict[str, Any]:
    spec = record["spec"]
    row: dict[str, Any] = {
        "id": record["id"],
        "status": record["status"],
        "method": spec["method"],
        "task": spec["task"],
        "backbone": spec["backbone"],
        "seed": spec["seed"],
        "weights": spec.get("weights"),
        "stage": spec.get("stage", "fixed"),
    }
    row.update({f"hp.{k}": v for k, v in spec["hparams"].items()})
    for section in ("metrics", "params", "wallclock", "cpu_share", "throughput"):
        row.update({f"{section}.{k}" if section != "metrics" else k: v for k, v in record.get(section, {}).items()})
    if "task" in record:
        row["group"] = record["task"].get("group")
    if "error" in record:
        row["error"] = record["error"]
    return row
