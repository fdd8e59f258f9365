"""The report's statistics against their oracles: the Friedman test against scipy and Demšar's formula, the Nemenyi
critical difference against Demšar's table, the Bayesian signed-rank comparison against baycomp on the table it
should be given and against what the test is documented to conclude, McNemar's test against statsmodels, the
hierarchical bootstrap against drawing one index at a time, and the ECE against a hand computation."""

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
from bench.report import (
    WRITTEN_LIST, Scores, bayesian, critical_difference, hierarchical_bootstrap, mcnemar_exact, paired, per_image,
    rank_methods, reliability,
)
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


# --- per image: McNemar and the hierarchical bootstrap -------------------------------------------------------------


@pytest.mark.parametrize("b, c", [(0, 0), (3, 0), (7, 2), (12, 19), (40, 40), (150, 110)])
def test_mcnemar_is_statsmodels_exact_test_and_scipys_binomial(b: int, c: int) -> None:
    from statsmodels.stats.contingency_tables import mcnemar

    table = [[25, b], [c, 9]]  # the concordant cells do not enter the test
    assert mcnemar_exact(b, c) == pytest.approx(mcnemar(table, exact=True).pvalue, rel=1e-12)
    if b + c:
        assert mcnemar_exact(b, c) == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-12)


def correctness(pattern: str) -> np.ndarray:
    return np.array([ch == "1" for ch in pattern])


def scored(correct: dict[str, np.ndarray], labels: np.ndarray | None = None) -> dict[str, Scores]:
    return {run: Scores(np.arange(len(c)) % 7 if labels is None else labels, c, np.full(len(c), 0.8, np.float32))
            for run, c in correct.items()}


def test_the_per_image_test_counts_discordant_images_per_cell_and_pools_them() -> None:
    # Two tasks x two seeds; A right alone is b, B right alone is c.
    a = {("task-0", 0): "1101100", ("task-0", 1): "1111000", ("task-1", 0): "0010111", ("task-1", 1): "1110011"}
    b = {("task-0", 0): "1001001", ("task-0", 1): "0111000", ("task-1", 0): "0011101", ("task-1", 1): "1010011"}
    runs = grid({"a": [[0.0, 0.0], [0.0, 0.0]], "b": [[0.0, 0.0], [0.0, 0.0]]})
    correct = {f"{v}-{t[-1]}-{s}": correctness(p) for v, table in (("a", a), ("b", b)) for (t, s), p in table.items()}
    result, notes = per_image("a", "b", paired(runs, "a", "b"), scored(correct))
    assert notes == []
    assert [(cell.task, cell.seed, cell.n, cell.b, cell.c) for cell in result.cells] == [
        ("task-0", 0, 7, 2, 1), ("task-0", 1, 7, 1, 0), ("task-1", 0, 7, 1, 1), ("task-1", 1, 7, 1, 0)]
    assert result.discordant == (5, 2)
    assert result.pvalue == mcnemar_exact(5, 2) == pytest.approx(stats.binomtest(5, 7).pvalue)
    # The point estimate is the mean over tasks of the mean over seeds of acc(a) − acc(b), in points.
    assert result.mean == pytest.approx(100 * (1 / 7 + 1 / 7 + 0 + 1 / 7) / 4)


def test_cells_whose_runs_scored_different_images_or_lack_predictions_are_left_out_with_notes() -> None:
    runs = grid({"a": [[0.0, 0.0]], "b": [[0.0, 0.0]]})
    correct = {"a-0-0": correctness("1100"), "b-0-0": correctness("1010"), "a-0-1": correctness("11")}
    scores = scored(correct)
    result, notes = per_image("a", "b", paired(runs, "a", "b"), scores)
    assert [(cell.seed, cell.b, cell.c) for cell in result.cells] == [(0, 1, 1)]
    assert notes == ["per-image comparison of a and b: 1 of 2 (backbone, task, seed) cells left out, a run of them "
                     "without saved predictions"]
    scores["b-0-1"] = Scores(np.arange(2) + 1, correctness("10"), np.ones(2, np.float32))  # other labels
    _, notes = per_image("a", "b", paired(runs, "a", "b"), scores)
    assert notes[0].startswith("per-image test: task-0 seed 1 on micro-vit left out: its two runs scored different")
    none, notes = per_image("a", "b", paired(runs, "a", "b"), {})
    assert none is None and notes == ["per-image comparison of a and b skipped: none of their 2 (backbone, task, "
                                      "seed) cells has both runs' saved predictions"]


def test_a_constant_per_image_difference_has_a_bootstrap_interval_of_exactly_that_difference() -> None:
    ones = np.ones(50, np.int8)
    assert hierarchical_bootstrap({("x", "t0"): [ones, ones], ("x", "t1"): [ones, ones, ones]}) == (100.0, 100.0, 100.0)


def test_seeds_that_disagree_widen_the_interval_to_their_spread() -> None:
    # Seed 0: A right alone on every image; seed 1: B. Images alone would give a zero-width interval at each seed;
    # resampling seeds gives means of +100, 0 or -100 with chances 1/4, 1/2, 1/4.
    estimate, low, high = hierarchical_bootstrap({("x", "t"): [np.ones(40, np.int8), -np.ones(40, np.int8)]})
    assert (estimate, low, high) == (0.0, -100.0, 100.0)


def naive_bootstrap(differences: dict[tuple[str, str], list[np.ndarray]], resamples: int, seed: int) -> np.ndarray:
    """The hierarchical bootstrap drawn one index at a time: tasks, then each drawn task's seeds and one draw of its
    images shared by those seeds."""
    rng = np.random.default_rng(seed)
    keys = list(differences)
    means = []
    for _ in range(resamples):
        task_means = []
        for t in rng.integers(len(keys), size=len(keys)):
            seeds = differences[keys[t]]
            images = rng.integers(len(seeds[0]), size=len(seeds[0]))
            task_means.append(np.mean([seeds[s][images].mean() for s in rng.integers(len(seeds), size=len(seeds))]))
        means.append(100 * np.mean(task_means))
    return np.array(means)


def test_the_hierarchical_bootstrap_has_the_distribution_of_drawing_tasks_seeds_and_images_one_by_one() -> None:
    rng = np.random.default_rng(5)
    differences = {("x", f"t{t}"): [rng.choice([-1, 0, 1], p=[0.1 + 0.05 * t, 0.7, 0.2 - 0.05 * t], size=60)
                                    .astype(np.int8) for _ in range(3)] for t in range(3)}
    estimate, low, high = hierarchical_bootstrap(differences, resamples=20_000, seed=1)
    reference = naive_bootstrap(differences, resamples=20_000, seed=2)
    assert estimate == pytest.approx(100 * np.mean([np.mean(d) for d in differences.values()]))
    spread = reference.std()
    # The two draw differently, so their percentiles agree to Monte Carlo error, a small share of the spread.
    assert low == pytest.approx(np.percentile(reference, 2.5), abs=0.1 * spread)
    assert high == pytest.approx(np.percentile(reference, 97.5), abs=0.1 * spread)
    assert hierarchical_bootstrap(differences, seed=1) == hierarchical_bootstrap(differences, seed=1)


# --- calibration ---------------------------------------------------------------------------------------------------


def test_ece_is_the_bin_weighted_gap_between_accuracy_and_confidence() -> None:
    # 15 bins of width 1/15, each open below and closed above: 0.05 and 1/15 share the first bin, 0.5 falls in the
    # eighth, 0.9 in the fourteenth, 0.95 and 1.0 in the last.
    confidence = np.array([0.05, 1 / 15, 0.5, 0.5, 0.9, 0.95, 1.0], np.float64)
    correct = np.array([0, 0, 1, 0, 1, 1, 1], bool)
    hand = (2 * abs(0 - (0.05 + 1 / 15) / 2) + 2 * abs(0.5 - 0.5) + abs(1 - 0.9) + 2 * abs(1 - 0.975)) / 7
    curve = reliability(confidence, correct)
    assert curve.counts.tolist() == [2, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 1, 2]
    assert curve.ece == pytest.approx(100 * hand)
    # Right exactly as often as confident, bin by bin: 0.
    assert reliability(np.array([0.5, 0.5, 1.0, 1.0]), np.array([1, 0, 1, 1], bool)).ece == 0.0


def store_with_predictions(root: Path, cells: dict[tuple[str, str, int], tuple[str, float]]) -> Store:
    """Records with saved predictions, as a run writes them: (method, task, seed) -> (correctness, confidence)."""
    import dataclasses

    from bench.artifacts import PREDICTIONS, Predictions, artifact_file, run_folder, save_predictions

    store = Store(root)
    for (method, task, seed), (pattern, confidence) in cells.items():
        correct = correctness(pattern)
        labels = np.arange(len(correct), dtype=np.int64) % 5
        predictions = Predictions(labels, np.where(correct, labels, (labels + 1) % 5),
                                  np.full(len(correct), confidence, np.float32))
        spec = record(method, task, seed, predictions.accuracy).spec
        path = run_folder(root, spec.run_id) / f"{PREDICTIONS}.safetensors"
        sha = save_predictions(path, predictions, {"run_id": spec.run_id})
        store.write(dataclasses.replace(record(method, task, seed, predictions.accuracy), artifacts={
            PREDICTIONS: artifact_file(spec.run_id, PREDICTIONS, sha, path.stat().st_size)}))
    return store


def test_report_writes_calibration_and_compare_prints_the_per_image_result_beside_the_seed_level_one(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    store = store_with_predictions(tmp_path / "results", {
        ("vpt-deep", "digits", 0): ("11110000", 0.9), ("vpt-deep", "digits", 1): ("11111000", 0.6),
        ("spt-deep", "digits", 0): ("11111100", 0.75), ("spt-deep", "digits", 1): ("11110000", 0.5),
        ("vpt-deep", "mnist5k", 0): ("1111", 0.8), ("spt-deep", "mnist5k", 0): ("1110", 0.8)})
    store.write(record("vpt-deep", "mnist5k", 1, 50.0))  # from before artifacts: no predictions
    store.write(record("spt-deep", "mnist5k", 1, 75.0))
    out = tmp_path / "report"
    assert main(["report", "--results", str(store.root), "--out", str(out), "--format", "csv",
                 "--compare", "spt-deep,vpt-deep"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "note: 2 runs predate artifacts" in printed and "rerun with `bench run --retry-artifacts`" in printed
    # Seed level, unchanged: (+25 − 12.5 − 25 + 25) / 4 over the four (task, seed) pairs.
    assert "spt-deep − vpt-deep: +3.12 points over 4 (backbone, task, seed) pairs" in printed
    # digits seed 0: +2 images of 8, seed 1: −1 of 8; mnist5k seed 0: −1 of 4; seed 1 has no predictions.
    assert ("spt-deep − vpt-deep per image, on 3 (backbone, task, seed) cells, 20 image pairs: -9.38 points"
            in printed)
    assert "spt-deep alone right on 2 images, vpt-deep alone on 2, pooled two-sided p = 1;" in printed
    assert "P(practically equivalent)" in printed
    # The same three results, written: the sentences printed, the numbers unrounded, McNemar's counts per cell.
    written = pd.read_csv(out / "comparison.csv").set_index("test")
    assert list(written.index) == ["seed-level bootstrap", "Bayesian signed-rank",
                                   "per image: McNemar, hierarchical bootstrap"]
    assert set(written["a"]) == {"spt-deep"} and set(written["b"]) == {"vpt-deep"}
    assert written.loc["seed-level bootstrap", "estimate"] == pytest.approx(3.125)
    assert written.loc["per image: McNemar, hierarchical bootstrap", "estimate"] == pytest.approx(-9.375)
    assert all(sentence in printed for sentence in written["result"])
    cells = pd.read_csv(out / "comparison_cells.csv")
    assert cells[["task", "seed", "images", "spt-deep alone right", "vpt-deep alone right"]].values.tolist() == [
        ["digits", 0, 8, 2, 0], ["digits", 1, 8, 0, 1], ["mnist5k", 0, 4, 0, 1]]
    table = pd.read_csv(out / "calibration.csv").set_index("method")
    # ECE per run: one bin each, |accuracy − confidence|; digits' cell is the mean over the two seeds.
    assert table.loc["vpt-deep", "digits"] == pytest.approx((abs(50 - 90) + abs(62.5 - 60)) / 2)
    assert table.loc["spt-deep", "mnist5k"] == pytest.approx(abs(75 - 80))
    assert table.loc["vpt-deep", "digits_std"] == pytest.approx(np.std([40, 2.5], ddof=1))
    assert (out / "reliability.png").stat().st_size > 0


def test_a_corrupt_predictions_file_is_a_note_not_a_traceback(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    store = store_with_predictions(tmp_path / "results", {("vpt-deep", "digits", 0): ("1100", 0.9),
                                                          ("spt-deep", "digits", 0): ("1110", 0.9)})
    victim = next((store.root / "artifacts").rglob("*.safetensors"))
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert main(["report", "--results", str(store.root), "--out", str(tmp_path / "r"), "--format", "md",
                 "--compare", "spt-deep,vpt-deep"]) == 0
    captured = capsys.readouterr()
    printed = " ".join(captured.out.split())
    assert "is corrupt" in printed and "--retry-artifacts" in printed and "Traceback" not in captured.err
    assert "per-image comparison of spt-deep and vpt-deep skipped" in printed
