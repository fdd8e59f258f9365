"""The results store: atomic JSON records, round trips, and one DataFrame row per record."""

from __future__ import annotations

import json
import math

import pytest

from bench.store import Store


def _record(run_id: str, method: str = "vpt-deep", acc: float = 50.0) -> dict:
    return {
        "id": run_id,
        "spec": {"method": method, "task": "digits", "backbone": "micro-vit", "seed": 0,
                 "hparams": {"lr": 0.01, "epochs": 1}, "weights": None},
        "status": "done",
        "task": {"name": "digits", "group": "micro/real"},
        "metrics": {"val_acc": acc, "test_acc": acc - 1},
        "params": {"learnable": 10},
        "wallclock": {"train": 1.5},
        "curves": {"train_loss": [2.3, 2.1], "val_acc": [10.0, acc]},
    }


def _leftovers(store: Store) -> list[str]:
    return [p.name for p in store.runs.iterdir() if p.suffix != ".json" or p.name.startswith(".")]


def test_store_write_round_trips_and_leaves_no_temporary_file(tmp_path):
    store = Store(tmp_path / "results")
    record = _record("abc123")
    path = store.write(record)
    assert path == store.path("abc123") and path.parent == tmp_path / "results" / "runs"
    assert store.read("abc123") == record
    assert json.loads(path.read_text()) == record
    assert store.is_done("abc123") and not store.is_done("missing")
    assert store.read("missing") is None
    assert _leftovers(store) == []


def test_store_failed_write_keeps_previous_record_and_no_temporary_file(tmp_path):
    store = Store(tmp_path)
    store.write(_record("abc123", acc=50.0))
    broken = _record("abc123", acc=math.nan)  # not valid JSON: the write must fail as a whole
    with pytest.raises(ValueError):
        store.write(broken)
    assert store.read("abc123")["metrics"]["val_acc"] == 50.0
    assert _leftovers(store) == []


def test_store_overwrite_replaces_record(tmp_path):
    store = Store(tmp_path)
    store.write(_record("r1", acc=10.0))
    store.write(_record("r1", acc=20.0))
    assert store.read("r1")["metrics"]["val_acc"] == 20.0
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
        row = by_id.loc[r["id"]]
        assert row["method"] == r["spec"]["method"]
        assert row["status"] == "done"
        assert row["test_acc"] == r["metrics"]["test_acc"]
