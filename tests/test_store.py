"""The results store: atomic JSON records, round trips, and one DataFrame row per record."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from bench.config import RunSpec
from bench.record import RunRecord
from bench.store import Store
from records import make_record


def _record(run_id: str, method: str = "vpt-deep", acc: float = 50.0) -> RunRecord:
    spec = RunSpec(method, "digits", "micro-vit", 0, {"lr": 0.01, "epochs": 1})
    return make_record(spec, acc - 1, acc, run_id=run_id, curves={"train_loss": [2.3, 2.1], "val_acc": [10.0, acc]})


def _leftovers(store: Store) -> list[str]:
    return [p.name for p in store.runs.iterdir() if p.suffix != ".json" or p.name.startswith(".")]


def test_store_write_round_trips_and_leaves_no_temporary_file(tmp_path):
    store = Store(tmp_path / "results")
    record = _record("abc123")
    path = store.write(record)
    assert path == store.path("abc123") and path.parent == tmp_path / "results" / "runs"
    assert store.read("abc123") == record
    assert json.loads(path.read_text()) == record.to_dict()
    assert store.is_done("abc123") and not store.is_done("missing")
    assert store.read("missing") is None
    assert _leftovers(store) == []


def test_store_failed_write_keeps_previous_record_and_no_temporary_file(tmp_path):
    store = Store(tmp_path)
    store.write(_record("abc123", acc=50.0))
    broken = _record("abc123", acc=math.nan)  # not valid JSON: the write must fail as a whole
    with pytest.raises(ValueError):
        store.write(broken)
    assert store.read("abc123").metrics.val_acc == 50.0
    assert _leftovers(store) == []


def test_store_overwrite_replaces_record(tmp_path):
    store = Store(tmp_path)
    store.write(_record("r1", acc=10.0))
    store.write(_record("r1", acc=20.0))
    assert store.read("r1").metrics.val_acc == 20.0
    assert len(list(store.runs.glob("*.json"))) == 1


def test_store_load_gives_one_row_per_record(tmp_path):
    store = Store(tmp_path)
    assert len(store.load()) == 0
    records = [_record(f"id{i}", method=m, acc=10.0 * i) for i, m in enumerate(["linear", "vpt-deep", "spt-deep"])]
    for r in records:
        store.write(r)
    frame = store.load()
    assert len(frame) == 3
    assert sorted(frame["id"]) == ["id0", "id1", "id2"]
    by_id = frame.set_index("id")
    for r in records:
        row = by_id.loc[r.id]
        assert row["method"] == r.spec.method
        assert row["status"] == "done"
        assert row["test_acc"] == r.metrics.test_acc


def test_unreadable_records_are_set_aside_with_one_warning_each_and_count_as_not_done(tmp_path):
    warnings: list[str] = []
    store = Store(tmp_path, warn=warnings.append)
    for run_id in ("good", "cut", "hand", "list"):
        store.write(_record(run_id))
    cut = store.path("cut").read_bytes()
    store.path("cut").write_bytes(cut[: len(cut) // 2])  # a partial copy, a full disk
    store.path("hand").write_bytes(b"\xff\xfe not text")  # a binary file under a record's name
    store.path("list").write_text("[1, 2]")  # valid JSON, but no record
    store.write(dataclasses.replace(_record("bare"), metrics=None))  # done, yet no metrics
    (store.runs / "notes.json").write_text("to do: rerun cub")

    assert [r.id for r in store.records()] == ["good"]
    assert sorted(p.name for p in store.runs.iterdir()) == [
        "bare.json.corrupt", "cut.json.corrupt", "good.json", "hand.json.corrupt", "list.json.corrupt",
        "notes.json.corrupt"]
    assert [p.name for p in store.set_aside] == [
        "bare.json.corrupt", "cut.json.corrupt", "hand.json.corrupt", "list.json.corrupt", "notes.json.corrupt"]
    assert len(warnings) == 5 and all("\n" not in w and "counts as not done" in w for w in warnings)
    assert "not a run record: no metrics" in warnings[0]
    assert str(store.path("cut")) in warnings[1] and "not valid JSON" in warnings[1]
    assert "not a run record: no id, status, spec" in warnings[3]
    assert store.read("cut") is None and not store.is_done("cut")
    assert store.path("cut").with_name("cut.json.corrupt").read_bytes() == cut[: len(cut) // 2]  # kept, not lost

    store.path("cut").write_text("{")  # broken again: the first copy set aside stays
    assert store.read("cut") is None
    assert (store.runs / "cut.json.corrupt.1").read_text() == "{"
