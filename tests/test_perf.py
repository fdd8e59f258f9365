"""`bench perf`'s verdicts: a figure passes, passes within noise or fails against its target, and the command exits 1
when one fails. The measurements themselves take minutes (their fast paths are checked for correctness in
tests/test_perf_paths.py), so the verdicts are checked on figures made here with chosen ratios."""

from __future__ import annotations

import json

import pytest

from bench.perf import NOISE_MARGIN, Figure, exit_status


def _figure(name: str, ratio: float | None, limit: float | None, higher: bool = False) -> Figure:
    return Figure(name, f"{ratio}", ratio, "target", limit, higher)


# Lower is better with a limit of 1.10, so the noise margin reaches 1.21; higher is better with 2.0, down to 1.8.
VERDICTS = [
    (_figure("meets", 1.05, 1.10), "pass"),
    (_figure("at the limit", 1.10, 1.10), "pass"),
    (_figure("within noise", 1.20, 1.10), "pass (noise)"),
    (_figure("beyond noise", 1.22, 1.10), "fail"),
    (_figure("higher, meets", 2.5, 2.0, higher=True), "pass"),
    (_figure("higher, within noise", 1.85, 2.0, higher=True), "pass (noise)"),
    (_figure("higher, beyond noise", 1.79, 2.0, higher=True), "fail"),
    (_figure("describes", 0.5, None), "info"),
    (_figure("not measured", None, 1.10), "info"),
]


@pytest.mark.parametrize("figure, status", VERDICTS, ids=[f.name for f, _ in VERDICTS])
def test_a_figure_passes_within_the_noise_margin_of_its_target_and_fails_beyond_it(figure: Figure, status: str):
    assert NOISE_MARGIN == 0.10
    assert figure.status == status
    assert figure.to_dict()["status"] == status


def test_the_exit_status_is_1_exactly_when_some_figure_fails():
    passing = [figure for figure, status in VERDICTS if status != "fail"]
    assert exit_status(passing) == 0
    assert exit_status([]) == 0
    for failing in (figure for figure, status in VERDICTS if status == "fail"):
        assert exit_status([*passing, failing]) == 1


@pytest.mark.parametrize("missed", [False, True])
def test_bench_perf_exits_1_when_a_target_is_missed_and_records_every_figure(tmp_path, monkeypatch, capsys, missed):
    import bench.perf
    from bench.cli import main

    figures = [_figure("within noise", 1.20, 1.10), _figure("describes", 0.5, None)]
    if missed:
        figures.append(_figure("beyond noise", 1.22, 1.10))
    # The measurement is replaced (it takes minutes); the command's table, JSON and exit status are its own.
    monkeypatch.setattr(bench.perf, "run_perf", lambda backbone, quick, progress, device: figures)
    out = tmp_path / "perf.json"
    assert main(["perf", "--backbone", "micro-vit", "--device", "cpu", "--quick", "--out", str(out)]) == int(missed)
    written = json.loads(out.read_text())
    assert [(f["name"], f["status"]) for f in written["figures"]] == [(f.name, f.status) for f in figures]
    assert (written["backbone"], written["quick"], written["noise_margin"]) == ("micro-vit", True, NOISE_MARGIN)
    assert ("fail" in capsys.readouterr().out) == missed
