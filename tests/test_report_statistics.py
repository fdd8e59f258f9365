"""The report's statistics against their oracles: the Friedman test against scipy and Demšar's formula, the Nemenyi
critical difference against Demšar's table, the Bayesian signed-rank comparison against baycomp on the table it
should be given and against what the test is documented to conclude."""

from __future__ import annotations

import math
from pathlib import Path

import baycomp
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench import BenchError
from bench.cli import main
from bench.report import WRITTEN_LIST, bayesian, critical_difference, rank_methods
from bench.report.ranking import nemenyi_q
from bench.store import Store
from test_report import record

# Demšar (2006), Table 5(a): critical values q_alpha of the two-tailed Nemenyi test, alpha = 0.05 and 0.10.
DEMSAR_Q = {0.05: [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164],
            0.10: [1.645, 2.052, 2.291, 2.459, 2.589, 2.693, 2.780, 2.855, 2.920]}


def grid(acc: dict[str, list[list[float]]], backbone: str = "micro-vit") -> pd.DataFrame:
    """Runs framed as `load_runs` frames them: variant -> per task, one accuracy per seed."""
    rows = []
    for variant, tasks in acc.items():
        for t, seeds in enumerate(tasks):
            for seed, value in enumerate(seeds):
                rows.append({"id": f"{variant}-{t}-{seed}", "backbone": backbone, "task": f"task-{t}", "seed": seed,
                             "method": variant.split()[0], "variant": variant, "acc": value})
    return pd.DataFrame(rows)


def random_grid(variants: int, tasks: int, seeds: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """A grid of distinct accuracies (no ties), and its tasks x variants table of seed means."""
    rng = np.random.default_rng(seed)
    values = rng.uniform(40, 90, size=(variants, tasks, seeds)) + np.arange(variants)[:, None, None] * 2
    runs = grid({f"m{v}": values[v].tolist() for v in range(variants)})
    return runs, values.mean(axis=2).T


# --- Friedman and Nemenyi ------------------------------------------------------------------------------------------


def test_the_friedman_statistic_is_scipys_on_the_table_of_seed_means_and_demsars_formula_from_the_ranks() -> None:
    runs, table = random_grid(variants=5, tasks=7, seeds=3)
    [ranking], notes = rank_methods(runs)
    assert notes == []
    expected = stats.friedmanchisquare(*table.T)
    assert (ranking.statistic, ranking.pvalue) == pytest.approx((expected.statistic, expected.pvalue), rel=1e-12)
    # Rank 1 is the best accuracy on a task; average ranks as Demšar defines them.
    ranks = np.array([[sorted(row, reverse=True).index(value) + 1 for value in row] for row in table]).mean(axis=0)
    assert ranking.ranks.to_numpy() == pytest.approx(ranks)
    n, k = table.shape
    demsar = 12 * n / (k * (k + 1)) * (np.sum(ranks ** 2) - k * (k + 1) ** 2 / 4)
    assert ranking.statistic == pytest.approx(demsar, rel=1e-12)


def test_tied_accuracies_share_the_mean_rank_and_the_statistic_stays_scipys() -> None:
    runs = grid({"a": [[80.0], [70.0], [60.0], [90.0]], "b": [[80.0], [65.0], [61.0], [85.0]],
                 "c": [[75.0], [70.0], [50.0], [95.0]]})
    [ranking], _ = rank_methods(runs)
    # Per task (rank of a, b, c): (1.5, 1.5, 3), (1.5, 3, 1.5), (2, 1, 3), (2, 3, 1).
    assert ranking.ranks.to_dict() == {"a": 1.75, "b": 2.125, "c": 2.125}
    table = [[80, 70, 60, 90], [80, 65, 61, 85], [75, 70, 50, 95]]
    assert ranking.statistic == pytest.approx(stats.friedmanchisquare(*table).statistic, rel=1e-12)


@pytest.mark.parametrize("alpha", sorted(DEMSAR_Q))
def test_nemenyi_q_is_demsars_table(alpha: float) -> None:
    # The table's last digit is not always rounded to nearest (2.3437 is printed 2.343), so within one unit of it.
    assert [nemenyi_q(k, alpha) for k in range(2, 11)] == pytest.approx(DEMSAR_Q[alpha], abs=1e-3)


@pytest.mark.parametrize("variants, tasks", [(3, 5), (6, 5), (10, 19)])
def test_the_critical_difference_is_q_alpha_times_the_rank_standard_error(variants: int, tasks: int) -> None:
    runs, _ = random_grid(variants, tasks, seeds=2)
    [ranking], _ = rank_methods(runs)
    formula = DEMSAR_Q[0.05][variants - 2] * math.sqrt(variants * (variants + 1) / (6 * tasks))
    assert ranking.cd == pytest.approx(formula, rel=1e-3)  # the table's three decimals
    assert ranking.cd == critical_difference(variants, tasks)


def test_nemenyi_tells_two_methods_apart_exactly_when_their_ranks_are_further_apart_than_the_cd() -> None:
    runs, _ = random_grid(variants=8, tasks=12, seeds=1, seed=3)
    [ranking], _ = rank_methods(runs)
    names = list(ranking.ranks.index)
    checked = 0
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            gap = abs(ranking.ranks[a] - ranking.ranks[b])
            if abs(gap - ranking.cd) > 1e-9:
                assert (ranking.nemenyi.loc[a, b] < ranking.alpha) == (gap > ranking.cd)
                checked += 1
    assert checked == len(names) * (len(names) - 1) // 2
    assert (ranking.nemenyi.to_numpy() < ranking.alpha).any()  # the grid's drift makes some pair differ


def test_gaps_drop_the_method_or_task_with_fewest_records_with_a_note_and_two_methods_are_not_ranked() -> None:
    runs, _ = random_grid(variants=5, tasks=5, seeds=2)
    # m4 ran task-0 alone (one record: it goes); m2 skipped task-3 (3 records against m2's 4: the task goes).
    runs = runs[(runs["variant"] != "m4") | (runs["task"] == "task-0")]
    runs = runs[~((runs["variant"] == "m2") & (runs["task"] == "task-3"))]
    two = grid({"x": [[1.0], [2.0]], "y": [[2.0], [1.0]]}, backbone="other")
    [ranking], notes = rank_methods(pd.concat([runs, two]))
    assert list(ranking.ranks.index) == ["m0", "m1", "m2", "m3"]
    assert list(ranking.accuracy.index) == ["task-0", "task-1", "task-2", "task-4"]
    assert notes[0].startswith("rank test on micro-vit: left out m4, task task-3 (every method must have every task")
    assert notes[1].startswith("rank test on other skipped: 2 method(s) on 2 common task(s)")


def test_report_rank_writes_the_table_and_diagram_and_a_report_without_it_keeps_them(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store = Store(tmp_path / "results")
    for method, base in (("linear", 70.0), ("vpt-deep", 75.0), ("spt-deep", 76.0)):
        for i, task in enumerate(("digits", "mnist5k", "sprites-loc")):
            for seed in (0, 1):
                store.write(record(method, task, seed, base + i + seed / 4))
    out = tmp_path / "report"
    assert main(["report", "--results", str(store.root), "--out", str(out), "--format", "md", "--rank"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "rank test on micro-vit: 3 methods on 3 tasks, Friedman chi-square 6.00" in printed
    rows = [line.split(" | ")[1:3] for line in (out / "ranks.md").read_text().splitlines()[2:5]]
    assert rows == [["spt-deep", "1.00"], ["vpt-deep", "2.00"], ["linear", "3.00"]]
    assert (out / "critical_difference.png").stat().st_size > 0
    assert main(["report", "--results", str(store.root), "--out", str(out), "--format", "md"]) == 0
    assert {"ranks.md", "critical_difference.png"} <= set((out / WRITTEN_LIST).read_text().split())
    assert (out / "ranks.md").exists()


# --- the Bayesian signed-rank comparison ---------------------------------------------------------------------------


def pair(differences: list[list[float]]) -> pd.DataFrame:
    """Methods `a` and `b` over tasks x seeds, acc(a) − acc(b) as given, on a base that varies by task and seed."""
    base = [[60.0 + 5 * t + 1.5 * s for s in range(len(seeds))] for t, seeds in enumerate(differences)]
    return grid({"a": [[b + d for b, d in zip(bs, ds)] for bs, ds in zip(base, differences)], "b": base})


def test_identical_methods_are_practically_equivalent() -> None:
    result = bayesian(pair([[0.0, 0.0, 0.0]] * 6), "a", "b")
    assert (result.p_a, result.p_rope, result.p_b) == (0.0, 1.0, 0.0)
    assert result.verdict == "practically equivalent"


def test_a_large_constant_difference_makes_the_better_method_near_certain() -> None:
    ahead = bayesian(pair([[5.0, 5.0]] * 8), "a", "b")
    assert ahead.p_a > 0.95 and ahead.verdict == "a better"
    behind = bayesian(pair([[-5.0, -5.0]] * 8), "a", "b")
    assert behind.p_b > 0.95 and behind.verdict == "b better"
    # The same difference counts as equivalence inside a wider region.
    assert bayesian(pair([[5.0, 5.0]] * 8), "a", "b", rope=6.0).verdict == "practically equivalent"


def test_few_tasks_that_disagree_leave_it_undecided() -> None:
    result = bayesian(pair([[2.0, 1.0], [-3.0, -1.0], [0.5, 0.0]]), "a", "b")
    assert max(result.p_a, result.p_rope, result.p_b) < 0.95 and result.verdict == "undecided"
    assert result.p_a + result.p_rope + result.p_b == pytest.approx(1.0)


def test_the_test_sees_one_sample_per_task_the_mean_over_seeds_and_is_seeded() -> None:
    differences = [[2.0, -1.0, 0.5], [1.5, 3.0, 0.0], [-0.5, -2.5, 1.0], [4.0, 2.0, 3.0]]
    runs = pair(differences)
    result = bayesian(runs, "a", "b", rope=1.0, samples=4_000, seed=3)
    assert result.tasks == 4
    a = runs[runs["variant"] == "a"].groupby("task")["acc"].mean().to_numpy()
    b = runs[runs["variant"] == "b"].groupby("task")["acc"].mean().to_numpy()
    expected = baycomp.SignedRankTest(a, b, 1.0, nsamples=4_000, random_state=3).probs()
    assert (result.p_a, result.p_rope, result.p_b) == tuple(expected)
    assert result == bayesian(runs, "a", "b", rope=1.0, samples=4_000, seed=3)
    assert result != bayesian(runs, "a", "b", rope=1.0, samples=4_000, seed=4)


def test_a_negative_rope_is_refused_and_rope_needs_compare(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(BenchError, match="--rope -1"):
        bayesian(pair([[1.0]]), "a", "b", rope=-1.0)
    store = Store(tmp_path / "results")
    store.write(record("linear", "digits", 0, 70.0))
    assert main(["report", "--results", str(store.root), "--rope", "2"]) == 2
    assert "pass --compare A,B" in capsys.readouterr().err
