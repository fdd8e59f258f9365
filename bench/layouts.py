"""Finding a dataset on disk: the generic half of every file-backed task family.

A family (tasks/fgvc.py, tasks/vtab.py) knows its folder names and list formats and supplies *finders*; this module
resolves the data root, looks folders and files up tolerantly (case, `-` and `_` ignored) while remembering every
path it tried, reads the list formats people ship (`<relpath> <label>` text lists, VPT's `{path: class}` JSON),
derives the splits a layout lacks (seeded and class-stratified, and said so in the record), and builds the task's
`TaskData` from `FileSplit`s. Layout is detected, never configured: the first finder that matches wins.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from bench import BenchError
from bench.data import TaskData
from bench.fingerprint import KEY as FINGERPRINT
from bench.fingerprint import of_files
from bench.imagefiles import FileSplit, ImageTransforms, Item

DATA_ENV = "BENCH_DATA"
DERIVED_SPLIT_SEED = 0


def data_root_or_env(data_root: Path | None, unset: str) -> Path:
    """`data_root`, else `$BENCH_DATA`; when neither is given, a one-line error: `unset`, then how to give one."""
    if data_root is not None:
        return data_root
    env = os.environ.get(DATA_ENV)
    if not env:
        raise BenchError(f"{unset}; pass --data-root DIR or set {DATA_ENV}=DIR")
    return Path(env)


def resolve_data_root(data_root: Path | None) -> Path:
    """`data_root`, else `$BENCH_DATA`; a one-line error when neither names an existing folder."""
    data_root = data_root_or_env(data_root, "this task reads files from disk")
    if not data_root.is_dir():
        raise BenchError(f"data root {data_root} is not a folder; pass --data-root DIR or set {DATA_ENV}=DIR")
    return data_root


def _key(name: str) -> str:
    """Folder names differ between repos mostly in case and separators (`Patch_Camelyon`, `patch-camelyon`)."""
    return re.sub(r"[^0-9a-z]", "", name.casefold())


class PathLog:
    """Looks up children by tolerant name and remembers every path it tried, for the not-found message.

    Lookups chain (`lookup.file(lookup.dir(root, names), ...)`); below a folder that was not found the log still
    records what it would have looked for (`root/{a,b}/train.json`), so the message names the files, not just the
    first folder that was missing.
    """

    def __init__(self) -> None:
        self.tried: list[str] = []
        self._missing = ""

    def dir(self, parent: Path | None, names: Iterable[str]) -> Path | None:
        return next(iter(self.dirs(parent, names)), None)

    def dirs(self, parent: Path | None, names: Iterable[str]) -> list[Path]:
        """Every matching folder, in `names` order: `vtab-1k` (NOAH) and `VTAB-1K` (SPT) may both exist."""
        return self._children(parent, names, Path.is_dir)

    def file(self, parent: Path | None, names: Iterable[str]) -> Path | None:
        return next(iter(self._children(parent, names, Path.is_file)), None)

    def _children(self, parent: Path | None, names: Iterable[str], kind: Callable[[Path], bool]) -> list[Path]:
        names = list(names)
        path = f"{parent if parent is not None else self._missing}/" + (
            names[0] if len(names) == 1 else "{" + ",".join(names) + "}"
        )
        self.tried.append(path)
        entries = sorted(p for p in parent.iterdir() if kind(p)) if parent and parent.is_dir() else []
        hits = [entry for name in names for entry in entries if _key(entry.name) == _key(name)]
        if not hits and kind is Path.is_dir:
            self._missing = path
        return list(dict.fromkeys(hits))

    def describe(self) -> str:
        """The paths tried, once each, leaving out folders whose contents are listed."""
        paths = list(dict.fromkeys(self.tried))
        return "; ".join(p for p in paths if not any(q.startswith(p + "/") for q in paths))


@dataclass
class Located:
    """What a finder found: the layout, where, and the splits as (absolute image path, label) lists.

    Attributes:
        layout: the layout's name, recorded in every run.
        folder: the dataset's folder.
        lists: split -> the list file it was read from.
        splits: split -> items; keys among `train`, `val`, `trainval`, `test`.
        notes: how the lists were interpreted (label remapping, derived splits), recorded in every run.
    """

    layout: str
    folder: Path
    lists: dict[str, Path]
    splits: dict[str, list[Item]]
    notes: list[str] = field(default_factory=list)


Finder = Callable[[Path, PathLog], Located | None]


def read_txt_list(path: Path, base: Path) -> list[Item]:
    """`<relpath> <label>` per line (relpath may contain spaces), relative to `base`."""
    items: list[Item] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        relpath, _, label = line.strip().rpartition(" ")
        if not relpath or not label.lstrip("-").isdigit():
            raise BenchError(f"{path}:{number}: expected `<image path> <integer label>`, got {line.strip()!r}")
        items.append((base / relpath.strip(), int(label)))
    return items


def read_json_map(path: Path) -> dict[str, int]:
    """VPT's FGVC split files: `{relative image path: class id}`."""
    try:
        mapping = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BenchError(f"{path} is not valid JSON ({exc}); expected {{image path: class id}}") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, int) for v in mapping.values()):
        raise BenchError(f"{path} must map image paths to integer class ids")
    return mapping


def remap_contiguous(splits: dict[str, dict[str, int]], base: Path) -> dict[str, list[Item]]:
    """Class ids of all splits mapped, in sorted order, onto 0..K-1 (VPT's JSON ids are 1-based and may have gaps)."""
    ids = sorted({cid for mapping in splits.values() for cid in mapping.values()})
    index = {cid: i for i, cid in enumerate(ids)}
    return {name: [(base / rel, index[cid]) for rel, cid in mapping.items()] for name, mapping in splits.items()}


def image_base(folder: Path, candidates: Sequence[str], first: str, lookup: PathLog) -> Path:
    """The first of `folder/<candidate>` and `folder` under which the list's first image exists; candidate folders
    match whatever their case (`Dogs/images` in SPT's release, `Dogs/Images` in the Stanford archive)."""
    for base in [*(_tolerant(folder, c) for c in candidates), folder]:
        lookup.tried.append(str(base / first))
        if (base / first).is_file():
            return base
    raise BenchError(f"images listed for {folder} not found; looked for {lookup.describe()}")


def _tolerant(folder: Path, relative: str) -> Path:
    """`folder/relative` with each part matched as `PathLog` matches names; the literal path when a part is absent."""
    path = folder
    for part in Path(relative).parts:
        entries = sorted(path.iterdir()) if path.is_dir() else []
        match = [entry for entry in entries if entry.is_dir() and _key(entry.name) == _key(part)]
        path = match[0] if match else path / part
    return path


def stratified_holdout(items: list[Item], holdout: int, seed: int) -> tuple[list[Item], list[Item]]:
    """Split off `holdout` items with each class in proportion (largest remainder), seeded; both keep list order.

    Every class with at least two items keeps one on the kept side, so training sees every class it can.
    """
    rng = np.random.default_rng(seed)
    labels = np.array([label for _, label in items])
    classes = np.unique(labels)
    sizes = np.array([(labels == c).sum() for c in classes])
    exact = sizes * holdout / max(1, len(items))
    quota = np.minimum(np.floor(exact).astype(int), np.maximum(sizes - 1, 0))
    # Hand out what rounding left, largest fractional part first; ties in a seeded order.
    order = np.lexsort((rng.random(len(classes)), -(exact - np.floor(exact))))
    while quota.sum() < holdout and (quota < np.maximum(sizes - 1, 0)).any():
        for c in order:
            if quota.sum() < holdout and quota[c] < sizes[c] - 1:
                quota[c] += 1
    held: set[int] = set()
    for c, count in zip(classes, quota):
        members = np.flatnonzero(labels == c)
        held.update(rng.permutation(members)[:count].tolist())
    kept = [item for i, item in enumerate(items) if i not in held]
    return kept, [item for i, item in enumerate(items) if i in held]


def label_problems(splits: dict[str, list[Item]], num_classes: int) -> list[str]:
    """One line per split whose labels fall outside 0..num_classes-1 (a training run would crash on them)."""
    problems = []
    for name, items in splits.items():
        bad = [(path, label) for path, label in items if not 0 <= label < num_classes]
        if bad:
            path, label = bad[0]
            problems.append(
                f"{name}: {len(bad)} label(s) outside 0..{num_classes - 1} (e.g. {label} for {path.name})"
            )
    return problems


@dataclass(frozen=True)
class DataSource:
    """A file-backed task's loader: the finders of its family's layouts and how its splits are built.

    A `Task` whose `load` is a `DataSource` reads files from disk; `bench data check` inspects it.

    Attributes:
        name: the task's name, for messages.
        num_classes: labels must lie in 0..num_classes-1.
        finders: tried in order; the first that returns a `Located` is the layout.
        transforms: the family's image pipelines.
        val_fraction: when a layout lacks a val split, the fraction of the training pool held out as val (VTAB-1k:
            0.2, i.e. 200 of train800val200's 1,000; FGVC: 0.1 of train, as VPT did).
        expected: reference split sizes for `bench data check`; `a+b` sums splits.
        cache_train: keep decoded train and val images in memory (families without augmentation, small splits).
    """

    name: str
    num_classes: int
    finders: tuple[Finder, ...]
    transforms: ImageTransforms
    val_fraction: float
    expected: dict[str, int]
    cache_train: bool = False

    def __call__(self, data_root: Path | None = None) -> TaskData:
        root = resolve_data_root(data_root)
        found = self.locate(root)
        problems = label_problems(found.splits, self.num_classes)
        if problems:
            raise BenchError(f"{self.name}: {problems[0]}; run `bench data check --tasks {self.name}` for details")
        for split, items in found.splits.items():
            if not items:
                raise BenchError(f"{self.name}: the {split} split in {found.lists.get(split, found.folder)} is empty")
        # A stat per listed image (well under a second for FGVC's largest lists): a missing file fails here, before
        # training, rather than in the middle of an epoch.
        missing = [path for items in found.splits.values() for path, _ in items if not path.is_file()]
        if missing:
            raise BenchError(f"{self.name}: {len(missing)} listed image(s) missing, e.g. {missing[0]}; run "
                             f"`bench data check --tasks {self.name}` for details")
        splits = {
            split: FileSplit(found.splits[split], self.transforms, cache=self.cache_train and split != "test")
            for split in ("train", "val", "test")
        }
        info = {
            "data_root": str(root),
            "layout": found.layout,
            FINGERPRINT: of_files(found.splits).to_info(),
            "folder": str(found.folder),
            "lists": {split: str(path) for split, path in found.lists.items()},
            "split_sizes": {split: len(items) for split, items in found.splits.items()},
            "notes": found.notes,
            "transforms": self.transforms.describe(),
        }
        return TaskData(splits["train"], splits["val"], splits["test"], info=info)

    def locate(self, root: Path) -> Located:
        """The first layout that matches, with train, val and test (derived when the layout lacks them)."""
        lookup = PathLog()
        for finder in self.finders:
            found = finder(root, lookup)
            if found is not None:
                return self._complete(found)
        raise BenchError(
            f"task {self.name} not found under {root}; looked for: {lookup.describe()}. "
            f"Put the dataset there in one of the layouts in docs/datasets.md, "
            f"or point --data-root/{DATA_ENV} elsewhere"
        )

    def _complete(self, found: Located) -> Located:
        splits = found.splits
        if "val" in splits and "train" in splits:
            return found
        pool_name = "train" if "train" in splits else "trainval"
        pool = splits[pool_name]
        train, val = stratified_holdout(pool, round(len(pool) * self.val_fraction), DERIVED_SPLIT_SEED)
        found.splits = {**splits, "train": train, "val": val}
        found.notes.append(
            f"val derived from {pool_name} ({len(pool)} images): {len(val)} held out, class-stratified, "
            f"seed {DERIVED_SPLIT_SEED}; train is the remaining {len(train)}"
        )
        return found
