"""Calibration from the runs' saved test predictions: does a method's confidence match how often it is right?

The expected calibration error (Guo et al., ICML 2017) sorts the test images into `BINS` equal-width bins of
confidence (the softmax probability of the predicted class), bin m holding confidences in ((m − 1)/M, m/M], and
sums |accuracy − mean confidence| over the bins, each weighted by its share of the images. It is reported in points
(×100), like accuracy. The reliability diagram draws each bin's accuracy against its confidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.record import COLUMNS
from bench.report.figures import _figure, _save
from bench.report.perimage import Scores
from bench.report.tables import Cell, Column, Table, _by_row, _over_seeds, natural_key, protocol_lines, task_order

BINS = 15


@dataclass(frozen=True)
class Reliability:
    """Per bin: its image count, the share of them classified right, and their mean confidence (NaN when empty)."""

    edges: np.ndarray  # BINS + 1 edges, 0 to 1
    counts: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray

    @property
    def ece(self) -> float:
        """Expected calibration error in points: sum over bins of n_bin / N · |acc − conf|, × 100."""
        filled = self.counts > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float(100 * np.sum(self.counts[filled] * gaps) / self.counts.sum())


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> Reliability:
    """Bin the images by confidence into `bins` equal-width bins, each open below and closed above."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.searchsorted(edges[1:-1], confidence, side="left")  # (lo, hi]: a confidence on an edge goes below
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(index, weights=correct.astype(np.float64), minlength=bins) / counts
        mean_confidence = np.bincount(index, weights=confidence.astype(np.float64), minlength=bins) / counts
    return Reliability(edges, counts, accuracy, mean_confidence)


def calibration_frame(runs: pd.DataFrame, scores: dict[str, Scores]) -> pd.DataFrame:
    """The runs that have scores, with each one's ECE (`ece`, points)."""
    have = runs[runs[COLUMNS.id].isin(scores)]
    return have.assign(ece=[reliability(scores[i].confidence, scores[i].correct).ece for i in have[COLUMNS.id]])


def calibration_table(frame: pd.DataFrame) -> Table:
    """Variant × task → ECE, mean ± sample std over seeds, and its mean over the tasks, from `calibration_frame`."""
    tasks = task_order(frame[COLUMNS.task])
    columns = [Column(task, task) for task in tasks] + [Column("mean", "Mean")]  # acc's format, never ranked
    rows = []
    cells_by_row = {key: {task: _over_seeds(f["ece"]) for task, f in group.groupby(COLUMNS.task)}
                    for key, group in frame.groupby([COLUMNS.backbone, "variant"])}
    for (backbone, variant), cells in sorted(cells_by_row.items(), key=_by_row):
        cells["mean"] = Cell(float(np.mean([cell.mean for cell in cells.values()])))
        rows.append((backbone, variant, cells))
    caption = (f"Calibration: expected calibration error (ECE, points; {BINS} equal-width confidence bins, "
               "sum of |accuracy - confidence| weighted by each bin's share of the test images) per run, mean "
               "$\\pm$ sample std ($n-1$) over seeds; Mean: over the tasks the row has. 0 is perfectly calibrated; "
               "runs without saved predictions are left out.")
    return Table("calibration", caption, columns, rows, protocol=protocol_lines(frame))


def fig_reliability(frame: pd.DataFrame, scores: dict[str, Scores], out: Path) -> list[Path]:
    """Reliability diagram, one panel per (backbone, variant) of `calibration_frame`: accuracy per confidence bin
    over all its runs' test images (tasks and seeds pooled), against the diagonal of perfect calibration."""
    groups = sorted(frame.groupby([COLUMNS.backbone, "variant"]), key=_by_row)
    several = frame[COLUMNS.backbone].nunique() > 1
    cols = min(3, len(groups))
    rows = -(-len(groups) // cols)
    fig, axes = _figure(rows, cols, size=(2.6 * cols, 2.6 * rows))
    axes = np.atleast_1d(axes).ravel()
    for ax, ((backbone, variant), group) in zip(axes, groups):
        ids = group[COLUMNS.id]
        pooled = reliability(np.concatenate([scores[i].confidence for i in ids]),
                             np.concatenate([scores[i].correct for i in ids]))
        centres = (pooled.edges[:-1] + pooled.edges[1:]) / 2
        width = 1 / BINS
        ax.bar(centres, np.nan_to_num(pooled.accuracy), width=width, edgecolor="black", linewidth=0.5,
               label="accuracy")
        ax.bar(centres, np.nan_to_num(pooled.confidence - pooled.accuracy), bottom=np.nan_to_num(pooled.accuracy),
               width=width, color="tab:red", alpha=0.3, edgecolor="tab:red", linewidth=0.5, label="gap to confidence")
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
        name = f"{backbone} · {variant}" if several else variant
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
               title=f"{name}\npooled ECE {pooled.ece:.1f} ({len(ids)} runs)")
        ax.title.set_fontsize("x-small")
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    axes[0].legend(fontsize="xx-small", loc="upper left")
    return _save(fig, out, "reliability")
