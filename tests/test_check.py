"""`bench check`: the CI regression check passes on its own baseline and fails when the baseline is out of reach."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import main
from bench.config import RunSpec
from bench.recipes import make_spec
from bench.record import RunRecord
from bench.scheduler import Grid
from bench.store import Store


def _baseline(path: Path, test_acc: float) -> None:
    spec = make_spec("linear", "digits", "micro-vit", 0, {"epochs": "1"})
    runs = [{"label": spec.label, "spec": spec.to_dict(), "test_acc": test_acc}]
    path.write_text(json.dumps({"note": "test", "runs": runs}))


@pytest.fixture(scope="module")
def reached(tmp_path_factory: pytest.TempPathFactory) -> float:
    """The accuracy the baseline's run really reaches, from one honest check."""
    folder = tmp_path_factory.mktemp("check")
    _baseline(folder / "baseline.json", 0.0)
    assert main(["check", "--baseline", str(folder / "baseline.json"), "--results", str(folder / "results")]) == 0
    (record,) = [RunRecord.from_dict(json.loads(p.read_text())) for p in (folder / "results" / "runs").glob("*.json")]
    return record.metrics.test_acc


def test_check_passes_when_the_run_reaches_its_baseline(tmp_path: Path, reached: float, capsys) -> None:
    _baseline(tmp_path / "baseline.json", reached)
    assert main(["check", "--baseline", str(tmp_path / "baseline.json"), "--tolerance", "0"]) == 0
    assert "no regression" in capsys.readouterr().out


def test_check_fails_when_a_baseline_entry_is_raised_above_what_the_run_reaches(
    tmp_path: Path, reached: float, capsys
) -> None:
    _baseline(tmp_path / "baseline.json", reached + 5.0)
    assert main(["check", "--baseline", str(tmp_path / "baseline.json"), "--tolerance", "3"]) == 1
    out = capsys.readouterr().out
    assert "regressed" in out and "1 of 1 run(s) regressed or failed" in out


def test_missing_or_malformed_baseline_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    assert main(["check", "--baseline", str(tmp_path / "absent.json")]) == 2
    (tmp_path / "bad.json").write_text('{"runs": [{"spec": {"method": "linear"}}]}')
    assert main(["check", "--baseline", str(tmp_path / "bad.json")]) == 2
    assert main(["check", "--tolerance", "-1"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("bench: error:") for line in lines)
    assert "bench check --update" in lines[0] and "negative" in lines[2]


def test_check_update_writes_a_baseline_of_the_default_subset_and_a_check_against_it_passes(
    tmp_path: Path, tiny_registered: tuple[str, str], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import bench.check

    backbone, task = tiny_registered
    # The default subset's shape (a linear probe and a prompt method under spt-paper) on the tiny backbone and task:
    # the real one trains twelve runs of the micro backbone for four epochs.
    subset = Grid(["linear", "vpt-deep"], [task], [backbone], [0], {"epochs": ["1"]}, recipe="spt-paper")
    monkeypatch.setattr(bench.check, "default_subset", lambda: subset)
    monkeypatch.setenv("COLUMNS", "250")  # rich wraps a long path at 80 columns when not on a terminal
    baseline = tmp_path / "baselines" / "check.json"
    assert main(["check", "--update", "--baseline", str(baseline), "--results", str(tmp_path / "made")]) == 0
    assert f"baseline written to {baseline}" in capsys.readouterr().out

    runs = json.loads(baseline.read_text())["runs"]
    specs = subset.fixed_specs()
    assert [RunSpec(**run["spec"]) for run in runs] == specs
    records = {record.id: record for record in Store(tmp_path / "made").records()}
    assert [run["test_acc"] for run in runs] == [records[spec.run_id].metrics.test_acc for spec in specs]
    assert all(record.status == "done" for record in records.values())

    # The check recomputes every run in a fresh folder; seeded, each reaches its baseline exactly.
    assert main(["check", "--baseline", str(baseline), "--tolerance", "0"]) == 0
    assert "no regression" in capsys.readouterr().out
