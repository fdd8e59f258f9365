"""`bench check`: the CI regression check passes on its own baseline and fails when the baseline is out of reach."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import main
from bench.recipes import make_spec
from bench.record import RunRecord


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
