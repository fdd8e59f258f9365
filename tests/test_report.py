"""`bench report` on a handful of synthetic records written through the store, as the engine writes them."""

from __future__ import annotations

import dataclasses
import math
import shutil
import statistics
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from bench.config import RunSpec
from bench.report import (
    SHARED_CORES_BELOW, budget_table, build_report, compare, convergence_table, fig_init_ablation, init_ablation_stats,
    last_third_gain, load_runs, suite_table, suites, summary_table, to_latex, to_markdown, val_curves,
)
from bench.record import CpuShare, RunRecord
from bench.store import Store
from records import make_record

MICRO = next(s for s in suites() if s.key == "micro")
GROUPS = {"digits": "micro/real", "mnist5k": "micro/real", "sprites-loc": "micro/structured",
          "sprites-ori": "micro/structured", "shapes-count": "micro/structured"}


def record(method: str, task: str, seed: int, acc: float, hparams: dict[str, Any] | None = None,
           pct: float = 1.0, nmi: list[list[float]] | None = None, backbone: str = "micro-vit",
           backbone_params: int = 2_700_000, stage: str = "fixed",
           val_curve: list[float] | None = None) -> RunRecord:
    spec = RunSpec(method, task, backbone, seed, {"epochs": 10, **(hparams or {})}, stage=stage)
    curves: dict[str, Any] = {"train_loss": [1.0], "val_acc": [acc] if val_curve is None else val_curve}
    if nmi is not None:
        curves["nmi"] = nmi
    return make_record(spec, acc, group=GROUPS[task], curves=curves, learnable_pct=pct,
                       backbone_params=backbone_params)


@pytest.fixture
def results(tmp_path: Path) -> Path:
    store = Store(tmp_path / "results")
    rows = [
        # full: digits 80 (seeds 0,1 -> 80 ± ...), sprites-loc 50
        record("full", "digits", 0, 80.0, pct=100.0), record("full", "digits", 1, 82.0, pct=100.0),
        record("full", "sprites-loc", 0, 50.0, pct=100.0),
        # linear: no sprites-loc record -> a missing cell
        record("linear", "digits", 0, 70.0, pct=0.2),
        # two SPT variants that differ only in init: separate rows, never averaged together
        record("spt-deep", "digits", 0, 85.0, {"init": "kmeans"}, 0.5, nmi=[[0.2, 0.4], [0.5, 0.7]]),
        record("spt-deep", "digits", 1, 87.0, {"init": "kmeans"}, 0.5, nmi=[[0.2, 0.4], [0.6, 0.8]]),
        record("spt-deep", "sprites-loc", 0, 40.0, {"init": "kmeans"}, 0.5),
        record("spt-deep", "digits", 0, 81.0, {"init": "sampled"}, 0.5, nmi=[[0.1, 0.1], [0.3, 0.3]]),
        record("spt-deep", "sprites-loc", 0, 55.0, {"init": "sampled"}, 0.5),
    ]
    for r in rows:
        store.write(r)
    failed = record("vpt-deep", "digits", 0, 99.0)
    store.write(make_record(failed.spec, status="failed", error="diverged"))
    store.write(record("linear", "digits", 0, 99.0, {"lr": 0.5}, stage="tune"))  # scored val only: never counts
    return tmp_path / "results"


def latex_rows(table_tex: str) -> dict[str, list[str]]:
    """Method label -> its cells, from the tabular body."""
    rows = {}
    for line in table_tex.splitlines():
        if line.endswith("\\\\") and line.count("&") > 3:
            cells = [c.strip() for c in line[:-2].split("&")]
            rows[cells[1]] = cells[2:]
    return rows


def test_variants_differing_in_hparams_are_separate_rows_and_failed_or_tuning_runs_do_not_count(results: Path) -> None:
    runs = load_runs(results)
    assert sorted(runs["variant"].unique()) == ["full", "linear", "spt-deep init=kmeans", "spt-deep init=sampled"]


def test_micro_table_latex_cells(results: Path) -> None:
    tex = to_latex(suite_table(MICRO, load_runs(results)))
    rows = latex_rows(tex)
    # columns: Params, digits, mnist5k, sprites-loc, sprites-ori, shapes-count, Real, Structured, Mean, [n]
    assert rows["Method"] == ["Params (\\%)", "digits", "mnist5k", "sprites-loc", "sprites-ori", "shapes-count",
                              "Real", "Structured", "Mean", "[n]"]
    assert rows["spt-deep init=kmeans"][:4] == ["0.50", "\\textbf{86.0 $\\pm$ 1.4}", "--", "40.0"]
    # 81.0 twice: a tie for second, both underlined
    assert rows["full"][:4] == ["100.00", "\\underline{81.0 $\\pm$ 1.4}", "--", "\\underline{50.0}"]
    assert rows["spt-deep init=sampled"][1:4] == ["\\underline{81.0}", "--", "\\textbf{55.0}"]
    assert rows["linear"][1:4] == ["70.0", "--", "--"]
    # a group mean needs every task of the group: mnist5k is missing, so Real is '--'
    assert rows["full"][6:9] == ["--", "--", "--"]
    # [n]: tasks where the row beats full fine-tuning
    assert rows["spt-deep init=kmeans"][9] == "[1]"
    assert rows["spt-deep init=sampled"][9] == "[1]"
    assert rows["linear"][9] == "[0]"
    assert rows["full"][9] == "--"
    assert "\\toprule" in tex and "\\bottomrule" in tex and "\\label{tab:micro}" in tex
    assert "\\multicolumn{2}{c}{Real} & \\multicolumn{3}{c}{Structured}" in tex


def test_tied_values_share_the_bold(tmp_path: Path) -> None:
    store = Store(tmp_path)
    for method in ("full", "linear"):
        store.write(record(method, "digits", 0, 75.0))
    store.write(record("vpt-deep", "digits", 0, 60.0))
    rows = latex_rows(to_latex(suite_table(MICRO, load_runs(tmp_path))))
    assert rows["full"][1] == rows["linear"][1] == "\\textbf{75.0}"
    assert rows["vpt-deep"][1] == "\\underline{60.0}"


def test_rows_and_convergence_rows_follow_the_numbers_in_their_labels(tmp_path: Path) -> None:
    store = Store(tmp_path)
    for epochs in (100, 30, 200, 60):
        store.write(record("vpt-deep", "sprites-ori", 0, 40.0 + epochs / 10, {"epochs": epochs},
                           val_curve=[10.0, 20.0, 30.0]))
    runs = load_runs(tmp_path)
    expected = [f"vpt-deep epochs={e}" for e in (30, 60, 100, 200)]
    assert [variant for _, variant, _ in suite_table(MICRO, runs).rows] == expected
    assert [variant for _, variant, _ in convergence_table(runs).rows] == expected
    assert list(val_curves(runs)["sprites-ori"]) == expected


def test_report_writes_every_format_and_figure(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    report = build_report(results, out, ("tex", "md", "csv"), ("spt-deep init=kmeans", "full"))
    names = {p.name for p in report.paths}
    for stem in ("micro", "summary"):
        assert {f"{stem}.tex", f"{stem}.md", f"{stem}.csv"} <= names
    for stem in ("nmi_vs_epoch", "init_ablation", "acc_vs_params_pareto", "val_acc_vs_epoch"):
        assert {f"{stem}.pdf", f"{stem}.png"} <= names
    assert all(p.stat().st_size > 0 for p in report.paths)
    # figures without data are skipped with a note, never drawn empty
    assert not (out / "acc_vs_data_fraction.png").exists()
    assert any("data-fraction" in note for note in report.notes)
    assert any("FGVC" in note for note in report.notes)
    md = (out / "micro.md").read_text()
    assert "| micro-vit | spt-deep init=kmeans | 0.50 | **86.0 ± 1.4** | – | 40.0 |" in md
    csv = (out / "micro.csv").read_text().splitlines()
    assert csv[0].startswith("backbone,method,params,digits,digits_std,mnist5k")
    # paired comparison: kmeans vs full on (digits,0) +5, (digits,1) +5, (sprites-loc,0) -10
    c = report.comparison
    assert c is not None and c.pairs == 3 and c.mean == pytest.approx(0.0)
    assert c.low <= c.mean <= c.high


def test_val_curves_are_the_mean_over_seeds_per_task_and_variant(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.write(record("linear", "sprites-loc", 0, 40.0, val_curve=[20.0, 40.0]))
    store.write(record("linear", "digits", 0, 70.0, val_curve=[50.0, 60.0, 70.0]))
    store.write(record("linear", "digits", 1, 90.0, val_curve=[60.0, 80.0, 90.0]))
    store.write(record("spt-deep", "digits", 0, 30.0, {"init": "kmeans"}, val_curve=[10.0, 30.0]))
    store.write(record("spt-deep", "digits", 0, 20.0, {"init": "sampled"}, val_curve=[10.0, 20.0]))
    # A final-stage run trains on train+val, so it has no val curve and adds nothing.
    store.write(record("linear", "digits", 2, 99.0, stage="final", val_curve=[]))

    curves = val_curves(load_runs(tmp_path))
    assert list(curves) == ["digits", "sprites-loc"]  # the suite's task order, not the alphabet's
    assert sorted(curves["digits"]) == ["linear", "spt-deep init=kmeans", "spt-deep init=sampled"]
    assert curves["digits"]["linear"].to_dict() == {1: 55.0, 2: 70.0, 3: 80.0}
    assert curves["digits"]["spt-deep init=kmeans"].to_dict() == {1: 10.0, 2: 30.0}
    assert curves["sprites-loc"]["linear"].to_dict() == {1: 20.0, 2: 40.0}


def test_last_third_gain_is_the_end_of_the_curve_against_two_thirds_of_the_way() -> None:
    assert last_third_gain([10.0] * 20 + [30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 90.0, 90.0, 90.0]) == 90.0 - 10.0
    assert last_third_gain([50.0, 60.0, 70.0]) == 0.0  # shorter than two windows: the whole curve is the window
    assert last_third_gain(list(range(9))) == pytest.approx(7.0 - 4.0)  # epochs 7-9 against epochs 4-6


def test_convergence_table_is_the_seed_mean_gain_per_variant_and_task(tmp_path: Path) -> None:
    store = Store(tmp_path)
    flat, rising = [60.0] * 9, [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0]
    store.write(record("linear", "digits", 0, 60.0, val_curve=flat))
    store.write(record("linear", "digits", 1, 90.0, val_curve=rising))
    store.write(record("vpt-deep", "sprites-loc", 0, 90.0, val_curve=rising))
    store.write(record("linear", "digits", 2, 99.0, stage="final", val_curve=[]))  # no val curve: not counted

    table = convergence_table(load_runs(tmp_path))
    assert [c.key for c in table.columns] == ["digits", "sprites-loc"]
    cells = {variant: cells for _, variant, cells in table.rows}
    assert cells["linear"]["digits"].mean == pytest.approx((0.0 + 30.0) / 2)
    assert cells["vpt-deep"]["sprites-loc"].mean == pytest.approx(30.0)
    assert "sprites-loc" not in cells["linear"]
    assert "| micro-vit | linear | +15.0 | – |" in to_markdown(table)


def test_budget_table_pairs_each_budget_with_the_next_longer_one_by_seed(tmp_path: Path) -> None:
    store = Store(tmp_path)
    # warm-up a tenth of the epochs, as the recipes set it: one variant trained for three budgets
    for epochs, accs in ((10, [50.0, 54.0, 58.0]), (20, [60.0, 60.0]), (40, [61.0, 59.0, 70.0])):
        for seed, acc in enumerate(accs):
            store.write(record("vpt-deep", "digits", seed, acc, {"epochs": epochs, "warmup_epochs": epochs / 10}))
    # a warm-up swept at one budget is a setting of its own: only the 2-epoch warm-up ran a second budget
    for epochs, warmup, acc in ((10, 1.0, 70.0), (10, 2.0, 72.0), (20, 2.0, 75.0)):
        store.write(record("spt-deep", "digits", 0, acc, {"epochs": epochs, "warmup_epochs": warmup}))
    store.write(record("linear", "sprites-loc", 0, 40.0))  # one budget: no row

    table = budget_table(load_runs(tmp_path))
    cells = {variant: cells for _, variant, cells in table.rows}
    assert list(cells) == ["spt-deep warmup_epochs=2 on digits: 10 to 20 epochs",
                           "vpt-deep on digits: 10 to 20 epochs", "vpt-deep on digits: 20 to 40 epochs"]
    swept, first, second = cells.values()
    assert (swept["gain"].mean, swept["gain"].std, swept["seeds"].mean) == (3.0, None, 1)
    assert (first["before"].mean, first["after"].mean, first["seeds"].mean) == (52.0, 60.0, 2)  # seed 2 skipped 20
    assert first["gain"].mean == pytest.approx(statistics.mean([60.0 - 50.0, 60.0 - 54.0]))
    assert first["gain"].std == pytest.approx(statistics.stdev([10.0, 6.0]))
    assert second["gain"].mean == pytest.approx(statistics.mean([1.0, -1.0]))
    # the verdict: a mean gain within the gains' sample std is a plateau; one seed gives none
    assert [step["plateaued"].mean for step in (swept, first, second)] == [None, 0.0, 1.0]
    markdown = to_markdown(table)
    assert "| micro-vit | vpt-deep on digits: 10 to 20 epochs | 52.0 ± 2.8 | 60.0 ± 0.0 | +8.0 ± 2.8 | 2 | no |" in (
        markdown)
    assert "| vpt-deep on digits: 20 to 40 epochs | 60.0 ± 0.0 | 60.0 ± 1.4 | +0.0 ± 1.4 | 2 | yes |" in markdown
    assert "| +3.0 | 1 | – |" in markdown
    assert "+8.0 $\\pm$ 2.8 & 2 & no \\\\" in to_latex(table)


def test_budget_table_is_skipped_with_a_note_when_every_variant_ran_one_budget(results: Path, tmp_path: Path) -> None:
    report = build_report(results, tmp_path / "report", ("md",))
    assert any(note.startswith("budget table skipped") for note in report.notes)
    assert not (tmp_path / "report" / "budget.md").exists()


def test_val_curve_figure_is_skipped_with_a_note_when_no_run_scored_val(tmp_path: Path) -> None:
    store = Store(tmp_path / "results")
    store.write(record("linear", "digits", 0, 70.0, stage="final", val_curve=[]))
    report = build_report(tmp_path / "results", tmp_path / "report", ("md",))
    assert any(note.startswith("val-curve figure skipped") for note in report.notes)
    assert not (tmp_path / "report" / "val_acc_vs_epoch.png").exists()


def test_compare_is_seeded_and_needs_an_unambiguous_variant(results: Path) -> None:
    runs = load_runs(results)
    assert compare(runs, "spt-deep init=sampled", "full") == compare(runs, "spt-deep init=sampled", "full")
    assert main(["report", "--results", str(results), "--compare", "spt-deep,full"]) == 2


def test_compare_takes_variants_whose_labels_list_several_settings(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    store = Store(tmp_path / "results")
    accs = {(0, 0.0): 80.0, (0, 1.26): 83.0, (1, 0.0): 84.0, (1, 1.26): 85.0}
    for (seed, norm), acc in accs.items():
        for prompts in (5, 20):
            store.write(record("spt-deep", "digits", seed, acc - (prompts == 5), {"num_prompts": prompts,
                                                                                "prompt_norm": norm}))
    a, b = "spt-deep num_prompts=20, prompt_norm=1.26", "spt-deep num_prompts=20, prompt_norm=0.0"
    assert main(["report", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "r"), "--format", "md",
                 "--compare", f"{a},{b}"]) == 0
    # the paired differences are +3 and +1 over two seeds; rich wraps the line
    assert f"{a} − {b}: +2.00 points over 2 (backbone, task, seed) pairs" in " ".join(capsys.readouterr().out.split())


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no TeX engine")
def test_latex_compiles(results: Path, tmp_path: Path) -> None:
    build_report(results, tmp_path, ("tex",))
    doc = tmp_path / "doc.tex"
    doc.write_text("\\documentclass{article}\\usepackage{booktabs}\\begin{document}"
                   "\\input{micro.tex}\\input{summary.tex}\\end{document}\n")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]


def test_report_over_empty_results_says_so_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", "--results", str(tmp_path / "none")]) == 2
    assert "no finished runs" in capsys.readouterr().err


def test_cli_report_prints_summary_and_paths(results: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    assert main(["report", "--results", str(results), "--out", str(tmp_path / "r"), "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert "summary" in out and "spt-deep init=kmeans" in out and "summary.md" in out


def test_init_ablation_bars_are_seed_means_of_task_means_with_the_sample_std_over_seeds(tmp_path: Path) -> None:
    store = Store(tmp_path)
    # kmeans: seed 0 task mean (80+60)/2 = 70, seed 1 (84+64)/2 = 74 -> 72 ± 2.83; sampled: one seed, no spread.
    for task, seed, acc in (("digits", 0, 80.0), ("sprites-loc", 0, 60.0), ("digits", 1, 84.0),
                            ("sprites-loc", 1, 64.0)):
        store.write(record("spt-deep", task, seed, acc, {"init": "kmeans"}))
    store.write(record("spt-deep", "digits", 0, 50.0, {"init": "sampled"}))
    store.write(record("spt-deep", "sprites-loc", 0, 40.0, {"init": "sampled"}))
    stats = init_ablation_stats(load_runs(tmp_path)).loc["spt-deep"]
    assert stats.loc["kmeans", "acc"] == pytest.approx(72.0)
    assert stats.loc["kmeans", "std"] == pytest.approx(statistics.stdev([70.0, 74.0]))
    assert stats.loc["kmeans", "seeds"] == 2
    assert stats.loc["sampled", "acc"] == pytest.approx(45.0) and stats.loc["sampled", "seeds"] == 1
    assert stats.loc["kmeans", "secs"] == pytest.approx(0.25)
    paths = fig_init_ablation(load_runs(tmp_path), tmp_path)
    assert [p.name for p in paths] == ["init_ablation.pdf", "init_ablation.png"]


def test_an_init_ablation_leaves_out_series_that_ran_one_init(tmp_path: Path) -> None:
    store = Store(tmp_path)
    # An init sweep at 60 epochs beside a budget sweep of `sampled` alone: only the 60-epoch series compares inits.
    for init, acc in (("kmeans", 70.0), ("sampled", 60.0)):
        store.write(record("spt-deep", "digits", 0, acc, {"init": init, "epochs": 60}))
    store.write(record("spt-deep", "digits", 0, 90.0, {"init": "sampled", "epochs": 120}))
    stats = init_ablation_stats(load_runs(tmp_path))
    assert stats["acc"].to_dict() == {("spt-deep epochs=60", "kmeans"): 70.0, ("spt-deep epochs=60", "sampled"): 60.0}
    store.write(record("spt-deep", "digits", 0, 70.0, {"init": "kmeans", "epochs": 120}))
    assert len(init_ablation_stats(load_runs(tmp_path))) == 4


def test_an_init_ablation_with_one_init_per_series_is_skipped_with_a_note(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.write(record("spt-deep", "digits", 0, 60.0, {"init": "kmeans", "epochs": 60}))
    store.write(record("spt-deep", "digits", 0, 90.0, {"init": "sampled", "epochs": 120}))
    assert init_ablation_stats(load_runs(tmp_path)) == \
        "init ablation skipped: no series recorded at two prompt initialisations"
    # The same note when the whole store ran one init, or none.
    assert init_ablation_stats(load_runs(tmp_path).query("`hp.init` == 'sampled'")) == \
        "init ablation skipped: no series recorded at two prompt initialisations"
    assert init_ablation_stats(load_runs(tmp_path).drop(columns="hp.init")) == \
        "init ablation skipped: no series recorded at two prompt initialisations"


def test_a_report_removes_what_an_earlier_report_wrote_for_a_figure_it_now_skips(tmp_path: Path) -> None:
    store = Store(tmp_path / "results")
    kmeans = record("spt-deep", "digits", 0, 70.0, {"init": "kmeans"})
    store.write(kmeans)
    store.write(record("spt-deep", "digits", 0, 60.0, {"init": "sampled"}))
    out = tmp_path / "report"
    build_report(tmp_path / "results", out, ("md", "tex"))
    assert (out / "init_ablation.png").exists()
    (out / "my_notes.md").write_text("not the report's")
    (tmp_path / "results" / "runs" / f"{kmeans.id}.json").unlink()
    report = build_report(tmp_path / "results", out, ("md",))
    assert not (out / "init_ablation.png").exists() and not (out / "init_ablation.pdf").exists()
    assert "removed init_ablation.png: an earlier report wrote it, and this one skipped it" in report.notes
    # A table written again in fewer formats keeps its other formats; a file the report never wrote stays.
    assert (out / "summary.tex").exists() and (out / "my_notes.md").exists()


def test_an_init_ablation_bar_says_whether_its_runs_had_the_cores_while_they_built(tmp_path: Path) -> None:
    store = Store(tmp_path)
    # random: both alone; sampled: one of two shared the cores; mean: one never measured; max: shared beats unknown.
    alone, shared = SHARED_CORES_BELOW + 0.2, SHARED_CORES_BELOW - 0.2
    shares = {"random": (alone, alone), "sampled": (alone, shared), "mean": (alone, None), "max": (shared, None)}
    for init, pair in shares.items():
        for seed, share in enumerate(pair):
            r = record("spt-deep", "digits", seed, 80.0, {"init": init})
            if share is not None:
                r = dataclasses.replace(r, cpu_share=CpuShare(build=share, train=share))
            store.write(r)
    stats = init_ablation_stats(load_runs(tmp_path)).loc["spt-deep"]
    assert stats["cores"].to_dict() == {"max": "shared", "mean": "unknown", "random": "alone", "sampled": "shared"}


def test_tables_follow_the_task_registry_and_a_new_family_gets_its_own_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bench.data import TASK_GROUPS, TASKS, Task, TaskGroup
    from bench.registry import Entry

    made = {s.key: s for s in suites()}
    assert [g.label for g in made["vtab"].groups] == ["Natural", "Specialized", "Structured"]
    assert made["vtab"].groups[2].tasks[-2:] == ("smallnorb-azi", "smallnorb-ele") and made["vtab"].overall == "Mean"
    assert made["fgvc"].groups[0].tasks == ("cub", "nabirds", "flowers", "dogs", "cars")
    assert made["fgvc"].groups[0].label == "Mean" and made["fgvc"].overall is None
    assert made["micro"].groups[0].summary_label == "Micro real"

    # A family registered by one file of its own: groups declared for one, not for the other.
    for name, group in (("leaf-a", "plants/leaves"), ("leaf-b", "plants/leaves"), ("bark", "plants/bark")):
        monkeypatch.setitem(TASKS._entries, name, Entry(name, Task(name, group, 5, lambda _root=None: None), name))
    monkeypatch.setitem(TASK_GROUPS._entries, "plants/leaves",
                        Entry("plants/leaves", TaskGroup("plants/leaves", "Leaves", "Plants", "Plant leaves"), ""))
    for task, group in (("leaf-a", "plants/leaves"), ("leaf-b", "plants/leaves"), ("bark", "plants/bark")):
        monkeypatch.setitem(GROUPS, task, group)  # what `record` writes as the task's group
    store = Store(tmp_path / "results")
    for method, acc in (("linear", 60.0), ("full", 70.0)):
        for task in ("leaf-b", "leaf-a", "bark"):
            store.write(record(method, task, 0, acc))
    report = build_report(tmp_path / "results", tmp_path / "out", ("md",))
    plants = (tmp_path / "out" / "plants.md").read_text().splitlines()
    assert plants[0] == "| Backbone | Method | Params (%) | leaf-a | leaf-b | bark | Leaves | bark | Mean | [n] |"
    assert "| micro-vit | full | 1.00 | **70.0** | **70.0** | **70.0** | **70.0** | **70.0** | **70.0** | – |" in plants
    assert (tmp_path / "out" / "summary.md").read_text().splitlines()[0] == \
        "| Backbone | Method | Plant leaves | bark |"
    assert any(note.startswith("VTAB-1k table skipped") for note in report.notes)


def test_report_process_learns_its_tables_from_the_task_families(results: Path, tmp_path: Path) -> None:
    import os
    import sys

    done = subprocess.run([sys.executable, "-m", "bench.cli", "report", "--results", str(results), "--out",
                           str(tmp_path), "--format", "md"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    header = (tmp_path / "micro.md").read_text().splitlines()[0]
    assert header.endswith("| Real | Structured | Mean | [n] |")


# --- the paired bootstrap, pinned -------------------------------------------------------------------------------


def paired_runs(a_minus_b: list[float]) -> pd.DataFrame:
    """Runs of variants `a` and `b`, one (backbone, task, seed) pair per entry of `a_minus_b`, framed as `load_runs`
    frames them, A's runs in the order of `a_minus_b`. B's accuracies are multiples of 1/4 and every entry a
    multiple of 1/64, so each acc(a) − acc(b) is exactly its entry."""
    rows = []
    for i, difference in enumerate(a_minus_b):
        base = 50.0 + 3.25 * i
        pair = {"backbone": "micro-vit", "task": f"task-{i // 3}", "seed": i % 3}
        rows.append({**pair, "id": f"a{i}", "method": "a", "variant": "a", "acc": base + difference})
        rows.append({**pair, "id": f"b{i}", "method": "b", "variant": "b", "acc": base})
    return pd.DataFrame(rows)


def test_a_constant_paired_difference_has_a_bootstrap_interval_of_exactly_that_difference() -> None:
    c = compare(paired_runs([2.5] * 7), "a", "b")
    assert (c.pairs, c.mean, c.low, c.high) == (7, 2.5, 2.5, 2.5)


@pytest.mark.parametrize("resamples, confidence, seed", [(10_000, 0.95, 0), (2_000, 0.9, 7)])
def test_the_bootstrap_interval_is_numpys_percentiles_of_the_seeded_resample_means(
    resamples: int, confidence: float, seed: int
) -> None:
    # Twelve differences in 64ths, spread so that neighbouring resample means rarely tie: a change of the
    # percentile's interpolation shows.
    differences = np.array([413, -97, 250, 31, 702, -188, 129, 566, -5, 333, 71, 458]) / 64
    c = compare(paired_runs(list(differences)), "a", "b", resamples=resamples, confidence=confidence, seed=seed)
    # The resample as documented: numpy's default generator seeded with `seed` draws `resamples` rows of pair
    # indices, with replacement, over the pairs in the order A's runs come.
    draws = np.random.default_rng(seed).integers(len(differences), size=(resamples, len(differences)))
    means = np.array([differences[row].mean() for row in draws])
    tail = (1 - confidence) / 2
    assert (c.low, c.high) == tuple(np.percentile(means, [100 * tail, 100 * (1 - tail)]))
    # The same percentiles from their definition (linear interpolation between order statistics), without numpy's.
    ordered = sorted(means)

    def percentile(q: float) -> float:
        position = (len(ordered) - 1) * q
        below = math.floor(position)
        return ordered[below] + (position - below) * (ordered[below + 1] - ordered[below])

    assert (c.low, c.high) == (pytest.approx(percentile(tail), abs=1e-12),
                               pytest.approx(percentile(1 - tail), abs=1e-12))
    assert c.mean == pytest.approx(statistics.mean(differences), abs=1e-12) and c.low < c.mean < c.high
    assert (c.pairs, c.confidence) == (len(differences), confidence)


# --- group means with unequal values ----------------------------------------------------------------------------

# One variant's test accuracies per task and seed, and its learnable % per task (a task's head size sets it): unequal
# values and unequal seed counts, so that the mean of group means, the mean over tasks and the mean over runs differ.
UNEQUAL = {"digits": [80.0, 91.0], "mnist5k": [60.0], "sprites-loc": [40.0], "sprites-ori": [50.0, 53.0, 59.0],
           "shapes-count": [71.0]}
PCT = {"digits": 1.0, "mnist5k": 2.0, "sprites-loc": 3.0, "sprites-ori": 4.0, "shapes-count": 6.0}


@pytest.fixture
def unequal(tmp_path: Path) -> pd.DataFrame:
    store = Store(tmp_path)
    for task, accs in UNEQUAL.items():
        for seed, acc in enumerate(accs):
            store.write(record("linear", task, seed, acc, pct=PCT[task]))
    return load_runs(tmp_path)


def _group_means() -> dict[str, float]:
    """The conventions computed here from the values: a task's cell is its mean over seeds, a group mean the mean
    of its tasks' cells, the overall Mean the mean of the group means."""
    task = {name: statistics.mean(accs) for name, accs in UNEQUAL.items()}
    real = statistics.mean(task[t] for t in ("digits", "mnist5k"))
    structured = statistics.mean(task[t] for t in ("sprites-loc", "sprites-ori", "shapes-count"))
    means = {"mean:micro/real": real, "mean:micro/structured": structured,
             "mean:overall": statistics.mean([real, structured])}
    # The values are chosen so that no other averaging gives these numbers.
    runs = [acc for accs in UNEQUAL.values() for acc in accs]
    assert means["mean:overall"] not in (statistics.mean(task.values()), statistics.mean(runs))
    assert real != statistics.mean([*UNEQUAL["digits"], *UNEQUAL["mnist5k"]])
    return means


def test_group_means_are_means_of_task_means_and_mean_is_the_mean_of_the_group_means(unequal: pd.DataFrame) -> None:
    ((_, _, cells),) = suite_table(MICRO, unequal).rows
    expected = _group_means()
    assert {key: cells[key].mean for key in expected} == pytest.approx(expected, abs=1e-12)
    assert cells["digits"].mean == pytest.approx(85.5) and cells["sprites-ori"].mean == pytest.approx(54.0)
    # Printed as computed: 72.75, 55.0 and 63.875 to one decimal.
    assert "| **85.5 ± 7.8** | **60.0** | **40.0** | **54.0 ± 4.6** | **71.0** | **72.8** | **55.0** | **63.9** | – |" \
        in to_markdown(suite_table(MICRO, unequal))


def test_summary_group_means_are_means_of_task_means(unequal: pd.DataFrame) -> None:
    ((_, _, cells),) = summary_table(unequal).rows
    expected = {key: value for key, value in _group_means().items() if key != "mean:overall"}
    assert {key: cell.mean for key, cell in cells.items()} == pytest.approx(expected, abs=1e-12)


def test_params_is_the_mean_over_tasks_not_over_runs(unequal: pd.DataFrame) -> None:
    # 3.2 over the five tasks; a mean over the eight runs would weigh digits and sprites-ori by their seeds: 3.125.
    table = suite_table(MICRO, unequal)
    ((_, _, cells),) = table.rows
    assert cells["params"].mean == pytest.approx(statistics.mean(PCT.values()), abs=1e-12)
    assert statistics.mean(PCT.values()) != statistics.mean(PCT[t] for t, accs in UNEQUAL.items() for _ in accs)
    assert "| micro-vit | linear | 3.20 |" in to_markdown(table)


def test_every_table_names_its_protocol_and_a_table_that_mixes_protocols_says_so(tmp_path: Path) -> None:
    store = Store(tmp_path / "results")
    under = lambda r, recipe: make_record(dataclasses.replace(r.spec, recipe=recipe), r.test_acc,  # noqa: E731
                                          group=r.task.group)
    for seed in (0, 1):
        store.write(under(record("spt-deep", "digits", seed, 80.0 + seed), "shared"))
        store.write(under(record("lora", "digits", seed, 70.0 + seed), "shared"))
    build_report(tmp_path / "results", tmp_path / "alone", formats=("md", "tex"))
    for table in ("micro", "summary"):
        md = (tmp_path / "alone" / f"{table}.md").read_text()
        assert md.endswith("\nProtocol: shared.\n") and "mixes protocols" not in md
        assert "\\par{\\footnotesize Protocol: shared.}" in (tmp_path / "alone" / f"{table}.tex").read_text()

    store.write(record("linear", "digits", 0, 60.0))  # no recipe
    build_report(tmp_path / "results", tmp_path / "mixed", formats=("md",))
    md = (tmp_path / "mixed" / "micro.md").read_text()
    assert "\nProtocol: none, shared.\n" in md
    assert "\nNote: this table mixes protocols (none: linear; shared: lora, spt-deep);" in md
