"""`bench report`: the tables and figures of a PEFT paper, built only from finished records in the results store.

`build_report` writes every table (`bench.report.tables`) in every asked format (`bench.report.rendering`: LaTeX,
Markdown and CSV with the same numbers) and every figure (`bench.report.figures`) the records support, saying which it
skipped and why, and from the runs' saved test predictions a calibration table and reliability diagram
(`bench.report.calibration`); with --compare, the paired bootstrap of two methods and their Bayesian signed-rank test
(`bench.report.comparison`) and McNemar's test and a hierarchical bootstrap image by image (`bench.report.perimage`);
with --rank, the Friedman test, Nemenyi post-hoc and critical-difference diagram over methods and tasks
(`bench.report.ranking`); with --published, the papers' numbers beside this run's (`bench.report.published`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from bench import BenchError
from bench.fingerprint import fingerprint_summary, mixed_fingerprint_warnings
from bench.record import COLUMNS
from bench.report.calibration import (
    BINS, Reliability, calibration_frame, calibration_table, fig_reliability, reliability,
)
from bench.report.comparison import (
    CELLS, COMPARISON, ROPE, Bayesian, Comparison, bayesian, compare, paired, write_comparison,
)
from bench.report.figures import (
    FIGURES, INIT_ORDER, SHARED_CORES_BELOW, fig_backbone_size, fig_data_fraction, fig_init_ablation, fig_nmi,
    fig_pareto, fig_prompt_length, fig_val_curves, init_ablation_stats, val_curves,
)
from bench.report.perimage import (
    McNemar, PerImage, Scores, hierarchical_bootstrap, load_scores, mcnemar_exact, per_image,
)
from bench.report.published import compare_published, load_published, protocol_notes, published_table, scope_tasks
from bench.report.ranking import Ranking, critical_difference, fig_critical_difference, rank_methods, rank_table
from bench.report.rendering import FORMATS, to_frame, to_latex, to_markdown, to_rich, write_table
from bench.report.tables import (
    Cell, Column, Group, Suite, Table, budget_table, convergence_table, last_third_gain, load_runs, natural_key,
    protocol_lines, reported_records, runs_frame, suite_table, suites, summary_table,
)
from bench.store import Store

# The public API, importable from `bench.report` whichever part defines it.
__all__ = [
    "BINS", "FIGURES", "FORMATS", "INIT_ORDER", "ROPE", "SHARED_CORES_BELOW", "WRITTEN_LIST", "Bayesian", "Cell",
    "Column", "Comparison", "Group", "McNemar", "PerImage", "Ranking", "Reliability", "Report", "Scores", "Suite",
    "Table", "bayesian", "budget_table", "build_report", "calibration_frame", "calibration_table", "compare",
    "compare_published", "convergence_table", "critical_difference", "fig_backbone_size", "fig_critical_difference",
    "fig_data_fraction", "fig_init_ablation", "fig_nmi", "fig_pareto", "fig_prompt_length", "fig_reliability",
    "fig_val_curves", "hierarchical_bootstrap", "init_ablation_stats", "last_third_gain", "load_published",
    "load_runs", "load_scores", "mcnemar_exact", "natural_key", "paired", "per_image", "protocol_lines",
    "protocol_notes", "published_table", "rank_methods", "rank_table", "reliability", "scope_tasks", "suite_table",
    "suites", "summary_table", "to_frame", "to_latex", "to_markdown", "to_rich", "val_curves", "write_table",
]


@dataclass
class Report:
    summary: Table
    paths: list[Path]
    notes: list[str]
    comparison: Comparison | None
    published: Table | None = None  # when asked for, and some published number matched
    bayesian: Bayesian | None = None  # with `comparison`
    per_image: PerImage | None = None  # with `comparison`, where both methods' runs saved their predictions
    rankings: list[Ranking] = field(default_factory=list)  # when asked for: one per backbone the test could rank


def build_report(results: str | Path, out: str | Path, formats: Sequence[str] = FORMATS,
                 compare_pair: tuple[str, str] | None = None, published: bool = False, rank: bool = False,
                 rope: float = ROPE) -> Report:
    """Write every table and figure the records support under `out`; say which were skipped and why. With
    `published`, also the published numbers (bench/report/published.csv) beside this run's (bench.report.published);
    with `rank`, the rank table and critical-difference diagram (bench.report.ranking); with `compare_pair`, the
    bootstrap and the Bayesian comparison at `rope` points (bench.report.comparison) and, where runs saved their
    test predictions, the per-image comparison (bench.report.perimage)."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise BenchError(f"--format {','.join(formats)}: valid formats are {','.join(FORMATS)}")
    store = Store(results)
    reported = reported_records(store)  # read once: the tables' frame and the data notes come from the same records
    runs = runs_frame(reported)
    # A bad name or --rope fails before anything is written.
    comparison = compare(runs, *compare_pair) if compare_pair else None
    posterior = bayesian(runs, *compare_pair, rope=rope) if compare_pair else None
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"cannot create report directory {out}: {exc.strerror}; pass --out DIR") from None
    paths: list[Path] = []
    notes = [f"skipped unreadable record {path.name} (set aside; rerun `bench run` to recompute it)"
             for path in store.set_aside]
    # The tables average runs by task; runs of one task on different data (a partial archive, a JPEG dump against
    # TFDS tensors) do not compare, so the report names each task's data and warns where a task mixes them.
    notes += mixed_fingerprint_warnings(reported)
    if (fingerprints := fingerprint_summary(reported)) is not None:
        notes.append(fingerprints)
    for suite in suites(runs[COLUMNS.group].dropna()):
        table = suite_table(suite, runs)
        if table is None:
            notes.append(f"{suite.title} table skipped: no records in its groups ({', '.join(g.id for g in suite.groups)})")
        else:
            paths += write_table(table, out, formats)
    summary = summary_table(runs)
    paths += write_table(summary, out, formats)
    convergence = convergence_table(runs)
    if convergence is None:
        notes.append("convergence table skipped: no record carries a val curve (only fixed-protocol runs score val)")
    else:
        paths += write_table(convergence, out, formats)
    budget = budget_table(runs)
    if budget is None:
        notes.append("budget table skipped: no variant was recorded at two epoch budgets on a task and seed")
    else:
        paths += write_table(budget, out, formats)
    for figure in FIGURES:
        made = figure(runs, out)
        if isinstance(made, str):
            notes.append(made)
        else:
            paths += made
    scores, score_notes = load_scores(store.root, reported)
    notes += score_notes
    calibrated = calibration_frame(runs, scores)
    if calibrated.empty:
        notes.append("calibration table and reliability diagram skipped: no run has saved test predictions")
    else:
        paths += write_table(calibration_table(calibrated), out, formats)
        paths += fig_reliability(calibrated, scores, out)
    images = None
    if comparison is not None and posterior is not None:
        images, image_notes = per_image(comparison.a, comparison.b, paired(runs, *compare_pair), scores)
        notes += image_notes
        paths += write_comparison(out, formats, comparison, posterior, images)
    beside = None
    if published:
        matched = compare_published(runs, load_published())
        if matched.empty:
            notes.append("published table skipped: no recorded method, backbone and complete task group matches a "
                         "published number (bench/report/published.csv)")
        else:
            beside = published_table(matched)
            beside.protocol = protocol_lines(runs[runs[COLUMNS.method].isin(matched["method"])
                                                  & runs[COLUMNS.backbone].isin(matched["backbone"])])
            paths += write_table(beside, out, formats)
            notes += protocol_notes(matched)
    rankings: list[Ranking] = []
    if rank:
        rankings, rank_notes = rank_methods(runs)
        notes += rank_notes
        if rankings:
            ranks = rank_table(rankings)
            ranked = pd.concat([runs[(runs[COLUMNS.backbone] == r.backbone) & runs["variant"].isin(r.ranks.index)]
                                for r in rankings])
            ranks.protocol = protocol_lines(ranked)
            paths += write_table(ranks, out, formats)
            paths += fig_critical_difference(rankings, out)
    # What a flag writes stays from an earlier report made with it, when this one was not asked for it.
    unasked = ({"published"} if not published else set()) | ({"ranks", "critical_difference"} if not rank else set())
    unasked |= {COMPARISON, CELLS} if not compare_pair else set()
    notes += _drop_stale(out, paths, unasked)
    return Report(summary, paths, notes, comparison, beside, posterior, images, rankings)


# What the last `bench report` wrote in its directory, so that a table or figure it now skips does not linger there
# looking current. Files it never wrote are left alone.
WRITTEN_LIST = ".bench-report-files"


def _drop_stale(out: Path, paths: list[Path], unasked: set[str]) -> list[str]:
    """Remove the files an earlier report wrote for a table or figure that this one did not write (in any format);
    keep those (by stem) of `unasked`, what a flag not given this time writes. Returns a note per removed file."""
    listed = out / WRITTEN_LIST
    before = listed.read_text().split() if listed.exists() else []
    current = {path.stem for path in paths} | unasked
    stale = [name for name in before if Path(name).stem not in current]
    for name in stale:
        (out / name).unlink(missing_ok=True)
    kept = {name for name in before if Path(name).stem in current and (out / name).exists()}
    listed.write_text("".join(f"{name}\n" for name in sorted(kept | {path.name for path in paths})))
    return [f"removed {name}: an earlier report wrote it, and this one skipped it" for name in stale]
