"""Data fingerprints: what changes them, what does not, where runs record them, and the report's warning lines."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import data_fixtures as fx
from records import make_record

from bench import fingerprint
from bench.config import RunSpec
from bench.data import TASKS
from bench.datacheck import WARNING, check_source, check_tasks
from bench.fingerprint import Fingerprint, mixed_fingerprint_warnings, of_files
from bench.record import TaskInfo
from bench.report import build_report
from bench.store import Store

MICRO = ("digits", "mnist5k", "sprites-loc", "sprites-ori", "shapes-count")


def _pets(root: Path) -> dict:
    return TASKS.get("pets").load(root).info["fingerprint"]


def test_a_file_task_records_a_fingerprint_that_moving_the_data_root_does_not_change(tmp_path):
    fx.vtab_noah(tmp_path / "a", folder="oxford_iiit_pet")
    first = _pets(tmp_path / "a")
    shutil.move(tmp_path / "a", tmp_path / "b")
    assert _pets(tmp_path / "b") == first
    assert first["of"] == fingerprint.FILES and set(first["splits"]) == {"train", "val", "test"}


def test_the_fingerprint_ignores_list_order_but_not_a_label_a_size_or_a_missing_file(tmp_path):
    task = fx.vtab_noah(tmp_path, folder="oxford_iiit_pet")
    before = _pets(tmp_path)
    test_list = task / "test.txt"
    lines = test_list.read_text().splitlines()
    test_list.write_text("\n".join(reversed(lines)) + "\n")
    assert _pets(tmp_path) == before

    assert lines[0].endswith(" 0")
    test_list.write_text("\n".join([lines[0][:-1] + "2", *lines[1:]]) + "\n")
    after = _pets(tmp_path)
    assert after["digest"] != before["digest"]
    assert [s for s in after["splits"] if after["splits"][s] != before["splits"][s]] == ["test"]

    test_list.write_text("\n".join(lines) + "\n")
    image = task / lines[0].rsplit(" ", 1)[0]
    image.write_bytes(image.read_bytes() + b"\0")  # one byte more
    assert _pets(tmp_path)["splits"]["test"] != before["splits"]["test"]


def test_deep_adds_the_content_a_same_size_edit_changes(tmp_path):
    task = fx.vtab_noah(tmp_path, folder="oxford_iiit_pet")
    splits = TASKS.get("pets").load.locate(tmp_path).splits
    cheap, deep = of_files(splits), of_files(splits, deep=True)
    image = task / "images" / "test" / "000000.jpg"
    data = bytearray(image.read_bytes())
    data[-3] ^= 0xFF
    image.write_bytes(bytes(data))
    assert of_files(splits) == cheap
    assert of_files(splits, deep=True).differing(deep) == ["test"]


def test_every_micro_task_records_a_fingerprint_of_its_tensors():
    prints = {name: TASKS.get(name).load(None).info["fingerprint"] for name in MICRO}
    assert all(p["of"] == fingerprint.TENSORS for p in prints.values())
    assert len({p["digest"] for p in prints.values()}) == len(MICRO)
    data = TASKS.get("digits").load(None)
    flipped = {"train": data.train, "val": data.val,
               "test": dataclasses.replace(data.test, labels=(data.test.labels + 1) % 10)}
    assert fingerprint.of_tensors(flipped).differing(Fingerprint.from_info(prints["digits"])) == ["test"]


def _run(task: str, seed: int, digest_source: str | None):
    record = make_record(RunSpec("linear", task, "micro-vit", seed, {}), 50.0)
    data = {"source": "test"}
    if digest_source is not None:
        data["fingerprint"] = Fingerprint(fingerprint.FILES, {"train": digest_source}).to_info()
    return dataclasses.replace(record, task=TaskInfo(task, "vtab/natural", 37, data))


def test_the_report_warns_once_per_task_whose_runs_read_different_data():
    jpeg, tfds = (Fingerprint(fingerprint.FILES, {"train": s}) for s in ("jpeg", "tfds"))
    runs = [_run("pets", 0, "jpeg"), _run("pets", 1, "jpeg"), _run("pets", 2, "tfds"), _run("pets", 3, None),
            _run("dtd", 0, "jpeg"), _run("dtd", 1, None)]
    (line,) = mixed_fingerprint_warnings(runs)
    assert line.startswith("warning: pets mixes runs on different data")
    assert f"{jpeg.short} (2 runs), {tfds.short} (1 run)" in line and "1 run(s) without a fingerprint" in line
    assert fingerprint.fingerprint_summary(runs) == f"data fingerprints: dtd {jpeg.short}, pets {jpeg.short}/{tfds.short}"


def test_committed_records_have_no_fingerprint_and_give_no_line():
    records = Store("results/micro-study").records()
    assert records and all(fingerprint.recorded(r.task.data) is None for r in records if r.task is not None)
    assert mixed_fingerprint_warnings(records) == [] and fingerprint.fingerprint_summary(records) is None


def test_data_check_prints_fingerprints_and_says_when_data_changed_since_it_was_fetched(tmp_path):
    task = fx.vtab_noah(tmp_path, folder="oxford_iiit_pet")
    source = TASKS.get("pets").load
    check = check_source(source, tmp_path, jobs=1)
    assert check.fingerprint.to_info() == _pets(tmp_path)
    assert check.deep.of == fingerprint.FILES_DEEP
    fingerprint.write_file(task, {"fingerprint": check.fingerprint.to_info(), "deep": check.deep.to_info()})
    assert any("same data as fetched" in f.text for f in check_source(source, tmp_path, jobs=1).findings)

    image = task / "images" / "train800" / "000000.jpg"
    data = bytearray(image.read_bytes())
    data[-3] ^= 0xFF  # same size: only the deep fingerprint sees it
    image.write_bytes(bytes(data))
    changed = [f for f in check_source(source, tmp_path, jobs=1).findings if f.level == WARNING]
    assert any("data changed since it was fetched: the train split(s) differ" in f.text for f in changed)
    (built,) = check_tasks(["digits"], None)
    assert built.fingerprint.to_info() == TASKS.get("digits").load(None).info["fingerprint"]
    assert json.loads((task / fingerprint.FILE).read_text())["fingerprint"]["digest"] == check.fingerprint.digest


def test_bench_report_names_the_data_and_warns_when_a_task_mixes_it(tmp_path):
    store = Store(tmp_path / "results")
    for run in (_run("pets", 0, "jpeg"), _run("pets", 1, "tfds")):
        store.write(run)
    report = build_report(tmp_path / "results", tmp_path / "report", ("md",))
    jpeg, tfds = (Fingerprint(fingerprint.FILES, {"train": s}).short for s in ("jpeg", "tfds"))
    assert any(n.startswith("warning: pets mixes runs on different data") for n in report.notes), report.notes
    assert f"data fingerprints: pets {jpeg}/{tfds}" in report.notes or \
        f"data fingerprints: pets {tfds}/{jpeg}" in report.notes
