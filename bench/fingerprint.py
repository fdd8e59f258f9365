"""Data fingerprints: one digest of what a task's splits hold, so two runs can tell whether they read the same data.

A run's numbers depend on the exact images and labels it read: on CIFAR-100 a JPEG dump and TFDS's tensors differ by
about ten points (visinf/adapter_plus#3, NOAH#19), and a partial archive silently drops images (RepAdapter#2). Every
run records its task's fingerprint beside the layout (`RunRecord.task.data["fingerprint"]`), and the report warns when
one results folder holds runs of a task with different fingerprints.

What is hashed (sha256), per split:
- a task read from files: per image its path relative to the folder all of the task's images share, its size in bytes
  and its label: one `stat` per image, no reading. `deep` adds each file's sha256 (`bench data check --deep`, and the
  fingerprint `bench data fetch` writes beside the data);
- a task held in memory: the image tensor's shape and dtype, and the labels.

Entries are sorted, so neither the order of a list file nor the folder the data sits in changes a fingerprint. A task's
digest covers the splits a run reads (train, val, test); its short form is the first 12 hex digits.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

if TYPE_CHECKING:
    from bench.data import TensorSplit
    from bench.record import RunRecord

KEY = "fingerprint"  # the key in `TaskData.info` (and so in `RunRecord.task.data`)
FILE = "bench-fingerprint.json"  # written beside fetched data, in each task's folder
SPLITS = ("train", "val", "test")
SHORT = 12
FILES = "files: relative path, size, label"
FILES_DEEP = "files: relative path, size, label, content sha256"
TENSORS = "tensors: shape, dtype, labels"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Fingerprint:
    """A task's fingerprint.

    Attributes:
        of: what was hashed (`FILES`, `FILES_DEEP` or `TENSORS`); fingerprints of different kinds never compare.
        splits: split name -> sha256 of its entries.
    """

    of: str
    splits: dict[str, str]

    @property
    def digest(self) -> str:
        """The task's sha256: over its splits' digests, by split name."""
        text = "".join(f"{name} {self.splits[name]}\n" for name in sorted(self.splits))
        return hashlib.sha256(f"{self.of}\n{text}".encode()).hexdigest()

    @property
    def short(self) -> str:
        return self.digest[:SHORT]

    def to_info(self) -> dict[str, Any]:
        """The JSON form recorded in runs and written beside fetched data."""
        return {"digest": self.digest, "of": self.of, "splits": dict(self.splits)}

    @classmethod
    def from_info(cls, info: Any) -> "Fingerprint | None":
        """The fingerprint `to_info` wrote; None for anything else (records from before fingerprints)."""
        if not (isinstance(info, dict) and isinstance(info.get("splits"), dict) and isinstance(info.get("of"), str)):
            return None
        return cls(info["of"], {str(k): str(v) for k, v in info["splits"].items()})

    def differing(self, other: "Fingerprint") -> list[str]:
        """The splits whose digests differ (a split only one side has counts as differing)."""
        return sorted(s for s in set(self.splits) | set(other.splits) if self.splits.get(s) != other.splits.get(s))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def of_files(splits: Mapping[str, Sequence[tuple[Path, int]]], deep: bool = False,
             content: Mapping[Path, str] | None = None) -> Fingerprint:
    """The fingerprint of splits given as (image path, label) lists; only `SPLITS` count.

    Args:
        splits: split name -> its images and labels.
        deep: add each file's sha256 to its entry.
        content: sha256 of files already read (`bench data check` reads every image anyway); others are read here.
    """
    chosen = {name: items for name, items in splits.items() if name in SPLITS}
    paths = [path for items in chosen.values() for path, _ in items]
    # Relative to the deepest folder every image shares: moving or renaming the data root changes nothing.
    base = os.path.commonpath([str(p.parent) for p in paths]) if paths else ""
    content = content or {}
    digests = {}
    for name, items in chosen.items():
        entries = []
        for path, label in items:
            try:
                size = path.stat().st_size
            except OSError:
                size = -1  # missing: the loader and `bench data check` say so; the fingerprint still tells it apart
            entry: list[Any] = [os.path.relpath(path, base).replace(os.sep, "/"), size, int(label)]
            if deep:
                entry.append(content.get(path) or _content(path))
            entries.append(json.dumps(entry, ensure_ascii=False))
        digests[name] = _digest_lines(entries)
    return Fingerprint(FILES_DEEP if deep else FILES, digests)


def of_tensors(splits: Mapping[str, "TensorSplit"]) -> Fingerprint:
    """The fingerprint of splits held in memory: each split's image shape and dtype, and its labels."""
    digests = {}
    for name, split in splits.items():
        if name not in SPLITS:
            continue
        digest = hashlib.sha256(f"{tuple(split.images.shape)} {split.images.dtype}\n".encode())
        digest.update(split.labels.to("cpu").long().numpy().tobytes())
        digests[name] = digest.hexdigest()
    return Fingerprint(TENSORS, digests)


def _content(path: Path) -> str:
    try:
        return sha256_file(path)
    except OSError:
        return ""  # missing or unreadable: its size (-1) or `bench data check` tells


def _digest_lines(lines: list[str]) -> str:
    digest = hashlib.sha256()
    for line in sorted(lines):
        digest.update(line.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def recorded(task_data: Mapping[str, Any] | None) -> str | None:
    """The fingerprint digest a run recorded (its `task.data`); None for records from before fingerprints."""
    found = Fingerprint.from_info((task_data or {}).get(KEY))
    return found.digest if found is not None else None


def _by_task(records: Iterable["RunRecord"]) -> dict[str, Counter]:
    """Task -> how many finished runs recorded each fingerprint digest (None: no fingerprint)."""
    counts: dict[str, Counter] = {}
    for record in records:
        if record.done and record.task is not None:
            counts.setdefault(record.spec.task, Counter())[recorded(record.task.data)] += 1
    return counts


def fingerprint_summary(records: Iterable["RunRecord"]) -> str | None:
    """One line naming each task's data fingerprint (short), for the report's notes; None when no run has one."""
    parts = []
    for task, counts in sorted(_by_task(records).items()):
        known = [digest[:SHORT] for digest, _ in counts.most_common() if digest is not None]
        if known:
            parts.append(f"{task} {'/'.join(known)}")
    return f"data fingerprints: {', '.join(parts)}" if parts else None


def mixed_fingerprint_warnings(records: Iterable["RunRecord"]) -> list[str]:
    """One line per task whose finished runs read data with different fingerprints: their numbers do not compare
    (a JPEG dump against TFDS tensors, a partial archive), and a table averaging them would hide it. Runs recorded
    before fingerprints existed are counted as unknown but never cause a warning by themselves."""
    lines = []
    for task, counts in sorted(_by_task(records).items()):
        known = [(digest, n) for digest, n in counts.most_common() if digest is not None]
        if len(known) < 2:
            continue
        parts = ", ".join(f"{digest[:SHORT]} ({n} run{'s' * (n != 1)})" for digest, n in known)
        unknown = counts.get(None, 0)
        tail = f", and {unknown} run(s) without a fingerprint" if unknown else ""
        lines.append(f"warning: {task} mixes runs on different data: fingerprints {parts}{tail}; its numbers do not "
                     f"compare: keep each data variant in its own --results folder (`bench data check` prints a data "
                     f"root's fingerprints)")
    return lines


def read_file(folder: Path) -> dict[str, Any] | None:
    """The fingerprint file `bench data fetch` wrote in a task's folder, or None."""
    path = folder / FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_file(folder: Path, content: dict[str, Any]) -> Path:
    """Write a task's fingerprint file (temp file + rename: a reader never sees half of it)."""
    path = folder / FILE
    tmp = path.with_name(f".{FILE}.tmp")
    tmp.write_text(json.dumps(content, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path
