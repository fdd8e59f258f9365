"""`bench report --rank`: which method is better over many tasks, the way Demšar (JMLR 2006) compares classifiers
over data sets. Per backbone, the methods are ranked on each task (1 best, ties share the mean rank) by their test
accuracy averaged over seeds; a Friedman test asks whether the average ranks differ more than chance would make
them, and the Nemenyi post-hoc says which pairs differ: two methods whose average ranks are further apart than the
critical difference (CD) differ at level alpha. The critical-difference diagram draws the average ranks on an axis
and joins by a bar the methods that do not differ.

The Friedman test is scipy's (`scipy.stats.friedmanchisquare`, with its correction for ties), the Nemenyi p-values
and the diagram scikit-posthocs's (`posthoc_nemenyi_friedman`, `critical_difference_diagram`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from bench.record import COLUMNS
from bench.report.figures import _figure, _save
from bench.report.tables import Cell, Column, Table, natural_key, task_order

ALPHA = 0.05


@dataclass(frozen=True)
class Ranking:
    """One backbone's Friedman test and Nemenyi post-hoc, over the complete block of tasks x variants."""

    backbone: str
    accuracy: pd.DataFrame  # tasks (rows) x variants (columns): test accuracy, mean over seeds
    ranks: pd.Series  # variant -> average rank over the tasks, 1 best
    statistic: float  # Friedman's chi-square, corrected for ties
    pvalue: float
    nemenyi: pd.DataFrame  # variant x variant: Nemenyi p-values
    cd: float  # critical difference of average ranks at `alpha`
    alpha: float
    left_out: tuple[str, ...]  # variants and tasks dropped to make the block complete, for the note

    @property
    def tasks(self) -> int:
        return len(self.accuracy)

    def describe(self) -> str:
        return (f"{self.backbone}: {len(self.ranks)} methods on {self.tasks} tasks, Friedman chi-square "
                f"{self.statistic:.2f} (p = {self.pvalue:.3g}), Nemenyi critical difference {self.cd:.2f} at alpha "
                f"{self.alpha:g}")


def nemenyi_q(k: int, alpha: float = ALPHA) -> float:
    """Demšar's q_alpha for k methods: the studentized range's upper alpha quantile (infinite degrees of freedom)
    divided by sqrt 2; Demšar's Table 5 prints 2.343 for k = 3 at alpha 0.05."""
    return float(stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))


def critical_difference(k: int, n: int, alpha: float = ALPHA) -> float:
    """The Nemenyi critical difference of average ranks, q_alpha sqrt(k (k + 1) / (6 N)), for k methods over N tasks."""
    return nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6 * n))


def _complete_block(table: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Until no cell is missing (the Friedman test needs every method scored on every task), drop, of the variants
    and tasks with a gap, the one with the fewest records: a variant run on one task goes, not the tasks it skipped;
    on a tie the task goes, so that every method stays ranked. Returns the block and what was dropped."""
    dropped = []
    while table.isna().to_numpy().any():
        variants = table.notna().sum(axis=0)[table.isna().any(axis=0)]
        tasks = table.notna().sum(axis=1)[table.isna().any(axis=1)]
        if variants.min() < tasks.min():
            dropped.append(str(variants.idxmin()))
            table = table.drop(columns=variants.idxmin())
        else:
            dropped.append(f"task {tasks.idxmin()}")
            table = table.drop(index=tasks.idxmin())
    return table, dropped


def rank_methods(runs: pd.DataFrame, alpha: float = ALPHA) -> tuple[list[Ranking], list[str]]:
    """A `Ranking` per backbone with at least 3 variants on at least 2 common tasks, and a note per backbone left
    out or per variant or task dropped to complete the block."""
    import scikit_posthocs

    rankings, notes = [], []
    for backbone, frame in runs.groupby(COLUMNS.backbone):
        wide = frame.groupby([COLUMNS.task, "variant"])["acc"].mean().unstack("variant")
        wide = wide.reindex(index=task_order(wide.index), columns=sorted(wide.columns, key=natural_key))
        block, dropped = _complete_block(wide)
        if dropped:
            notes.append(f"rank test on {backbone}: left out {', '.join(dropped)} (every method must have every "
                         "task; run the missing (method, task) pairs to include them)")
        n, k = block.shape
        if k < 3 or n < 2:
            notes.append(f"rank test on {backbone} skipped: {k} method(s) on {n} common task(s); the Friedman test "
                         "needs 3 methods on 2 tasks (for two methods use --compare A,B)")
            continue
        statistic, pvalue = stats.friedmanchisquare(*(block[column] for column in block.columns))
        ranks = pd.Series(stats.rankdata(-block.to_numpy(), axis=1).mean(axis=0), index=block.columns)
        nemenyi = scikit_posthocs.posthoc_nemenyi_friedman(block)
        rankings.append(Ranking(str(backbone), block, ranks, float(statistic), float(pvalue), nemenyi,
                                critical_difference(k, n, alpha), alpha, tuple(dropped)))
    return rankings, notes


def rank_table(rankings: list[Ranking]) -> Table:
    """Per backbone, its variants by average rank: the rank, the mean accuracy over the ranked tasks, and whether
    the Nemenyi test tells the variant apart from the best-ranked one; the Friedman test of each backbone in the
    caption."""
    columns = [Column("rank", "Avg. rank", "rank"), Column("acc", "Mean acc."),
               Column("vs_best", "Differs from best", "verdict")]
    rows = []
    for ranking in rankings:
        order = ranking.ranks.sort_values(kind="stable")
        best = order.index[0]
        # Exactly rounded: numpy's summation order (and so the last bit, which the CSV prints) depends on the
        # block's memory layout, which differs between otherwise identical processes.
        means = ranking.accuracy.apply(lambda column: math.fsum(column) / len(column))
        top = means.max()
        for variant, rank in order.items():
            differs = Cell() if variant == best else Cell(float(ranking.nemenyi.loc[variant, best] < ranking.alpha))
            rows.append((ranking.backbone, str(variant), {
                "rank": Cell(float(rank)), "acc": Cell(float(means[variant]), rank=int(means[variant] == top)),
                "vs_best": differs}))
    tests = "; ".join(ranking.describe() for ranking in rankings)
    caption = ("Ranks: per backbone, methods ranked on each task by test accuracy (mean over seeds; 1 best, ties "
               "share the mean rank), averaged over the tasks every method has. Mean acc.: over the same tasks, best "
               "in bold. Differs from best: the Nemenyi post-hoc tells the method apart from the best-ranked one "
               f"(their average ranks are further apart than the critical difference). {tests}.")
    return Table("ranks", caption, columns, rows)


def fig_critical_difference(rankings: list[Ranking], out: Path) -> list[Path]:
    """The critical-difference diagram (Demšar 2006, Fig. 1), one panel per backbone: average ranks on the axis,
    the CD above it, and a bar under each set of methods the Nemenyi test does not tell apart."""
    import scikit_posthocs

    fig, axes = _figure(len(rankings), 1, size=(7.0, 0.45 * max(len(r.ranks) for r in rankings) * len(rankings) + 1.2))
    for ax, ranking in zip(np.atleast_1d(axes).ravel(), rankings):
        scikit_posthocs.critical_difference_diagram(
            ranking.ranks, ranking.nemenyi, cd=ranking.cd, alpha=ranking.alpha, ax=ax,
            label_fmt_left="{label} ({rank:.2f})", label_fmt_right="({rank:.2f}) {label}",
            label_props={"fontsize": "x-small"})
        # Demšar's axis runs over every possible average rank, 1 to k, so the spread reads against its range.
        ax.grid(False)
        ax.set_xlim(1, len(ranking.ranks))
        ax.set_xticks(range(1, len(ranking.ranks) + 1))
        ax.set_title(f"{ranking.backbone}: {ranking.tasks} tasks, Friedman p = {ranking.pvalue:.3g}",
                     fontsize="small", pad=18)
    return _save(fig, out, "critical_difference")
