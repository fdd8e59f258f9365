"""`bench report --compare A,B`: the paired difference of two methods' test accuracy, with a bootstrap interval over
(task, seed) pairs, and a Bayesian signed-rank test over tasks with a region of practical equivalence."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from bench import BenchError
from bench.record import COLUMNS
from bench.report.rendering import tex_escape

if TYPE_CHECKING:
    from bench.report.perimage import PerImage


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    pairs: int
    mean: float
    low: float
    high: float
    confidence: float

    def describe(self) -> str:
        return (f"{self.a} − {self.b}: {self.mean:+.2f} points over {self.pairs} (backbone, task, seed) pairs, "
                f"{self.confidence:.0%} bootstrap CI [{self.low:+.2f}, {self.high:+.2f}]")


def _select(runs: pd.DataFrame, name: str) -> pd.DataFrame:
    chosen = runs[runs["variant"] == name]
    if chosen.empty:
        chosen = runs[runs[COLUMNS.method] == name]
    variants = sorted(chosen["variant"].unique())
    if chosen.empty:
        raise BenchError(f"--compare: no finished runs of {name!r}; recorded: {', '.join(sorted(runs['variant'].unique()))}")
    if len(variants) > 1:
        raise BenchError(f"--compare: {name!r} has several variants ({'; '.join(variants)}); name one of them")
    return chosen


def paired(runs: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """The (backbone, task, seed) grid both `a` and `b` ran: the keys, `acc_a`, `acc_b`, and each run's `id_a`, `id_b`.

    Raises:
        BenchError: a name matches no run or several variants, or the two share no cell.
    """
    keys = [COLUMNS.backbone, COLUMNS.task, COLUMNS.seed]
    columns = [*keys, COLUMNS.id, "acc"]
    joined = _select(runs, a)[columns].merge(_select(runs, b)[columns], on=keys, suffixes=("_a", "_b"))
    if joined.empty:
        raise BenchError(f"--compare: {a!r} and {b!r} share no (backbone, task, seed); run both on the same grid")
    return joined


def compare(runs: pd.DataFrame, a: str, b: str, resamples: int = 10_000, confidence: float = 0.95,
            seed: int = 0) -> Comparison:
    """Mean of acc(a) − acc(b) over (backbone, task, seed) pairs both ran, with a seeded percentile-bootstrap CI.

    Pairs are resampled with replacement, so the interval treats them as exchangeable: it reflects seed and task
    variation together, not either alone.
    """
    joined = paired(runs, a, b)
    diff = (joined["acc_a"] - joined["acc_b"]).to_numpy()
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(len(diff), size=(resamples, len(diff)))].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return Comparison(a, b, len(diff), float(diff.mean()), float(low), float(high), confidence)


ROPE = 1.0  # points of accuracy: the region of practical equivalence `--rope` defaults to
THRESHOLD = 0.95  # the posterior probability a verdict needs


@dataclass(frozen=True)
class Bayesian:
    """Posterior probabilities that `a` is better than `b` by more than `rope` points, that the two are within
    `rope` of each other, and that `b` is better; they sum to 1."""

    a: str
    b: str
    tasks: int
    rope: float
    p_a: float
    p_rope: float
    p_b: float
    threshold: float = THRESHOLD

    @property
    def verdict(self) -> str:
        """`<a> better`, `practically equivalent` or `<b> better` where that probability reaches the threshold,
        else `undecided`."""
        for p, verdict in ((self.p_a, f"{self.a} better"), (self.p_rope, "practically equivalent"),
                           (self.p_b, f"{self.b} better")):
            if p >= self.threshold:
                return verdict
        return "undecided"

    def describe(self) -> str:
        return (f"{self.a} vs {self.b}, Bayesian signed-rank test over {self.tasks} tasks (mean over seeds), ROPE "
                f"±{self.rope:g} points: P({self.a} better) {self.p_a:.3f}, P(practically equivalent) "
                f"{self.p_rope:.3f}, P({self.b} better) {self.p_b:.3f}: {self.verdict} at {self.threshold:g}")


def bayesian(runs: pd.DataFrame, a: str, b: str, rope: float = ROPE, threshold: float = THRESHOLD,
             samples: int = 50_000, seed: int = 0) -> Bayesian:
    """The Bayesian signed-rank test (Benavoli et al., JMLR 2017; baycomp's `SignedRankTest`) of `a` against `b`
    over tasks, each task's accuracy the mean over the seeds both ran on it (a (backbone, task) is one task).

    The test puts a Dirichlet process on the per-task differences (prior: one pseudo-task of weight 0.5 at zero
    difference), so tasks, not seeds, are its samples: seeds of one task are not independent data sets. baycomp's
    hierarchical test would use the seeds as within-task samples, but it compiles a Stan model (PyStan and a C++
    toolchain) the first time it runs, which a report should not need. A probability is the posterior share of
    samples in which that region is the most probable of the three.

    Raises:
        BenchError: a negative `rope`; the errors of `paired`.
    """
    import baycomp

    if rope < 0:
        raise BenchError(f"--rope {rope:g}: the region of practical equivalence is a width in points, 0 or more "
                         f"(default {ROPE:g})")
    per_task = paired(runs, a, b).groupby([COLUMNS.backbone, COLUMNS.task])[["acc_a", "acc_b"]].mean()
    # baycomp's left region is x better than y by more than the rope, its right region y better.
    posterior = baycomp.SignedRankTest(per_task["acc_a"].to_numpy(), per_task["acc_b"].to_numpy(), rope,
                                       nsamples=samples, random_state=seed)
    p_a, p_rope, p_b = (float(p) for p in posterior.probs(with_rope=True))
    return Bayesian(a, b, len(per_task), rope, p_a, p_rope, p_b, threshold)


COMPARISON, CELLS = "comparison", "comparison_cells"


def write_comparison(out: Path, formats: Sequence[str], comparison: Comparison, posterior: Bayesian,
                     images: PerImage | None) -> list[Path]:
    """`comparison.*`: the seed-level bootstrap, the Bayesian test and, with saved predictions, the per-image
    result, one row each, in the sentences `bench report --compare` prints; and with the per-image result,
    `comparison_cells.*`, McNemar's counts per (backbone, task, seed). The CSV holds the numbers unrounded, with the
    pair and the ROPE, so the comparison can be made again from the file alone."""
    a, b = comparison.a, comparison.b
    rows = [{"test": "seed-level bootstrap", "over": f"{comparison.pairs} (backbone, task, seed) pairs",
             "estimate": comparison.mean, "low": comparison.low, "high": comparison.high,
             "confidence": comparison.confidence, "result": comparison.describe()},
            {"test": "Bayesian signed-rank", "over": f"{posterior.tasks} tasks", "rope": posterior.rope,
             "p_a_better": posterior.p_a, "p_equivalent": posterior.p_rope, "p_b_better": posterior.p_b,
             "verdict": posterior.verdict, "result": posterior.describe()}]
    if images is not None:
        ahead, behind = images.discordant
        rows.append({"test": "per image: McNemar, hierarchical bootstrap",
                     "over": f"{len(images.cells)} cells, {sum(c.n for c in images.cells)} image pairs",
                     "estimate": images.mean, "low": images.low, "high": images.high,
                     "confidence": images.confidence, "a_only": ahead, "b_only": behind, "p_value": images.pvalue,
                     "result": images.describe()})
    frame = pd.DataFrame(rows)
    frame.insert(0, "b", b)
    frame.insert(0, "a", a)
    title = f"{a} − {b}"
    paths = _write(out / COMPARISON, formats, frame, ["test", "result"], title)
    if images is not None:
        cells = pd.DataFrame([{"backbone": c.backbone, "task": c.task, "seed": c.seed, "images": c.n,
                               f"{a} alone right": c.b, f"{b} alone right": c.c, "p_value": c.pvalue}
                              for c in sorted(images.cells, key=lambda c: (c.backbone, c.task, c.seed))])
        paths += _write(out / CELLS, formats, cells, list(cells.columns),
                        f"{title}, McNemar's exact test per (backbone, task, seed)")
    return paths


def _write(stem: Path, formats: Sequence[str], frame: pd.DataFrame, shown: list[str], title: str) -> list[Path]:
    """The CSV holds every column; Markdown and LaTeX show the `shown` ones (p-values to 3 significant digits)."""
    text = frame[shown].astype(object).map(lambda v: f"{v:.3g}" if isinstance(v, float) else str(v))
    paths = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        if fmt == "csv":
            frame.to_csv(path, index=False)
        elif fmt == "md":
            lines = [f"**{title}**", "", "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
            lines += ["| " + " | ".join(row) + " |" for row in text.itertuples(index=False)]
            path.write_text("\n".join(lines) + "\n")
        else:
            # pdflatex's default input encoding has no minus sign or plus-minus of its own.
            def tex(value: str) -> str:
                return tex_escape(value).replace("−", "$-$").replace("±", "$\\pm$")

            columns = "".join("p{0.7\\linewidth}" if c == "result" else "l" for c in shown)
            lines = ["\\begin{table}[t]", "\\centering", "\\small", f"\\caption{{{tex(title)}}}",
                     f"\\begin{{tabular}}{{{columns}}}", "\\toprule",
                     " & ".join(tex(c) for c in shown) + " \\\\", "\\midrule"]
            lines += [" & ".join(tex(v) for v in row) + " \\\\" for row in text.itertuples(index=False)]
            lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
            path.write_text("\n".join(lines))
        paths.append(path)
    return paths
