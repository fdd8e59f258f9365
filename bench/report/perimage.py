"""Per-image statistics from the runs' saved test predictions (`bench.artifacts`): under `bench report --compare A,B`,
McNemar's exact test of A against B on the same test images, per (backbone, task, seed) and over the whole grid, and
a hierarchical bootstrap of the mean accuracy difference over tasks, seeds and test images.

Every run of a task scored the same test images in the same order, so two runs of one (task, seed) pair up image by
image: the test looks only at the images where exactly one of the two is right (the discordant pairs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from bench.artifacts import ArtifactError, load_predictions
from bench.record import COLUMNS, RunRecord


@dataclass(frozen=True)
class Scores:
    """What the report keeps of a run's predictions (the logits are dropped once read): per test image, in the
    split's order, its label, whether the run was right, and the softmax probability of the class it predicted."""

    labels: np.ndarray
    correct: np.ndarray
    confidence: np.ndarray


def load_scores(results: Path, records: list[RunRecord]) -> tuple[dict[str, Scores], list[str]]:
    """The `Scores` of every record whose predictions load, by run id, and a note per problem: one line counting the
    runs recorded before runs kept artifacts, and each missing or corrupt file's own line."""
    scores, notes, predate = {}, [], 0
    for record in records:
        if record.artifacts is None:
            predate += 1
            continue
        try:
            predictions = load_predictions(results, record.id)
        except ArtifactError as exc:
            notes.append(str(exc))
            continue
        scores[record.id] = Scores(predictions.labels, predictions.correct, predictions.confidence)
    if predate:
        runs = "run predates" if predate == 1 else "runs predate"
        notes.insert(0, f"{predate} {runs} artifacts (no saved test predictions, so no per-image statistics or "
                        "calibration for them): rerun with `bench run --retry-artifacts`")
    return scores, notes


@dataclass(frozen=True)
class McNemar:
    """One (backbone, task, seed): `b` images A got right and B wrong, `c` the reverse, of `n` scored by both."""

    backbone: str
    task: str
    seed: int
    n: int
    b: int
    c: int

    @property
    def pvalue(self) -> float:
        return mcnemar_exact(self.b, self.c)


def mcnemar_exact(b: int, c: int) -> float:
    """McNemar's exact test: under "A and B are equally accurate", each of the b + c discordant images is A's with
    probability 1/2, so b ~ Binomial(b + c, 1/2); the two-sided p-value of that binomial (1 without discordance)."""
    return 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)


@dataclass(frozen=True)
class PerImage:
    """McNemar per cell and pooled, and the hierarchical bootstrap of acc(a) − acc(b) in points."""

    a: str
    b: str
    cells: tuple[McNemar, ...]
    mean: float
    low: float
    high: float
    confidence: float

    @property
    def discordant(self) -> tuple[int, int]:
        return sum(cell.b for cell in self.cells), sum(cell.c for cell in self.cells)

    @property
    def pvalue(self) -> float:
        """The exact test on the discordant counts pooled over the grid. Under the null hypothesis each discordant
        image, in whichever cell, is A's or B's with probability 1/2, so the pooled count is again binomial and the
        test is exact: the matched-pairs Cochran-Mantel-Haenszel test with one stratum per image pair (which
        stratifying by cell leaves unchanged) in its exact form. Unlike Fisher's or Stouffer's combination of the
        cells' two-sided p-values it keeps the direction (A ahead in one cell and behind in another cancel instead of
        adding up), and it weighs each cell by its discordant images, not equally. Like McNemar's test itself it
        holds the trained runs fixed: it asks whether these runs differ on these images, not whether retraining
        would; the bootstrap beside it resamples seeds and tasks for that."""
        return mcnemar_exact(*self.discordant)

    def describe(self) -> str:
        ahead, behind = self.discordant
        significant = [cell for cell in self.cells if cell.pvalue < 0.05]
        return (f"{self.a} − {self.b} per image, on {len(self.cells)} (backbone, task, seed) cells, "
                f"{sum(cell.n for cell in self.cells)} image pairs: {self.mean:+.2f} points, {self.confidence:.0%} "
                f"hierarchical bootstrap CI (tasks, seeds, images) [{self.low:+.2f}, {self.high:+.2f}]; McNemar's "
                f"exact test: {self.a} alone right on {ahead} images, {self.b} alone on {behind}, pooled two-sided "
                f"p = {self.pvalue:.3g}; cells with p < 0.05: {len(significant)} "
                f"({sum(cell.b > cell.c for cell in significant)} for {self.a})")


def pair_cells(joined: pd.DataFrame, scores: dict[str, Scores]) -> tuple[list[tuple[McNemar, np.ndarray]], list[str]]:
    """For each (backbone, task, seed) of `comparison.paired`'s grid whose two runs both have scores: its McNemar
    counts and the per-image difference (1 A right alone, −1 B right alone, 0 both or neither). A note per cell
    whose two runs did not score the same test images."""
    cells, notes = [], []
    for row in joined.itertuples(index=False):
        key = (getattr(row, COLUMNS.backbone), getattr(row, COLUMNS.task), int(getattr(row, COLUMNS.seed)))
        one, two = scores.get(row.id_a), scores.get(row.id_b)
        if one is None or two is None:
            continue
        if len(one.labels) != len(two.labels) or not np.array_equal(one.labels, two.labels):
            shapes = (f"{len(one.labels)} and {len(two.labels)} images" if len(one.labels) != len(two.labels)
                      else f"{len(one.labels)} images each, with other labels")
            notes.append(f"per-image test: {key[1]} seed {key[2]} on {key[0]} left out: its two runs scored "
                         f"different test images ({shapes}); compare runs of the same data (see the data-fingerprint "
                         "note)")
            continue
        difference = one.correct.astype(np.int8) - two.correct.astype(np.int8)
        cells.append((McNemar(*key, n=len(difference), b=int((difference == 1).sum()),
                              c=int((difference == -1).sum())), difference))
    return cells, notes


def hierarchical_bootstrap(differences: dict[tuple[str, ...], list[np.ndarray]], resamples: int = 10_000,
                           confidence: float = 0.95, seed: int = 0, chunk: int = 250) -> tuple[float, float, float]:
    """The mean per-image difference in points (the mean over tasks of the mean over seeds of the mean over images)
    and a seeded percentile interval from resampling, with replacement, tasks, then the seeds of each drawn task,
    then its test images.

    Images are drawn once per drawn task and used for each of its drawn seeds: every seed scored the same images,
    so an image is one draw shared by the seeds (seeds and images are crossed, not nested).

    Args:
        differences: a task's key -> one array per seed of per-image differences (1, 0, −1), same images.
    """
    rng = np.random.default_rng(seed)
    keys = list(differences)
    # Per task, images x seeds. A resample of images depends only on how often it draws each distinct row (at most
    # 3^seeds of them), so it is drawn as multinomial counts over those rows: the same distribution as drawing
    # images one by one, in time independent of the test set's size.
    tables = [np.stack(differences[key], axis=1).astype(np.float64) for key in keys]
    estimate = 100 * float(np.mean([table.mean() for table in tables]))
    rows = [np.unique(table, axis=0, return_counts=True) for table in tables]
    means = np.empty(resamples)
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        drawn = rng.integers(len(keys), size=(size, len(keys)))
        task_means = np.empty(drawn.shape)
        for t, (patterns, counts) in enumerate(rows):
            # Each draw of a task resamples its seeds and images afresh, also when one resample draws it twice.
            where = drawn == t
            times, images, seeds = int(where.sum()), counts.sum(), patterns.shape[1]
            image_weights = rng.multinomial(images, counts / images, size=times) / images
            seed_weights = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=times) / seeds
            task_means[where] = ((image_weights @ patterns) * seed_weights).sum(axis=1)
        means[start:start + size] = task_means.mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(100 * means, [tail, 100 - tail])
    return estimate, float(low), float(high)


def per_image(a: str, b: str, joined: pd.DataFrame, scores: dict[str, Scores], resamples: int = 10_000,
              confidence: float = 0.95, seed: int = 0) -> tuple[PerImage | None, list[str]]:
    """`a` against `b` image by image over the cells of `joined` (`comparison.paired`) whose runs have scores; None
    (with the notes saying why) when no cell has."""
    cells, notes = pair_cells(joined, scores)
    unscored = sum(scores.get(row.id_a) is None or scores.get(row.id_b) is None for row in joined.itertuples())
    if not cells:
        return None, [*notes, f"per-image comparison of {a} and {b} skipped: none of their {len(joined)} (backbone, "
                              "task, seed) cells has both runs' saved predictions"]
    if unscored:
        notes.append(f"per-image comparison of {a} and {b}: {unscored} of {len(joined)} (backbone, task, seed) cells "
                     "left out, a run of them without saved predictions")
    # Seeds of a task share its images; a task whose runs read test sets of different sizes (mixed data, which the
    # report warns about) is resampled as one task per size.
    by_task: dict[tuple[str, str, int], list[np.ndarray]] = {}
    for cell, difference in cells:
        by_task.setdefault((cell.backbone, cell.task, cell.n), []).append(difference)
    mean, low, high = hierarchical_bootstrap(by_task, resamples, confidence, seed)
    return PerImage(a, b, tuple(cell for cell, _ in cells), mean, low, high, confidence), notes
