"""`bench data check`: is each task's data on disk, in which layout, and is it fit to train on?

Data preparation is where VPT/NOAH/SPT users lose most time (dead split links, three layouts, mislabelled dumps), so
the check reports every problem at once instead of the first crash: findings are *errors* (the task is unusable:
not found, labels out of range, missing or undecodable images), *warnings* (split sizes off the reference, classes
absent from a split, test images duplicated in train/val) or *notes* (how the layout was read, derived splits).
Each task's data fingerprint (`bench.fingerprint`) is printed, and compared with the one `bench data fetch` wrote
beside the data when there is one: a difference means the files changed since they were fetched.
"""

from __future__ import annotations

import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image, UnidentifiedImageError
from rich.console import Console
from rich.table import Table

from bench import BenchError, fingerprint
from bench.data import TASKS
from bench.fingerprint import Fingerprint
from bench.imagefiles import Item
from bench.layouts import DataSource, Located, label_problems, resolve_data_root

LISTED = 5  # how many offending files a finding names before "and N more"
ERROR, WARNING, NOTE = "error", "warning", "note"
SHOWN = ("train", "val", "test")  # the splits a run reads; train800val200 is reported only through its findings


@dataclass(frozen=True)
class Finding:
    level: str
    text: str


@dataclass
class TaskCheck:
    """What `bench data check` found for one task."""

    task: str
    layout: str = ""
    folder: str = ""
    sizes: dict[str, int] = field(default_factory=dict)
    expected: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    fingerprint: Fingerprint | None = None
    deep: Fingerprint | None = None  # with content: free here, since every image is read anyway

    @property
    def usable(self) -> bool:
        return not any(f.level == ERROR for f in self.findings)


# Called as images are read: (task, images read so far, images listed for the task).
OnImage = Callable[[str, int, int], None]
DEFAULT_JOBS = 8  # threads: PIL decodes and hashlib hashes without the GIL, and on network disks reads overlap


def check_tasks(names: list[str], data_root: Path | None, jobs: int = DEFAULT_JOBS,
                on_image: OnImage | None = None) -> list[TaskCheck]:
    """Check each task, reading its images on `jobs` threads; tasks generated in memory have nothing on disk and
    pass, with their fingerprint."""
    root = None
    checks = []
    for name in names:
        source = TASKS.get(name).load
        if not isinstance(source, DataSource):
            built = Fingerprint.from_info(source(None).info.get(fingerprint.KEY))
            checks.append(TaskCheck(name, layout="built in", findings=[Finding(NOTE, "generated in memory")],
                                    fingerprint=built))
            continue
        root = root or resolve_data_root(data_root)
        checks.append(check_source(source, root, jobs, on_image))
    return checks


def check_source(source: DataSource, root: Path, jobs: int = DEFAULT_JOBS,
                 on_image: OnImage | None = None) -> TaskCheck:
    check = TaskCheck(source.name, expected=dict(source.expected))
    try:
        found = source.locate(root)
    except BenchError as exc:
        check.findings.append(Finding(ERROR, str(exc)))
        return check
    check.layout, check.folder = found.layout, str(found.folder)
    check.fingerprint = fingerprint.of_files(found.splits)
    check.sizes = {split: len(items) for split, items in found.splits.items()}
    check.findings += [Finding(NOTE, note) for note in found.notes]
    check.findings += _size_findings(check.sizes, source.expected)
    check.findings += [Finding(ERROR, problem) for problem in label_problems(found.splits, source.num_classes)]
    check.findings += _coverage_findings(found, source.num_classes)

    def progress(done: int, total: int) -> None:
        if on_image is not None:
            on_image(source.name, done, total)

    file_findings, digests = _file_findings(found, jobs, progress)
    check.findings += file_findings
    check.deep = fingerprint.of_files(found.splits, deep=True, content=digests)
    check.findings += _fetched_findings(check, found.folder)
    return check


def _fetched_findings(check: TaskCheck, folder: Path) -> list[Finding]:
    """The data against the fingerprint `bench data fetch` wrote beside it, when it did."""
    written = fingerprint.read_file(folder)
    if written is None:
        return []
    compared = False
    for key, now in (("fingerprint", check.fingerprint), ("deep", check.deep)):
        then = Fingerprint.from_info(written.get(key))
        if then is None or now is None or then.of != now.of:
            continue
        if then.digest != now.digest:
            return [Finding(WARNING, f"data changed since it was fetched: the {', '.join(now.differing(then))} "
                                     f"split(s) differ from {folder / fingerprint.FILE}")]
        compared = True
    return [Finding(NOTE, f"same data as fetched ({fingerprint.FILE})")] if compared else []


def _size_findings(sizes: dict[str, int], expected: dict[str, int]) -> list[Finding]:
    findings = []
    for key, want in expected.items():
        have = sum(sizes.get(split, 0) for split in key.split("+"))
        if have != want:
            findings.append(Finding(WARNING, f"{key} has {have} images, expected {want}"))
    return findings


def _coverage_findings(found: Located, num_classes: int) -> list[Finding]:
    findings = []
    for split, items in found.splits.items():
        # A split smaller than the class count cannot hold every class (VTAB's val200 on SUN397): not a problem.
        if len(items) < num_classes:
            continue
        missing = sorted(set(range(num_classes)) - {label for _, label in items})
        if missing:
            findings.append(Finding(WARNING, f"{split} lacks {len(missing)} of {num_classes} classes: {_few(missing)}"))
    return findings


def _file_findings(found: Located, jobs: int,
                   on_image: Callable[[int, int], None]) -> tuple[list[Finding], dict[Path, str]]:
    """Findings about the files, and each readable file's sha256."""
    paths = sorted({path for items in found.splits.values() for path, _ in items})
    results: dict[Path, tuple[str | None, str | None]] = {}
    on_image(0, len(paths))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for done, (path, result) in enumerate(zip(paths, pool.map(_inspect, paths)), 1):
            results[path] = result
            on_image(done, len(paths))
    findings = []
    missing = [p for p, (_, error) in results.items() if error == "missing"]
    broken = [p for p, (_, error) in results.items() if error not in (None, "missing")]
    if missing:
        findings.append(Finding(ERROR, f"{len(missing)} listed image(s) missing: {_few(missing)}"))
    if broken:
        reasons = [f"{p} ({results[p][1]})" for p in broken]
        findings.append(Finding(ERROR, f"{len(broken)} unreadable or corrupt image(s): {_few(reasons)}"))
    digests = {p: digest for p, (digest, _) in results.items() if digest}
    findings += _duplicate_findings(found, digests)
    return findings, digests


def _inspect(path: Path) -> tuple[str | None, str | None]:
    """(sha256 of the bytes, None) for a good image; (digest or None, reason) otherwise."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, "missing"
    except OSError as exc:
        return None, exc.strerror or type(exc).__name__
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # a full decode: truncated files pass Image.verify()
    except UnidentifiedImageError:
        return digest, "not a recognised image format"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return digest, str(exc) or type(exc).__name__
    return digest, None


def _duplicate_findings(found: Located, digests: dict[Path, str]) -> list[Finding]:
    """Test images that also appear, as the same file or the same bytes, in train or val: test leaks into tuning."""
    tuning: list[Item] = [*found.splits.get("train", []), *found.splits.get("val", [])]
    seen_paths = {path for path, _ in tuning}
    seen_digests = {digests[path] for path, _ in tuning if path in digests}
    leaked = [
        path for path, _ in found.splits.get("test", [])
        if path in seen_paths or digests.get(path, "") in seen_digests
    ]
    if not leaked:
        return []
    return [Finding(WARNING, f"{len(leaked)} test image(s) duplicated in train/val: {_few(leaked)}")]


def _few(values: list) -> str:
    shown = ", ".join(str(v) for v in values[:LISTED])
    return shown + (f" and {len(values) - LISTED} more" if len(values) > LISTED else "")


def render(checks: list[TaskCheck], console: Console, deep: bool = False) -> None:
    """The table of checks; `deep` adds each task's content fingerprint below its cheap one (the one runs record)."""
    table = Table(title="bench data check", title_justify="left", show_lines=True)
    for column in ("task", "status", "layout", "split sizes", "fingerprint", "findings"):
        table.add_column(column, overflow="fold")
    colours = {ERROR: "red", WARNING: "yellow", NOTE: "dim"}
    for check in checks:
        found = " · ".join(f"{split} {check.sizes[split]}" for split in SHOWN if split in check.sizes)
        expected = " · ".join(f"{key} {size}" for key, size in check.expected.items())
        sizes = f"{found}\n[dim]expected {expected}" if found and expected else found
        findings = "\n".join(f"[{colours[f.level]}]{f.level}: {_escape(f.text)}" for f in check.findings)
        prints = check.fingerprint.short if check.fingerprint else ""
        if deep and check.deep is not None:
            prints += f"\n[dim]content {check.deep.short}"
        table.add_row(check.task, _status(check), f"{check.layout}\n{check.folder}".strip(), sizes, prints, findings)
    console.print(table)
    unusable = [check.task for check in checks if not check.usable]
    summary = f"{len(checks) - len(unusable)} of {len(checks)} task(s) usable"
    console.print(summary + (f"; unusable: {', '.join(unusable)}" if unusable else ""), highlight=False)


def _status(check: TaskCheck) -> str:
    if not check.usable:
        return "[red]unusable" if check.layout else "[red]missing"
    return "[yellow]warnings" if any(f.level == WARNING for f in check.findings) else "[green]ok"


def _escape(text: str) -> str:
    return text.replace("[", r"\[")
