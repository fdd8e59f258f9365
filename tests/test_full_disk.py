"""A disk that refuses a write: `bench run` stops with one line (what, where, and that finished runs are kept), exit
status 2 and no traceback, and no temporary file stays behind. The writes fail for real: on a tmpfs mounted small and
filled (where the test may mount one), or under a file-size limit (RLIMIT_FSIZE), which refuses a write the same way.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import data_fixtures as fx
import pytest
import torch

from bench.atomic import WriteFailed
from bench.backbone import DEFAULT_BACKBONE
from bench.cache import TensorCache
from bench.config import RunSpec
from bench.decoded import DataPath, DecodeCache
from bench.scheduler import Execution, Grid, GridEvents, execute
from bench.store import Store
from bench.tasks.fgvc import TRANSFORMS
from records import make_record

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
# `bench` under a file-size limit of N bytes: a write past it fails with EFBIG (Python ignores SIGXFSZ).
LIMITED = ("import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_FSIZE, ({0}, {0})); "
           "runpy.run_module('bench.cli', run_name='__main__', alter_sys=True)")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, mounted for one test; skipped where mounting is not allowed (it needs root and
    CAP_SYS_ADMIN), where the file-size-limit variant still runs."""
    where = tmp_path / "small-disk"
    where.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)],
                                 capture_output=True, text=True, timeout=60)
    except OSError as exc:
        pytest.skip(f"cannot mount a tmpfs: no mount command ({exc})")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True, timeout=60)


def fill(disk: Path, leave: int = 0) -> None:
    """Write into one file until the filesystem refuses even a byte more, then free `leave` bytes of it."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        size = 1 << 20
        while size:
            try:
                os.write(fd, bytes(size))
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                size //= 2
        os.ftruncate(fd, os.fstat(fd).st_size - leave)
    finally:
        os.close(fd)


def temporaries(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.name.endswith(".tmp"))


def test_a_record_the_full_disk_refuses_is_one_error_and_the_finished_records_stay(small_disk: Path) -> None:
    store = Store(small_disk / "results")
    spec = RunSpec("linear", "digits", "micro-vit", 0, {})
    finished = store.write(make_record(spec, 50.0, run_id="finished"))
    before = finished.read_bytes()
    fill(small_disk)
    with pytest.raises(WriteFailed) as failed:
        store.write(make_record(spec, 51.0, run_id="next"))
    assert str(failed.value) == (
        f"cannot write the record of run next in {store.runs}: No space left on device; the records of finished runs "
        "are kept: free space there and rerun to resume")
    assert finished.read_bytes() == before and not store.path("next").exists()
    assert temporaries(small_disk) == []


def test_a_cache_entry_the_full_disk_refuses_is_one_error_and_leaves_no_temporary_file(small_disk: Path) -> None:
    fill(small_disk)
    cache = TensorCache(small_disk / "features")
    with pytest.raises(WriteFailed, match=f"a cache entry in {small_disk / 'features'}: No space left on device"):
        cache.get_or_compute("key", lambda: torch.zeros(4096))
    assert temporaries(small_disk) == [] and not list((small_disk / "features").glob("*.pt"))


def test_a_decoded_split_the_full_disk_refuses_is_one_error_not_a_crash(small_disk: Path, tmp_path: Path) -> None:
    """Room for the entry's files, not for its images (3 × 224² × 3 bytes): its memory map is allocated before it
    is written, since writing into a map the disk cannot back would end the process (this one) with SIGBUS."""
    paths = [fx.write_image(tmp_path / "images" / f"{i}.jpg") for i in range(3)]
    fill(small_disk, leave=64 * 1024)
    data_path = DataPath(DecodeCache(small_disk / "decoded"))
    with pytest.raises(WriteFailed, match=f"a decoded split in {small_disk / 'decoded'}: No space left on device"):
        data_path.get(paths, TRANSFORMS.eval, ["eval"], workers=0)
    assert temporaries(small_disk) == [] and not [p for p in (small_disk / "decoded").iterdir() if p.is_dir()]
    assert data_path.events == []


@pytest.mark.parametrize("refusal", ["full tmpfs", "file-size limit"])
def test_bench_run_on_a_disk_that_refuses_a_write_prints_one_line_and_keeps_finished_runs(
    refusal: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A finished vpt-deep run, then `bench run` adds a linear probe, whose first write (its features, to the
    results' cache) the disk refuses."""
    disk = request.getfixturevalue("small_disk") if refusal == "full tmpfs" else tmp_path
    results = disk / "results"
    finished = Grid(["vpt-deep"], ["digits"], [DEFAULT_BACKBONE], [0], {"epochs": ["1"]}).fixed_specs()
    (outcome,) = execute(finished, Execution(Store(results)), GridEvents()).outcomes
    assert outcome.status == "done", outcome.error
    records = {path: path.read_bytes() for path in (results / "runs").glob("*.json")}
    assert len(records) == 1

    args = ["run", "--methods", "vpt-deep,linear", "--tasks", "digits", "--epochs", "1", "--results", str(results)]
    if refusal == "full tmpfs":
        fill(disk)
        command, reason = [sys.executable, "-m", "bench.cli", *args], "No space left on device"
    else:
        # Under 16 KiB: the lock files (empty) are written, the digits features (~100 KiB) are not.
        command, reason = [sys.executable, "-c", LIMITED.format(16 * 1024), *args], "File too large"
    done = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900)

    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"bench: error: cannot write a cache entry in {results / 'cache' / 'features'}: {reason}; the records of "
        "finished runs are kept: free space there and rerun to resume"
    ]
    assert {path: path.read_bytes() for path in (results / "runs").glob("*.json")} == records, \
        "the finished run's record is intact, and the refused run is not recorded as failed"
    assert json.loads(next(iter(records.values())))["status"] == "done"
    assert temporaries(results) == []
