"""The report's tables, from the runs frame: one per task family in VPT's and SPT's layout (Jia et al., ECCV 2022;
Wang et al., ICML 2024; groups, labels and task order as each family's file declares them), a summary of backbone ×
method → group means, and two tables on training budgets (convergence, budget). `bench.report.rendering` writes them.

Conventions, stated in every caption:
- A row is a method variant: the method name plus the hyper-parameters that take several values for the same
  (method, task, backbone) (`bench.store.variant_labels`), so `spt-deep init=kmeans` and `spt-deep init=sampled` are
  separate rows. Settings that vary only from task to task (a task's default epochs) do not split rows.
- A cell is test accuracy (%), the mean over seeds, ± the sample standard deviation (n − 1) when there are several.
- A group mean is the mean over the group's tasks of the per-task means, shown only when every task of the group has
  a record; VTAB's overall mean is the mean of its three group means (the VPT convention).
- Best per column within a backbone is bold, second underlined (ranked on the printed, rounded value, so ties share).
- `[n]` counts tasks where the row beats full fine-tuning's mean on the same backbone.
Below its caption every table names the protocol (recipe, or `none`) its rows ran under, and says so where its rows
ran under several (`protocol_lines`): rows under different protocols answer different questions.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from bench import BenchError
from bench.data import TASK_GROUPS, TASKS, TaskGroup
from bench.record import COLUMNS, RunRecord, hp_column
from bench.store import Store, variant_labels

REFERENCE = "full"  # the method `[n]` compares against, as VPT's tables do
TEST_STAGES = ("fixed", "final")  # `tune` runs score val only and never count


def natural_key(label: str) -> list[str | float]:
    """Order labels by the numbers in them, so `epochs=30` comes before `epochs=100` and `num_prompts=5` before
    `num_prompts=20`; re.split with a group alternates text and number, so the lists compare item by item."""
    parts = re.split(r"(\d+(?:\.\d+)?)", label)
    return [float(part) if i % 2 else part for i, part in enumerate(parts)]


def _by_row(item: tuple[tuple[str, str], Any]) -> tuple[str, list[str | float]]:
    (backbone, variant), _ = item
    return backbone, natural_key(variant)


@dataclass(frozen=True)
class Group:
    """A task group: its id in records (`record['task']['group']`), its column labels and its task order."""

    id: str
    label: str
    tasks: tuple[str, ...]
    summary_label: str


@dataclass(frozen=True)
class Suite:
    """One paper table: a task family. `overall` labels the mean of the group means; None for a single group."""

    key: str
    title: str
    groups: tuple[Group, ...]
    overall: str | None = None


def suites(recorded_groups: Iterable[str] = ()) -> list[Suite]:
    """One table per task family, learnt from the registries: groups as their families declare them
    (`bench.data.register_group`), tasks in registration order. A group that only records name (its family is not
    registered here, or declares no group) still gets a table, named after the part of its id before `/`."""
    members: dict[str, list[str]] = defaultdict(list)
    for entry in TASKS.entries():
        members[entry.obj.group].append(entry.name)
    declared = {entry.name: entry.obj for entry in TASK_GROUPS.entries()}
    ids = list(dict.fromkeys([*declared, *members, *sorted(set(recorded_groups) - set(members) - set(declared))]))
    families: dict[str, list[Group]] = defaultdict(list)
    titles: dict[str, str] = {}
    for gid in ids:
        family = gid.split("/")[0]
        group = declared.get(gid, TaskGroup(gid, gid.split("/")[-1], family))
        titles.setdefault(family, group.table_title)
        families[family].append(Group(gid, group.label, tuple(members[gid]), group.summary_label or group.label))
    made = []
    for family, groups in families.items():
        if len(groups) == 1:  # a single group's column is the table's mean
            groups = [Group(groups[0].id, "Mean", groups[0].tasks, groups[0].summary_label)]
        made.append(Suite(family, titles[family], tuple(groups), "Mean" if len(groups) > 1 else None))
    return made


# --- records -------------------------------------------------------------------------------------------------------


def load_runs(source: str | Path | Store) -> pd.DataFrame:
    """One row per finished run that read the test split (`reported_records`), as `runs_frame` gives it.

    Raises:
        BenchError: the store holds no such run.
    """
    return runs_frame(reported_records(source if isinstance(source, Store) else Store(source)))


def reported_records(store: Store) -> list[RunRecord]:
    """The finished runs that read the test split, the runs a report is about. Unreadable records are set aside
    (see `Store.set_aside`).

    Raises:
        BenchError: the store holds no such run.
    """
    records = [r for r in store.records() if r.done and r.spec.stage in TEST_STAGES]
    if not records:
        raise BenchError(
            f"no finished runs in {store.runs}; run `bench run --results {store.root}` first or pass --results DIR"
        )
    return records


def runs_frame(records: list[RunRecord]) -> pd.DataFrame:
    """One row per record: the store's flat row (spec, `hp.*`, metrics, params, wall-clock) plus its variant label,
    NMI and val curves, and the protocol facts `--published` compares."""
    runs = pd.DataFrame([r.row() for r in records])
    runs["acc"] = runs[COLUMNS.metrics.test_acc]
    runs["nmi"] = [(r.curves or {}).get("nmi") for r in records]
    runs["val_curve"] = [(r.curves or {}).get("val_acc") or None for r in records]
    runs["fraction"] = [r.spec.hparams.get("train_fraction", r.task.data.get("train_fraction") if r.task else None)
                        for r in records]
    # The protocol facts `bench report --published` sets beside a paper's (bench.report.published).
    runs["weights_variant"] = [(r.backbone or {}).get("variant") for r in records]
    runs["layout"] = [r.task.data.get("layout") if r.task else None for r in records]
    runs["input_norm"] = [_input_norm(r) for r in records]
    runs["recipe"] = [r.spec.recipe or "none" for r in records]
    runs["variant"] = variants(runs)
    return runs


def _input_norm(record: RunRecord) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The mean and std the run's inputs were normalised with: what the engine recorded doing, else (records
    without it) its backbone's."""
    done = record.provenance.transform if record.provenance is not None else {}
    source = done if "mean" in done else record.backbone or {}
    return (tuple(source["mean"]), tuple(source["std"])) if "mean" in source and "std" in source else None


def variants(runs: pd.DataFrame, without: Sequence[str] = ()) -> pd.Series:
    """`method` plus the hyper-parameters that tell its runs apart (bench.store's rule), leaving out `without`."""
    labels = variant_labels(runs.drop(columns=[hp_column(name) for name in without], errors="ignore"))
    return runs[COLUMNS.method] + labels.map(lambda v: f" {v}" if v else "")


def protocol_lines(runs: pd.DataFrame, rows: str = "variant") -> tuple[str, ...]:
    """A table's label: the protocols (recipes, `none` without one) the runs of its rows ran under, and where there
    are several, a note naming the rows (the `rows` column's labels) of each."""
    by_recipe = {name: sorted(set(frame[rows]), key=natural_key) for name, frame in runs.groupby("recipe")}
    label = f"Protocol: {', '.join(by_recipe)}."
    if len(by_recipe) < 2:
        return (label,)
    which = "; ".join(f"{name}: {', '.join(labels)}" for name, labels in by_recipe.items())
    return label, (f"Note: this table mixes protocols ({which}); rows under different protocols were not trained "
                   "alike, so their difference is not the methods' alone.")


# --- tables --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """`kind`: `acc` (mean ± std; ranked in the tables that rank it), `pct` (a percentage to two decimals, not
    ranked: learnable %, a published mean), `rank` (an average rank to two decimals, not ranked), `count` (the `[n]`
    column), `gain` (signed points, ± std when it has one, not ranked), `delta` (signed points to two decimals, not
    ranked), `number` (a whole number, not ranked), `verdict` (yes for a true value, no for a false one) or `text`
    (the cell's `text`, left-aligned)."""

    key: str
    label: str
    kind: str = "acc"


@dataclass
class Cell:
    mean: float | None = None
    std: float | None = None
    rank: int = 0  # 1 best, 2 second within the backbone block
    text: str | None = None  # the value of a `text` column


@dataclass
class Table:
    key: str
    caption: str
    columns: list[Column]
    rows: list[tuple[str, str, dict[str, Cell]]]  # (backbone, variant, cells by column key)
    spans: list[tuple[str, int]] = field(default_factory=list)  # group header over the first acc columns
    protocol: tuple[str, ...] = ()  # the label lines `protocol_lines` gives, under the caption


def _over_seeds(values: pd.Series) -> Cell:
    """Mean and sample std (n − 1) of one value per seed; no std from a single seed."""
    return Cell(float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else None)


def _cells(runs: pd.DataFrame) -> dict[tuple[str, str], dict[str, Cell]]:
    """Per (backbone, variant), per task: mean and sample std of test accuracy over seeds."""
    out: dict[tuple[str, str], dict[str, Cell]] = defaultdict(dict)
    for (backbone, variant, task), acc in runs.groupby([COLUMNS.backbone, "variant", COLUMNS.task])["acc"]:
        out[(backbone, variant)][task] = _over_seeds(acc)
    return out


def _group_tasks(group: Group, runs: pd.DataFrame) -> list[str]:
    extra = sorted(set(runs.loc[runs[COLUMNS.group] == group.id, COLUMNS.task]) - set(group.tasks))
    return [*group.tasks, *extra]


def _mean_of(cells: dict[str, Cell], keys: Sequence[str]) -> Cell:
    values = [cells[k].mean for k in keys if k in cells and cells[k].mean is not None]
    return Cell(float(np.mean(values))) if keys and len(values) == len(keys) else Cell()


def suite_table(suite: Suite, runs: pd.DataFrame) -> Table | None:
    """The suite's paper table, or None when no record belongs to it."""
    mine = runs[runs[COLUMNS.group].isin([g.id for g in suite.groups])]
    if mine.empty:
        return None
    tasks = {g.id: _group_tasks(g, mine) for g in suite.groups}
    columns = [Column("params", "Params (%)", "pct")]
    columns += [Column(t, t) for g in suite.groups for t in tasks[g.id]]
    columns += [Column(f"mean:{g.id}", g.label) for g in suite.groups]
    if suite.overall:
        columns.append(Column("mean:overall", suite.overall))
    columns.append(Column("beats", "[n]", "count"))

    per_task = _cells(mine)
    # The mean over tasks, as the caption says: a task run at more seeds must not weigh more.
    params = mine.groupby([COLUMNS.backbone, "variant", COLUMNS.task])[COLUMNS.params.learnable_pct].mean().groupby(
        [COLUMNS.backbone, "variant"]).mean()
    rows = []
    for (backbone, variant), cells in sorted(per_task.items(), key=_by_row):
        for g in suite.groups:
            cells[f"mean:{g.id}"] = _mean_of(cells, tasks[g.id])
        if suite.overall:
            cells["mean:overall"] = _mean_of(cells, [f"mean:{g.id}" for g in suite.groups])
        pct = params.get((backbone, variant))
        cells["params"] = Cell(None if pct is None or math.isnan(pct) else float(pct))
        rows.append((backbone, variant, cells))
    _count_beats(rows, [t for g in suite.groups for t in tasks[g.id]], mine)
    _rank(rows, [c.key for c in columns if c.kind == "acc"])
    spans = [(g.label, len(tasks[g.id])) for g in suite.groups] if len(suite.groups) > 1 else []
    overall = f" {suite.overall}: the mean of the group means." if suite.overall else ""
    return Table(suite.key, f"{suite.title}: {_CONVENTIONS}{overall}", columns, rows, spans, protocol_lines(mine))


_CONVENTIONS = (
    "test accuracy (\\%), mean over seeds $\\pm$ sample std ($n-1$) where more than one seed; best per column within a "
    "backbone in bold, second underlined; -- no record. Params: learnable parameters (head included) as \\% of the "
    "backbone, mean over tasks. Group means: mean over the group's tasks, shown only when every task has a record. "
    "[n]: tasks where the method beats full fine-tuning."
)


def _count_beats(rows: list[tuple[str, str, dict[str, Cell]]], tasks: Sequence[str], runs: pd.DataFrame) -> None:
    """Fill each row's `[n]`: tasks where it beats the best full fine-tuning variant of its backbone."""
    reference_variants = set(runs.loc[runs[COLUMNS.method] == REFERENCE, "variant"])
    for backbone, variant, cells in rows:
        references = [c for b, v, c in rows if b == backbone and v in reference_variants]
        if variant in reference_variants or not references:
            cells["beats"] = Cell()
            continue
        wins = 0
        for task in tasks:
            best = max((r[task].mean for r in references if task in r), default=None)
            if task in cells and best is not None and cells[task].mean > best:
                wins += 1
        cells["beats"] = Cell(float(wins))


def _rank(rows: list[tuple[str, str, dict[str, Cell]]], keys: Sequence[str]) -> None:
    for backbone in {b for b, _, _ in rows}:
        block = [cells for b, _, cells in rows if b == backbone]
        for key in keys:
            present = [c[key] for c in block if key in c and c[key].mean is not None]
            distinct = sorted({round(c.mean, 1) for c in present}, reverse=True)
            for cell in present:
                value = round(cell.mean, 1)
                cell.rank = 1 if value == distinct[0] else 2 if len(distinct) > 1 and value == distinct[1] else 0


def summary_table(runs: pd.DataFrame) -> Table:
    """Backbone × method → mean accuracy of every task group that has records (the paper's summary table)."""
    present = set(runs[COLUMNS.group].dropna())
    groups = [g for suite in suites(present) for g in suite.groups if g.id in present]
    tasks = {g.id: _group_tasks(g, runs) for g in groups}
    columns = [Column(f"mean:{g.id}", g.summary_label) for g in groups]
    rows = []
    for (backbone, variant), cells in sorted(_cells(runs).items(), key=_by_row):
        rows.append((backbone, variant, {f"mean:{g.id}": _mean_of(cells, tasks[g.id]) for g in groups}))
    _rank(rows, [c.key for c in columns])
    caption = ("Summary: mean test accuracy (\\%) per task group; a group mean is shown only when every task of the "
               "group has a record; best per column within a backbone in bold, second underlined; -- no record.")
    return Table("summary", caption, columns, rows, protocol=protocol_lines(runs))


def task_order(tasks: Iterable[str]) -> list[str]:
    """The tasks in the suites' order (each family's registration order), then any unregistered ones by name."""
    known = [t for suite in suites() for g in suite.groups for t in g.tasks]
    return sorted(set(tasks), key=lambda t: (known.index(t) if t in known else len(known), t))


def last_third_gain(curve: Sequence[float]) -> float:
    """Val accuracy gained over the last third of training: the mean of the last 3 epochs minus the mean of the 3
    epochs that end two thirds of the way through. Near 0, the run had plateaued before it stopped."""
    window = min(3, len(curve))
    cut = max(window, round(2 * len(curve) / 3))
    return float(np.mean(curve[-window:]) - np.mean(curve[cut - window:cut]))


def convergence_table(runs: pd.DataFrame) -> Table | None:
    """Variant × task → val accuracy gained over the last third of training (`last_third_gain`), mean over seeds;
    None when no record has a val curve (only `fixed` runs score val every epoch)."""
    have = runs[runs["val_curve"].notna()]
    if have.empty:
        return None
    have = have.assign(gain=have["val_curve"].map(last_third_gain))
    columns = [Column(task, task, "gain") for task in task_order(have[COLUMNS.task])]
    rows = []
    for (backbone, variant), frame in sorted(have.groupby([COLUMNS.backbone, "variant"]), key=_by_row):
        rows.append((backbone, variant, {task: Cell(float(f["gain"].mean())) for task, f in frame.groupby(COLUMNS.task)}))
    caption = ("Convergence: validation accuracy (points) gained over the last third of training (mean of the last 3 "
               "epochs minus the mean of the 3 epochs ending two thirds of the way through), mean over seeds. Near 0: "
               "the run had plateaued before it stopped; large and positive: more epochs would likely have helped.")
    return Table("convergence", caption, columns, rows, protocol=protocol_lines(have))


def _budget_variants(runs: pd.DataFrame) -> pd.Series:
    """Variant labels without `epochs`, and without `warmup_epochs` where the recipe scales it with the epochs (one
    warm-up per budget): a longer budget is then the same variant trained longer. Where a warm-up was swept at some
    budget, it stays in the labels of that variant and task."""
    coarse = variants(runs, without=("epochs", "warmup_epochs"))
    if hp_column("warmup_epochs") not in runs:
        return coarse
    keys = [runs[COLUMNS.backbone], coarse, runs[COLUMNS.task]]
    per_budget = runs.groupby([*keys, runs[hp_column("epochs")]], dropna=False)[hp_column("warmup_epochs")].transform("nunique")
    swept = per_budget.groupby(keys, dropna=False).transform("max") > 1
    return coarse.where(~swept, variants(runs, without=("epochs",)))


def budget_table(runs: pd.DataFrame) -> Table | None:
    """Per variant and task recorded at several epoch budgets, one row per step to the next longer budget: test
    accuracy before and after, and the gain, over the seeds that ran both; None when no variant has two budgets."""
    if hp_column("epochs") not in runs:
        return None
    runs = runs.assign(budget_variant=_budget_variants(runs))
    columns = [Column("before", "before"), Column("after", "after"), Column("gain", "gain", "gain"),
               Column("seeds", "seeds", "number"), Column("plateaued", "plateaued", "verdict")]
    order = task_order(runs[COLUMNS.task])
    rows, paired_runs = [], []
    for (backbone, variant, task), frame in sorted(
            runs[runs[hp_column("epochs")].notna()].groupby([COLUMNS.backbone, "budget_variant", COLUMNS.task]),
            key=lambda item: (item[0][0], natural_key(item[0][1]), order.index(item[0][2]))):
        by_budget = frame.groupby(hp_column("epochs"))
        budgets = sorted(by_budget.groups)
        for short, long in zip(budgets, budgets[1:]):
            paired = by_budget.get_group(short)[[COLUMNS.seed, "acc"]].merge(
                by_budget.get_group(long)[[COLUMNS.seed, "acc"]], on=COLUMNS.seed, suffixes=("_before", "_after"))
            if paired.empty:
                continue
            paired_runs.append(frame[frame[hp_column("epochs")].isin([short, long])
                                     & frame[COLUMNS.seed].isin(paired[COLUMNS.seed])])
            gain = _over_seeds(paired["acc_after"] - paired["acc_before"])
            # One seed has no spread to weigh its gain against, so it gives no verdict.
            plateaued = Cell() if gain.std is None else Cell(float(gain.mean <= gain.std))
            rows.append((backbone, f"{variant} on {task}: {short:g} to {long:g} epochs",
                         {"before": _over_seeds(paired["acc_before"]), "after": _over_seeds(paired["acc_after"]),
                          "gain": gain, "seeds": Cell(float(len(paired))), "plateaued": plateaued}))
    if not rows:
        return None
    caption = ("Budget: test accuracy (\\%) of a variant on a task before and after each step to the next longer "
               "recorded training budget (warm-up scales with the epochs under the recipes), over the seeds that ran "
               "both, mean $\\pm$ sample std; gain: after minus before, paired by seed; plateaued: yes when the "
               "mean gain is at most the gains' sample std (the shorter budget had plateaued), no when it is larger, "
               "none from one seed. Under a cosine schedule a val curve flattens at its end whether or not more "
               "epochs would help, so this, not the convergence table, is the test.")
    return Table("budget", caption, columns, rows, protocol=protocol_lines(pd.concat(paired_runs), rows="budget_variant"))
