"""`bench data fetch`: a benchmark's data into a layout `bench` detects, verified, checked and fingerprinted.

A task family declares where its data comes from (`register_fetch` in `tasks/vtab.py`, `tasks/fgvc.py`), as one of
two kinds: `TaskFolderArchive` (one archive holding a folder per task: VTAB-1k's NOAH dump) or `SplitFilesAndImages`
(one archive of split files plus each dataset's images: FGVC). This module does the rest, the same way for both:

- **Downloads resume.** Bytes go to `<data root>/.bench-downloads/<checksum>-<name>.part`; a fetch that stopped (Ctrl-C,
  a dropped connection, a killed job) continues from there with an HTTP range request. Hub files are located with
  `huggingface_hub` (`HF_ENDPOINT`, `HF_TOKEN` and `HF_HUB_OFFLINE` apply) and read with its resumable `http_get`.
- **Verified before use.** A hub file is checked against the hub's own checksum (its ETag: the sha256 of an LFS file,
  the git blob sha1 of a small one), a web file against its publisher's MD5. A file that fails is deleted and nothing
  is unpacked.
- **Archives are untrusted input.** Every entry is checked before anything is written (`safe_unpack`): an absolute
  path, a `..`, a link pointing outside, or a device file refuses the whole archive with one line.
- **Nothing half-made, nothing overwritten.** Archives unpack into a hidden folder inside the data root, and each
  task's folder is renamed into place whole, so an interrupted fetch leaves no task folder `bench` would find. A task
  `bench` already finds (in any layout), or whose folder exists, is left untouched and reported.

The CLI then runs `bench data check` on what was placed and writes each placed task's fingerprint in its folder
(`bench-fingerprint.json`), so two users can compare their data.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Protocol
from urllib.parse import urlsplit

from bench import BenchError, __version__, fingerprint
from bench.data import TASKS
from bench.datacheck import DEFAULT_JOBS, OnImage, TaskCheck, check_source
from bench.layouts import DataSource, PathLog, data_root_or_env
from bench.registry import Registry

DOWNLOADS = ".bench-downloads"
STAGING = ".bench-unpack-"
PLACED, IN_PLACE, UNTOUCHED, MANUAL, MISSING, FAILED = (
    "placed", "in place", "left untouched", "manual step", "not in the archive", "failed")
OFFLINE = ("HF_HUB_OFFLINE is set, so nothing can be downloaded; on a machine with internet unset it "
           "(`env -u HF_HUB_OFFLINE bench data fetch ...`), or put the data in place by hand (docs/datasets.md)")


# --- what a family declares ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubFile:
    """A file of a dataset repository on the Hugging Face hub."""

    repo: str
    filename: str
    revision: str = "main"

    def describe(self) -> str:
        return f"{self.filename} of hub dataset {self.repo}"


@dataclass(frozen=True)
class WebFile:
    """A file on a plain web host, with the MD5 its publishers give."""

    url: str
    filename: str
    md5: str

    def describe(self) -> str:
        return f"{self.filename} from {urlsplit(self.url).netloc}"


@dataclass(frozen=True)
class Placement:
    """What a fetch did with one task.

    Attributes:
        task: the task.
        status: `placed`, `in place` (bench already finds it), `left untouched` (its folder exists but bench cannot
            use it: `bench data check` says why), `manual step` (split files placed; the images need a person),
            `not in the archive` or `failed`.
        folder: the task's folder, when there is one.
        note: the detail, one line (for a manual step: what to do).
        source: where the placed data came from, written into the fingerprint file.
    """

    task: str
    status: str
    folder: Path | None = None
    note: str = ""
    source: dict[str, str] = field(default_factory=dict)


class Fetch(Protocol):
    """A family's data source: the tasks it can place and how."""

    @property
    def tasks(self) -> tuple[str, ...]: ...

    def place(self, root: Path, tasks: list[str], downloads: "Downloads") -> list[Placement]:
        """Download, unpack and place `tasks` (none of which bench finds under `root` yet)."""
        ...


FETCHES: Registry[Fetch] = Registry("data source")


def register_fetch(name: str, fetch: Fetch, description: str) -> Fetch:
    return FETCHES.register(name, fetch, description)


# --- downloads ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checksum:
    kind: str  # sha256, md5 or git-sha1 (the hub's ETag of a file kept in git rather than LFS)
    value: str

    def of(self, path: Path) -> str:
        digest = hashlib.new("sha1" if self.kind == "git-sha1" else self.kind)
        if self.kind == "git-sha1":
            digest.update(f"blob {path.stat().st_size}\0".encode())
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()


class Downloads:
    """Verified downloads kept under `<root>/.bench-downloads/` until they are unpacked.

    Args:
        root: the data root.
        endpoint: the hub's address; None: `huggingface_hub`'s (`HF_ENDPOINT`, else huggingface.co).
    """

    def __init__(self, root: Path, endpoint: str | None = None) -> None:
        self.folder = root / DOWNLOADS
        self.endpoint = endpoint

    def get(self, source: HubFile | WebFile) -> tuple[Path, Checksum]:
        """The verified file, downloaded or resumed from a partial download; a file that fails its checksum is
        deleted and raises."""
        from huggingface_hub.file_download import http_get

        url, checksum, size = self._locate(source)
        final = self.folder / f"{checksum.value[:16]}-{source.filename}"
        if final.is_file():  # verified when it was renamed here
            return final, checksum
        part = final.with_name(final.name + ".part")
        self.folder.mkdir(parents=True, exist_ok=True)
        have = part.stat().st_size if part.is_file() else 0
        if size is not None and have > size:  # not this file's bytes
            part.unlink()
            have = 0
        if size is not None:
            ensure_space(self.folder, size - have, source.describe())
        with _network(source.describe(), url), part.open("ab") as fh:
            http_get(url, fh, resume_size=have, expected_size=size, displayed_filename=source.filename)
        got = checksum.of(part)
        if got != checksum.value:
            part.unlink()
            raise BenchError(f"{source.describe()} failed its checksum ({checksum.kind} {got}, expected "
                             f"{checksum.value}); the download was deleted and nothing was unpacked; run the fetch "
                             f"again, and report it if it fails again")
        os.replace(part, final)
        return final, checksum

    def unpack(self, path: Path, dest: Path) -> None:
        """`safe_unpack`; an archive it refuses is deleted: it is hostile or broken, and a rerun must not reuse it."""
        try:
            safe_unpack(path, dest)
        except ArchiveRefused:
            self.discard(path)
            raise

    def discard(self, path: Path) -> None:
        """Delete a download once it is unpacked; the downloads folder goes when it is empty."""
        path.unlink(missing_ok=True)
        self.close()

    def close(self) -> None:
        if self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()

    def _locate(self, source: HubFile | WebFile) -> tuple[str, Checksum, int | None]:
        """Where to download from, the checksum to verify, and the size when the source says it."""
        if isinstance(source, WebFile):
            return source.url, Checksum("md5", source.md5.lower()), None
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        url = hf_hub_url(source.repo, source.filename, repo_type="dataset", revision=source.revision,
                         endpoint=self.endpoint)
        with _network(source.describe(), url):
            meta = get_hf_file_metadata(url, endpoint=self.endpoint)
        etag = (meta.etag or "").lower()
        if re.fullmatch(r"[0-9a-f]{64}", etag):
            checksum = Checksum("sha256", etag)
        elif re.fullmatch(r"[0-9a-f]{40}", etag):
            checksum = Checksum("git-sha1", etag)
        else:
            raise BenchError(f"{url} gave no checksum to verify the download against (ETag {meta.etag!r}); is "
                             f"HF_ENDPOINT a Hugging Face hub?")
        return meta.location, checksum, meta.size


@contextmanager
def _network(what: str, url: str) -> Iterator[None]:
    """Network failures as one line each: what failed, and that running the fetch again resumes it."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    host = urlsplit(url).netloc
    try:
        yield
    except OfflineModeIsEnabled:
        raise BenchError(OFFLINE) from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "error"
        raise BenchError(f"{what}: {host} answered HTTP {status} for {url}; nothing was unpacked; run the fetch "
                         f"again later (a partial download resumes)") from None
    except httpx2.HTTPError as exc:
        raise BenchError(f"cannot download {what}: no connection to {host} ({type(exc).__name__}: {exc}); check the "
                         f"network or proxy (HTTPS_PROXY), then run the fetch again: it resumes") from None
    except OSError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BenchError(f"download of {what} stopped ({reason}); run the fetch again: it resumes") from None


def ensure_space(folder: Path, need: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if need > free:
        raise BenchError(f"{what} needs {need / 1e9:.1f} GB under {folder}, which has {free / 1e9:.1f} GB free; "
                         f"free some space or pass another --data-root")


# --- archives ----------------------------------------------------------------------------------------------------


class ArchiveRefused(BenchError):
    """An archive with an entry that would land outside its target, or that is no archive at all."""


def safe_unpack(archive: Path, dest: Path) -> None:
    """Unpack a zip or tar archive into the new folder `dest`, after checking every entry.

    An entry with an absolute path or a `..`, a symbolic or hard link that points outside `dest` (and any link in a
    zip, where the format cannot say what it is), or a device or pipe refuses the whole archive: a one-line error
    naming the entry (`ArchiveRefused`), raised before `dest` is created.
    """
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
                for info in infos:
                    _refuse_if(archive, info.filename, _name_problem(info.filename) or (
                        "is a symbolic link (links in a zip are not unpacked)"
                        if stat.S_ISLNK(info.external_attr >> 16) else None))
                ensure_space(dest.parent, sum(info.file_size for info in infos), f"unpacking {archive.name}")
                dest.mkdir()
                zf.extractall(dest)
            return
        if tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                for member in members:
                    _refuse_if(archive, member.name, _name_problem(member.name) or _tar_problem(member))
                ensure_space(dest.parent, sum(m.size for m in members), f"unpacking {archive.name}")
                dest.mkdir()
                # Python's own "data" filter where it has one (3.10.12+): a second guard behind the checks above.
                tf.extractall(dest, members=members,
                              **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
            return
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
        shutil.rmtree(dest, ignore_errors=True)  # ours: created above, and half-filled
        raise ArchiveRefused(f"{archive.name} is damaged ({exc}); nothing was placed") from None
    raise ArchiveRefused(f"{archive.name} is neither a zip nor a tar archive; nothing was unpacked")


def _refuse_if(archive: Path, name: str, problem: str | None) -> None:
    if problem:
        raise ArchiveRefused(f"{archive.name} refused: entry {name!r} {problem}; nothing was unpacked")


def _name_problem(name: str) -> str | None:
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        return "is an absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "climbs out of the target folder with '..'"
    return None


def _tar_problem(member: tarfile.TarInfo) -> str | None:
    if member.issym() or member.islnk():
        # A symbolic link resolves from its own folder, a hard link from the archive's top.
        start = posixpath.dirname(member.name) if member.issym() else ""
        target = posixpath.normpath(posixpath.join(start, member.linkname))
        kind = "symbolic" if member.issym() else "hard"
        if member.linkname.startswith("/") or target == ".." or target.startswith("../"):
            return f"is a {kind} link to {member.linkname!r}, outside the target folder"
        return None
    if not (member.isfile() or member.isdir()):
        return "is a device, pipe or other special file"
    return None


@contextmanager
def staging(root: Path) -> Iterator[Path]:
    """A hidden folder inside the data root (so renames out of it are atomic), removed however the block ends."""
    stage = Path(tempfile.mkdtemp(prefix=STAGING, dir=root))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _rename_into_place(source: Path, target: Path) -> bool:
    """Move a finished folder into place unless something is already there; True when moved."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        return False
    try:
        os.rename(source, target)  # refuses a non-empty folder already at target
    except OSError:
        return False
    return True


# --- the two kinds of source ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskFolderArchive:
    """One archive holding a folder per task, somewhere inside it (NOAH's `vtab-1k/<task>/` dump); each task's folder
    is placed as `<root>/<family_folder>/<its name in the archive>`.

    Attributes:
        archive: the archive.
        family_folder: the folder the task folders go into.
        folders: task -> the names its folder may have in the archive (matched ignoring case, `-` and `_`).
    """

    archive: HubFile
    family_folder: str
    folders: dict[str, tuple[str, ...]]

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.folders)

    def place(self, root: Path, tasks: list[str], downloads: Downloads) -> list[Placement]:
        path, checksum = downloads.get(self.archive)
        source = {"file": self.archive.describe(), checksum.kind: checksum.value}
        placements = []
        with staging(root) as stage:
            downloads.unpack(path, stage / "unpacked")
            found = self._task_folders(stage / "unpacked")
            family = root / self.family_folder
            for task in tasks:
                folder = found.get(task)
                if folder is None:
                    placements.append(Placement(task, MISSING, note=f"no folder {'/'.join(self.folders[task])} in "
                                                                   f"{self.archive.filename}"))
                    continue
                existing = PathLog().dir(family, [folder.name])
                if existing is not None or not _rename_into_place(folder, family / folder.name):
                    placements.append(Placement(task, UNTOUCHED, existing or family / folder.name))
                    continue
                placements.append(Placement(task, PLACED, family / folder.name, source=source))
        downloads.discard(path)
        return placements

    def _task_folders(self, unpacked: Path) -> dict[str, Path]:
        """Task -> its folder, under whichever folder of the archive (up to two levels down) holds the most."""
        parents = [unpacked, *[d for d in unpacked.glob("*") if d.is_dir()],
                   *[d for d in unpacked.glob("*/*") if d.is_dir()]]
        best: dict[str, Path] = {}
        for parent in parents:
            found = {task: hits[0] for task, names in self.folders.items() if (hits := PathLog().dirs(parent, names))}
            if len(found) > len(best):
                best = found
        return best


@dataclass(frozen=True)
class ImageArchive:
    """A dataset's official image archive.

    Attributes:
        file: the archive.
        member: the folder inside it that holds the images.
        place: that folder's name inside the dataset's folder (where the split files expect it).
    """

    file: WebFile
    member: str
    place: str


@dataclass(frozen=True)
class ManualImages:
    """Images a person must fetch (a login, a form, an agreement).

    Attributes:
        page: where to get them.
        why: what the host asks for.
        place: their folder inside the dataset's folder ("" for the folder itself).
    """

    page: str
    why: str
    place: str = ""


@dataclass(frozen=True)
class SplitDataset:
    """One dataset of a `SplitFilesAndImages` source.

    Attributes:
        folders: the dataset folder's names the family's finder knows; it is placed as the first.
        classes: its class count, which identifies its split files in the archive whatever their folder is called.
        images: where its images come from.
    """

    folders: tuple[str, ...]
    classes: int
    images: ImageArchive | ManualImages


SPLIT_FILES = ("train.json", "val.json", "test.json")


@dataclass(frozen=True)
class SplitFilesAndImages:
    """Split files of several datasets in one archive (VPT's `{train,val,test}.json`, `{image path: class id}`, one
    folder per dataset), and each dataset's images: its official archive where the host allows a direct download,
    else the split files are placed and the manual step is reported."""

    splits: HubFile
    datasets: dict[str, SplitDataset]

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.datasets)

    def place(self, root: Path, tasks: list[str], downloads: Downloads) -> list[Placement]:
        path, checksum = downloads.get(self.splits)
        placements = []
        with staging(root) as stage:
            downloads.unpack(path, stage / "splits")
            found = self._split_folders(stage / "splits")
            for task in tasks:
                dataset = self.datasets[task]
                folder = found.get(task)
                if folder is None:
                    placements.append(Placement(task, MISSING, note=f"no split files named {dataset.folders[0]} or "
                                                                   f"with {dataset.classes} classes"))
                    continue
                source = {"splits": self.splits.describe(), checksum.kind: checksum.value}
                placements.append(self._place_one(root, stage, task, dataset, folder, source, downloads))
        downloads.discard(path)
        return placements

    def _place_one(self, root: Path, stage: Path, task: str, dataset: SplitDataset, splits: Path,
                   source: dict[str, str], downloads: Downloads) -> Placement:
        existing = PathLog().dir(root, dataset.folders)
        if existing is not None:
            return Placement(task, UNTOUCHED, existing)
        composed = stage / dataset.folders[0]
        composed.mkdir()
        for name in SPLIT_FILES:
            if (splits / name).is_file():
                os.rename(splits / name, composed / name)
        target = root / dataset.folders[0]
        images = dataset.images
        if isinstance(images, ManualImages):
            first = next(iter(json.loads((composed / "train.json").read_text())), "")
            where = target / images.place / first if images.place else target / first
            if not _rename_into_place(composed, target):
                return Placement(task, UNTOUCHED, target)
            return Placement(task, MANUAL, target, source=source, note=(
                f"split files placed; the images need {images.why}: get them from {images.page} and put them "
                f"so that {where} exists, then run `bench data check --tasks {task}`"))
        archive, checksum = downloads.get(images.file)
        unpacked = stage / f"{task}-images"
        downloads.unpack(archive, unpacked)
        if not (unpacked / images.member).is_dir():
            downloads.discard(archive)
            return Placement(task, FAILED, note=f"{images.file.filename} has no folder {images.member}")
        os.rename(unpacked / images.member, composed / images.place)
        source = {**source, "images": images.file.describe(), checksum.kind: checksum.value}
        try:  # the family's own finder must detect the result before it goes where runs would read it
            TASKS.get(task).load.locate(stage)
        except BenchError as exc:
            return Placement(task, FAILED, note=f"the split files do not match the images ({exc})")
        if not _rename_into_place(composed, target):
            return Placement(task, UNTOUCHED, target)
        downloads.discard(archive)
        return Placement(task, PLACED, target, source=source)

    def _split_folders(self, unpacked: Path) -> dict[str, Path]:
        """Task -> its folder of split files: by the folder's name (matched as the family's finder matches it), else
        by its class count (the releases name folders differently: VPT's `OxfordFlower`; the five counts differ)."""
        found: dict[str, Path] = {}
        for train in sorted(unpacked.rglob("train.json")):
            folder = train.parent
            named = [task for task, d in self.datasets.items() if PathLog().dir(folder.parent, d.folders) == folder]
            ids: set[Any] = set()
            for name in SPLIT_FILES:
                try:
                    mapping = json.loads((folder / name).read_text())
                except (OSError, ValueError):
                    continue  # absent or not JSON: the family's finder reports it when it reads the folder
                ids.update(mapping.values() if isinstance(mapping, dict) else [])
            counted = [task for task, d in self.datasets.items() if d.classes == len(ids)]
            for task in named or counted:
                found.setdefault(task, folder)
        return found


# --- the fetch -------------------------------------------------------------------------------------------------------


def resolve_fetch_root(data_root: Path | None) -> Path:
    """The data root to fetch into (created when missing): `data_root`, else `$BENCH_DATA`."""
    data_root = data_root_or_env(data_root, "no folder to put the data in")
    try:
        data_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"cannot create data root {data_root}: {exc.strerror}; pass another --data-root") from None
    return data_root


def fetch(name: str, root: Path, tasks: list[str] | None = None, endpoint: str | None = None) -> list[Placement]:
    """Place the tasks of data source `name` under `root` that bench does not find there yet.

    Args:
        name: a registered data source (`vtab-1k`, `fgvc`).
        root: the data root; it must exist.
        tasks: a subset of the source's tasks; None for all.
        endpoint: the hub's address; None: `huggingface_hub`'s (`HF_ENDPOINT`).
    """
    from huggingface_hub import is_offline_mode

    source = FETCHES.get(name)
    chosen = tasks or list(source.tasks)
    unknown = [task for task in chosen if task not in source.tasks]
    if unknown:
        raise BenchError(f"{name} has no task {', '.join(unknown)}; its tasks: {', '.join(source.tasks)}")
    placements = [Placement(task, IN_PLACE, Path(found.folder), note=found.layout)
                  for task in chosen if (found := _located(task, root)) is not None]
    wanted = [task for task in chosen if task not in {p.task for p in placements}]
    if not wanted:
        return placements
    if is_offline_mode():
        raise BenchError(OFFLINE)
    for stale in root.glob(f"{STAGING}*"):  # left by a fetch that was killed mid-unpack
        shutil.rmtree(stale, ignore_errors=True)
    downloads = Downloads(root, endpoint)
    try:
        placed = {p.task: p for p in source.place(root, wanted, downloads)}
    finally:
        downloads.close()
    return placements + [placed[task] for task in wanted]


def _located(task: str, root: Path) -> Any:
    load = TASKS.get(task).load
    if not isinstance(load, DataSource):
        return None
    try:
        return load.locate(root)
    except BenchError:
        return None


def check_placed(placements: list[Placement], root: Path, jobs: int = DEFAULT_JOBS,
                 on_image: OnImage | None = None) -> list[TaskCheck]:
    """`bench data check` on each placed task, and its fingerprints (cheap and deep) written in its folder."""
    checks = []
    for placement in placements:
        if placement.status != PLACED or placement.folder is None:
            continue
        check = check_source(TASKS.get(placement.task).load, root, jobs, on_image)
        fingerprint.write_file(placement.folder, {
            "task": placement.task,
            "layout": check.layout,
            "fingerprint": check.fingerprint.to_info() if check.fingerprint is not None else None,
            "deep": check.deep.to_info() if check.deep is not None else None,
            "fetched": {**placement.source, "bench": __version__,
                        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d")},
        })
        checks.append(check)
    return checks


def summary_line(placement: Placement) -> str:
    where = f" {placement.folder}" if placement.folder else ""
    return f"{placement.task}: {placement.status}{where}" + (f" ({placement.note})" if placement.note else "")
