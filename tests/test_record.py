"""The typed run record: every committed record round-trips exactly, old layouts load, and bad input is named."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from bench import BenchError
from bench.config import RunSpec
from bench.record import (
    COLUMNS, FIELDS_MARKER, SCHEMA_VERSION, CpuShare, RecordError, RunRecord, hp_column, schema_markdown,
)
from bench.store import Store
from records import make_record

COMMITTED = sorted(Path(__file__).parent.parent.glob("results/*/runs/*.json"))


def test_the_repository_ships_records_to_check_against():
    assert len(COMMITTED) > 100


@pytest.mark.parametrize("store", sorted({p.parent.parent.name for p in COMMITTED}))
def test_every_committed_record_round_trips_exactly_but_for_its_schema_version(store: str):
    for path in sorted(Path(__file__).parent.parent.glob(f"results/{store}/runs/*.json")):
        stored = json.loads(path.read_text())
        # Written before the schema was typed (layout version 1, no version field), or by the current schema.
        assert stored.get("schema_version", SCHEMA_VERSION) == SCHEMA_VERSION, path.name
        record = RunRecord.from_dict(stored)
        assert record.id == path.stem == record.spec.run_id
        assert record.to_dict() == {**stored, "schema_version": SCHEMA_VERSION}, path.name


def test_a_failed_record_round_trips_and_holds_only_what_a_failure_has():
    spec = RunSpec("linear", "digits", "micro-vit", 0, {"lr": 0.1})
    failed = RunRecord.failed(spec, "NonFiniteLoss: training loss became nan in epoch 1", "Traceback ...")
    data = failed.to_dict()
    assert set(data) == {"id", "spec", "status", "schema_version", "error", "traceback"}
    assert data["id"] == spec.run_id and data["status"] == "failed"
    assert RunRecord.from_dict(json.loads(json.dumps(data))) == failed
    assert failed.test_acc is None and failed.val_acc is None and not failed.done


def test_a_done_record_without_cpu_share_omits_it_and_one_with_it_writes_it():
    spec = RunSpec("linear", "digits", "micro-vit", 0, {})
    assert "cpu_share" not in make_record(spec, 50.0).to_dict()
    measured = make_record(spec, 50.0, cpu_share=CpuShare(build=0.9, train=None)).to_dict()
    assert measured["cpu_share"] == {"build": 0.9, "train": None}


@pytest.mark.parametrize("data, named", [
    ([1, 2], "no id, status, spec"),
    ({"id": "x", "status": "done", "spec": {}}, "no metrics"),
    ({"id": "x", "status": "done", "spec": {"method": "m"}, "metrics": {}}, "not a RunSpec"),
    ({"id": "x", "status": "done", "spec": {}, "metrics": {}, "schema_version": 0}, "not a positive integer"),
])
def test_what_is_not_a_record_is_named(data, named):
    with pytest.raises(RecordError, match=named):
        RunRecord.from_dict(data)


def test_a_record_from_a_newer_bench_is_an_error_to_upgrade_not_a_corrupt_file(tmp_path):
    spec = RunSpec("linear", "digits", "micro-vit", 0, {})
    store = Store(tmp_path)
    path = store.write(make_record(spec, 50.0))
    path.write_text(json.dumps({**json.loads(path.read_text()), "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(BenchError, match="upgrade bench"):
        store.read(spec.run_id)
    assert path.exists() and store.set_aside == []


def test_row_columns_are_the_schema_names_and_hold_the_record_values():
    spec = RunSpec("vpt-deep", "digits", "micro-vit", 3, {"lr": 0.01, "num_prompts": 5}, stage="final")
    record = make_record(spec, 71.5, 70.0, learnable_pct=0.25)
    row = record.row()
    assert row[COLUMNS.metrics.test_acc] == 71.5 and row[COLUMNS.metrics.val_acc] == 70.0
    assert COLUMNS.metrics.test_acc == "test_acc"  # the headline columns carry no prefix
    assert row[COLUMNS.params.learnable_pct] == 0.25 and COLUMNS.params.learnable_pct == "params.learnable_pct"
    assert row[COLUMNS.wallclock.train] == record.wallclock.train
    assert row[hp_column("num_prompts")] == 5 and row[COLUMNS.seed] == 3 and row[COLUMNS.stage] == "final"
    assert row[COLUMNS.group] == "micro/real"
    assert not any(column.startswith("cpu_share.") for column in row)  # a section the record lacks adds no column
    with pytest.raises(AttributeError):
        COLUMNS.params.learnable_percent  # noqa: B018  (a misspelt field fails where it is read)
    failed = RunRecord.failed(spec, "boom").row()
    assert failed[COLUMNS.error] == "boom" and COLUMNS.metrics.test_acc not in failed


def test_records_are_frozen_values():
    record = make_record(RunSpec("linear", "digits", "micro-vit", 0, {}), 50.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.status = "failed"  # type: ignore[misc]


def test_the_records_page_lists_the_schema_as_it_is():
    page = (Path(__file__).parent.parent / "docs" / "records.md").read_text()
    _, marker, generated = page.partition(FIELDS_MARKER)
    assert marker, f"docs/records.md lost its {FIELDS_MARKER!r} line"
    assert generated.strip() == schema_markdown().strip(), \
        "docs/records.md is stale: run `python -m bench.record docs/records.md`"
    for name in ("metrics", "params", "wallclock", "provenance", "schema_version", "data_path"):
        assert f"`{name}`" in generated
