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
from typing import Callable

import pandas as pd

from bench import BenchError
from bench.atomic import replacing
from bench.record import COLUMNS, RecordError, RunRecord, hp_column

RECORDS = "runs"


CORRUPT = ".corrupt"


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

    def read(self, run_id: str) -> RunRecord | None:
        return self._parse(self.path(run_id))

    def _parse(self, path: Path) -> RunRecord | None:
        try:
            inode = path.stat().st_ino
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            self._set_aside(path, inode, f"not valid JSON: {exc}")
            return None
        try:
            return RunRecord.from_dict(data)
        except RecordError as exc:
            self._set_aside(path, inode, f"not a run record: {exc}")
            return None

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
        return record is not None and record.done

    def write(self, record: RunRecord) -> Path:
        try:
            self.runs.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BenchError(f"cannot create results directory {self.runs}: {exc.strerror}; pass --results DIR") from None
        target = self.path(record.id)
        with replacing(target, f"the record of run {record.id}") as temporary, open(temporary, "w") as fh:
            json.dump(record.to_dict(), fh, indent=1, sort_keys=True, allow_nan=False)
            fh.flush()
            os.fsync(fh.fileno())
        return target

    def records(self) -> list[RunRecord]:
        if not self.runs.is_dir():
            return []
        return [record for p in sorted(self.runs.glob("*.json")) if (record := self._parse(p)) is not None]

    def load(self) -> pd.DataFrame:
        """All records as one row each: spec fields, hyper-parameters (`hp.*`), metrics and efficiency columns."""
        return pd.DataFrame([record.row() for record in self.records()])


def variant_labels(rows: pd.DataFrame) -> pd.Series:
    """Per run, the hyper-parameters that tell it apart from other runs of the same method on the same task and
    backbone (`init=kmeans`), or "" when there is nothing to tell apart. Settings chosen per task by the `tune`
    protocol do not vary within a task, so they never split a method into variants."""
    labels = pd.Series("", index=rows.index, dtype=object)
    prefix = hp_column("")
    hp = [c for c in rows.columns if c.startswith(prefix)]
    for _, group in rows.groupby(COLUMNS.method):
        within = group.groupby([COLUMNS.task, COLUMNS.backbone, COLUMNS.stage], dropna=False)
        varying = [c for c in hp if (within[c].nunique(dropna=False) > 1).any()]
        # convert_dtypes: an integer hyper-parameter that other methods lack is a float column (NaN elsewhere); within
        # one method it is whole numbers again, so it reads `num_prompts=5`, not `num_prompts=5.0`.
        labels[group.index] = [
            ", ".join(f"{c[len(prefix):]}={value}" for c, value in zip(varying, row))
            for row in group[varying].convert_dtypes().itertuples(index=False)
        ] if varying else ""
    return labels


def summarise(frame: pd.DataFrame, run_ids: set[str] | None = None) -> pd.DataFrame:
    """Test accuracy per (method, variant, task, backbone) over seeds: mean, sample std (n − 1) and n.

    Only finished runs that read the test split (stages `fixed` and `final`) count; `run_ids` narrows to some runs.
    """
    if frame.empty:
        return pd.DataFrame()
    rows = frame[(frame[COLUMNS.status] == "done") & frame[COLUMNS.stage].isin(["fixed", "final"])]
    if run_ids is not None:
        rows = rows[rows[COLUMNS.id].isin(run_ids)]
    if rows.empty:
        return pd.DataFrame()
    rows = rows.assign(variant=variant_labels(rows))
    keys = [COLUMNS.method, "variant", COLUMNS.task, COLUMNS.backbone, COLUMNS.stage]
    acc = COLUMNS.metrics.test_acc
    grouped = rows.groupby(keys, dropna=False).agg(mean=(acc, "mean"), std=(acc, "std"), n=(acc, "size")).reset_index()
    grouped[acc] = [
        f"{m:.2f}" if n < 2 else f"{m:.2f} ± {s:.2f}" for m, s, n in zip(grouped["mean"], grouped["std"], grouped["n"])
    ]
    return grouped[keys + [acc, "n"]]
