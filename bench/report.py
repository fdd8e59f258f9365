"""`bench report`: the tables and figures of a PEFT paper, built only from finished records in the results store.

Tables follow VPT's and SPT's layout (Jia et al., ECCV 2022; Wang et al., ICML 2024): one per task family (FGVC,
VTAB-1k, the offline micro suite; groups, labels and task order as each family's file declares them) and a summary of
backbone × method → group means, each written as LaTeX (booktabs),
Markdown and CSV with the same numbers. Figures follow SPT's: NMI between prompts and patch tokens per epoch
(Figure 2), the prompt-initialisation ablation (3a), prompt length (3c), backbone size (3d), training-data fraction
(4), and accuracy against learnable parameters. A figure or table whose records are absent is skipped with a note.

Conventions, stated in every caption:
- A row is a method variant: the method name plus the hyper-parameters that take several values for the same
  (method, task, backbone) (`bench.store.variant_labels`), so `spt-deep init=kmeans` and `spt-deep init=sampled` are separate rows. Settings that
  vary only from task to task (a task's default epochs) do not split rows.
- A cell is test accuracy (%), the mean over seeds, ± the sample standard deviation (n − 1) when there are several.
- A group mean is the mean over the group's tasks of the per-task means, shown only when every task of the group has
  a record; VTAB's overall mean is the mean of its three group means (the VPT convention).
- Best per column within a backbone is bold, second underlined (ranked on the printed, rounded value, so ties share).
- `[n]` counts tasks where the row beats full fine-tuning's mean on the same backbone.
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
from matplotlib.ticker import MaxNLocator

from bench import BenchError
from bench.data import TASK_GROUPS, TASKS, TaskGroup
from bench.store import Store, flatten, variant_labels

REFERENCE = "full"  # the method `[n]` compares against, as VPT's tables do
TEST_STAGES = ("fixed", "final")  # `tune` runs score val only and never count
FORMATS = ("tex", "md", "csv")
MISSING = {"tex": "--", "md": "–", "csv": ""}
INIT_ORDER = ("random", "sampled", "mean", "max", "kmeans")
# A run whose threads got less than this share of their cores' time had other work on them (bench.engine's
# `cpu_share`): on 2 cores, a two-thread micro run measured 0.99 alone and 0.50 beside another such run.
SHARED_CORES_BELOW = 0.75


def natural_key(label: str) -> list[str | float]:
    """Order labels by the numbers in them, so `epochs=30` comes before `epochs=100` and `num_prompts=5` before
    `num_prompts=20`; re.split with a group alternates text and number, so the lists compare item by item."""
    parts = re.split(r"(\d+(?:\.\d+)?)", label)
    return [float(part) if i % 2 else part for i, part in enumerate(parts)]


def _by_row(item: tuple[tuple[str, str], Any]) -> tuple[str, list[str | float]]:
    (backbone, variant), _ = item
    return backbone, natural_key(variant)


def _series_groups(frame: pd.DataFrame, by: str | pd.Series) -> list[tuple[str, pd.DataFrame]]:
    """`frame` grouped by a series label, in `natural_key` order: the order of every figure's lines and legend."""
    return sorted(frame.groupby(by), key=lambda item: natural_key(item[0]))


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
    """One row per finished run that read the test split: the store's flat row (spec, `hp.*`, metrics, params,
    wall-clock) plus its variant label and NMI curve. Unreadable records are set aside (see `Store.set_aside`).

    Raises:
        BenchError: the store holds no such run.
    """
    store = source if isinstance(source, Store) else Store(source)
    records = [r for r in store.records()
               if r.get("status") == "done" and r["spec"].get("stage", "fixed") in TEST_STAGES]
    if not records:
        raise BenchError(
            f"no finished runs in {store.runs}; run `bench run --results {store.root}` first or pass --results DIR"
        )
    runs = pd.DataFrame([flatten(r) for r in records])
    runs["acc"] = runs["test_acc"]
    runs["nmi"] = [r.get("curves", {}).get("nmi") for r in records]
    runs["val_curve"] = [r.get("curves", {}).get("val_acc") or None for r in records]
    runs["fraction"] = [r["spec"]["hparams"].get("train_fraction", r.get("task", {}).get("train_fraction"))
                        for r in records]
    runs["variant"] = _variants(runs)
    return runs


def _variants(runs: pd.DataFrame, without: Sequence[str] = ()) -> pd.Series:
    """`method` plus the hyper-parameters that tell its runs apart (bench.store's rule), leaving out `without`."""
    labels = variant_labels(runs.drop(columns=[f"hp.{name}" for name in without], errors="ignore"))
    return runs["method"] + labels.map(lambda v: f" {v}" if v else "")


# --- tables --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """`kind`: `acc` (ranked, mean ± std), `pct` (learnable %, not ranked), `count` (the `[n]` column), `gain`
    (signed points, ± std when it has one, not ranked), `number` (a whole number, not ranked) or `verdict` (yes for
    a true value, no for a false one)."""

    key: str
    label: str
    kind: str = "acc"


@dataclass
class Cell:
    mean: float | None = None
    std: float | None = None
    rank: int = 0  # 1 best, 2 second within the backbone block


@dataclass
class Table:
    key: str
    caption: str
    columns: list[Column]
    rows: list[tuple[str, str, dict[str, Cell]]]  # (backbone, variant, cells by column key)
    spans: list[tuple[str, int]] = field(default_factory=list)  # group header over the first acc columns


def _over_seeds(values: pd.Series) -> Cell:
    """Mean and sample std (n − 1) of one value per seed; no std from a single seed."""
    return Cell(float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else None)


def _cells(runs: pd.DataFrame) -> dict[tuple[str, str], dict[str, Cell]]:
    """Per (backbone, variant), per task: mean and sample std of test accuracy over seeds."""
    out: dict[tuple[str, str], dict[str, Cell]] = defaultdict(dict)
    for (backbone, variant, task), acc in runs.groupby(["backbone", "variant", "task"])["acc"]:
        out[(backbone, variant)][task] = _over_seeds(acc)
    return out


def _group_tasks(group: Group, runs: pd.DataFrame) -> list[str]:
    extra = sorted(set(runs.loc[runs["group"] == group.id, "task"]) - set(group.tasks))
    return [*group.tasks, *extra]


def _mean_of(cells: dict[str, Cell], keys: Sequence[str]) -> Cell:
    values = [cells[k].mean for k in keys if k in cells and cells[k].mean is not None]
    return Cell(float(np.mean(values))) if keys and len(values) == len(keys) else Cell()


def suite_table(suite: Suite, runs: pd.DataFrame) -> Table | None:
    """The suite's paper table, or None when no record belongs to it."""
    mine = runs[runs["group"].isin([g.id for g in suite.groups])]
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
    params = mine.groupby(["backbone", "variant", "task"])["params.learnable_pct"].mean().groupby(
        ["backbone", "variant"]).mean()
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
    return Table(suite.key, f"{suite.title}: {_CONVENTIONS}{overall}", columns, rows, spans)


_CONVENTIONS = (
    "test accuracy (\\%), mean over seeds $\\pm$ sample std ($n-1$) where more than one seed; best per column within a "
    "backbone in bold, second underlined; -- no record. Params: learnable parameters (head included) as \\% of the "
    "backbone, mean over tasks. Group means: mean over the group's tasks, shown only when every task has a record. "
    "[n]: tasks where the method beats full fine-tuning."
)


def _count_beats(rows: list[tuple[str, str, dict[str, Cell]]], tasks: Sequence[str], runs: pd.DataFrame) -> None:
    """Fill each row's `[n]`: tasks where it beats the best full fine-tuning variant of its backbone."""
    reference_variants = set(runs.loc[runs["method"] == REFERENCE, "variant"])
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
    present = set(runs["group"].dropna())
    groups = [g for suite in suites(present) for g in suite.groups if g.id in present]
    tasks = {g.id: _group_tasks(g, runs) for g in groups}
    columns = [Column(f"mean:{g.id}", g.summary_label) for g in groups]
    rows = []
    for (backbone, variant), cells in sorted(_cells(runs).items(), key=_by_row):
        rows.append((backbone, variant, {f"mean:{g.id}": _mean_of(cells, tasks[g.id]) for g in groups}))
    _rank(rows, [c.key for c in columns])
    caption = ("Summary: mean test accuracy (\\%) per task group; a group mean is shown only when every task of the "
               "group has a record; best per column within a backbone in bold, second underlined; -- no record.")
    return Table("summary", caption, columns, rows)


def _number(cell: Cell, kind: str, fmt: str) -> str:
    if cell.mean is None:
        return MISSING[fmt]
    if kind == "count":
        return f"[{cell.mean:.0f}]"
    if kind == "pct":
        return f"{cell.mean:.2f}"
    if kind == "number":
        return f"{cell.mean:.0f}"
    if kind == "verdict":
        return "yes" if cell.mean else "no"
    pm = " $\\pm$ " if fmt == "tex" else " ± "
    spread = f"{pm}{cell.std:.1f}" if cell.std is not None else ""
    if kind == "gain":
        return f"{cell.mean:+.1f}{spread}"
    text = f"{cell.mean:.1f}{spread}"
    if fmt == "tex":
        return {1: f"\\textbf{{{text}}}", 2: f"\\underline{{{text}}}"}.get(cell.rank, text)
    return {1: f"**{text}**", 2: f"*{text}*"}.get(cell.rank, text)


_TEX_SPECIAL = str.maketrans({"\\": "\\textbackslash{}", "_": "\\_", "%": "\\%", "&": "\\&", "#": "\\#",
                              "$": "\\$", "{": "\\{", "}": "\\}", "~": "\\textasciitilde{}", "^": "\\^{}"})


def _tex_escape(text: str) -> str:
    return text.translate(_TEX_SPECIAL)


def to_latex(table: Table) -> str:
    """A booktabs `table` environment, ready for `\\input` (needs `\\usepackage{booktabs}`)."""
    header = ["Backbone", "Method", *[_tex_escape(c.label) for c in table.columns]]
    spec = "ll" + "".join("r" if c.kind != "acc" else "c" for c in table.columns)
    lines = ["\\begin{table}[t]", "\\centering", "\\small", f"\\caption{{{table.caption}}}",
             f"\\label{{tab:{table.key}}}", f"\\begin{{tabular}}{{{spec}}}", "\\toprule"]
    if table.spans:
        first = 3 + sum(1 for c in table.columns[: next(i for i, c in enumerate(table.columns) if c.kind == "acc")])
        spans, rules, start = [], [], first
        for label, width in table.spans:
            spans.append(f"\\multicolumn{{{width}}}{{c}}{{{label}}}")
            rules.append(f"\\cmidrule(lr){{{start}-{start + width - 1}}}")
            start += width
        lead = " & " * (first - 1)
        lines += [lead + " & ".join(spans) + " \\\\", " ".join(rules)]
    lines += [" & ".join(header) + " \\\\", "\\midrule"]
    previous = None
    for backbone, variant, cells in table.rows:
        if previous is not None and backbone != previous:
            lines.append("\\midrule")
        shown = _tex_escape(backbone) if backbone != previous else ""
        values = [_number(cells.get(c.key, Cell()), c.kind, "tex") for c in table.columns]
        lines.append(" & ".join([shown, _tex_escape(variant), *values]) + " \\\\")
        previous = backbone
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(lines)


def to_markdown(table: Table) -> str:
    header = ["Backbone", "Method", *[c.label for c in table.columns]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * len(table.columns)) + "|"]
    for backbone, variant, cells in table.rows:
        values = [_number(cells.get(c.key, Cell()), c.kind, "md") for c in table.columns]
        lines.append("| " + " | ".join([backbone, variant, *values]) + " |")
    caption = table.caption.replace("$\\pm$", "±").replace("($n-1$)", "(n − 1)").replace("\\%", "%")
    caption = caption.replace("underlined", "in italics").replace("-- no record", "– no record")
    return "\n".join(lines) + f"\n\n{caption}\n"


def to_frame(table: Table) -> pd.DataFrame:
    """The table's numbers, one row per (backbone, method); accuracy columns get a `<name>_std` companion."""
    records = []
    for backbone, variant, cells in table.rows:
        row: dict[str, Any] = {"backbone": backbone, "method": variant}
        for column in table.columns:
            cell = cells.get(column.key, Cell())
            name = column.label if column.kind == "acc" else column.key
            row[name] = cell.mean
            if column.kind == "acc" or cell.std is not None:
                row[f"{name}_std"] = cell.std
        records.append(row)
    return pd.DataFrame(records)


def write_table(table: Table, out: Path, formats: Sequence[str]) -> list[Path]:
    paths = []
    for fmt in formats:
        path = out / f"{table.key}.{fmt}"
        if fmt == "tex":
            path.write_text(to_latex(table))
        elif fmt == "md":
            path.write_text(to_markdown(table))
        else:
            to_frame(table).to_csv(path, index=False)
        paths.append(path)
    return paths


# --- figures -------------------------------------------------------------------------------------------------------

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_LINES = ("-", "--", ":", "-.")
_HATCHES = ("", "//", "..", "xx", "\\\\", "++")


def _style(i: int) -> dict[str, Any]:
    """Marker and line style differ for every series, so curves stay apart in grey print."""
    return {"marker": _MARKERS[i % len(_MARKERS)], "linestyle": _LINES[i % len(_LINES)], "markersize": 5}


def _figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (6.0, 3.2)) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(context="paper", style="whitegrid", palette="colorblind")
    return plt.subplots(rows, cols, figsize=size, constrained_layout=True, squeeze=rows * cols == 1)


def _legend(ax: Any) -> None:
    """Beside the axes, not on them: with ten method variants an inside legend hides curves."""
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def _save(fig: Any, out: Path, stem: str) -> list[Path]:
    import matplotlib.pyplot as plt

    paths = [out / f"{stem}.pdf", out / f"{stem}.png"]
    for path in paths:
        fig.savefig(path, dpi=200, bbox_inches="tight")
    plt.close(fig)
    return paths


def _series_label(frame: pd.DataFrame, exclude: str | None, by_backbone: bool = True) -> pd.Series:
    """Variant labels without the plotted setting (it is the x axis), prefixed by the backbone when several."""
    labels = _variants(frame, without=(exclude,) if exclude else ())
    if by_backbone and frame["backbone"].nunique() > 1:
        labels = frame["backbone"] + " · " + labels
    return labels


def _on_common_tasks(frame: pd.DataFrame, by: str) -> pd.DataFrame:
    """Rows of the tasks recorded at every value of `by`, so that all points of a series average the same tasks."""
    common = set.intersection(*(set(f["task"]) for _, f in frame.groupby(by)))
    return frame[frame["task"].isin(common)]


def fig_nmi(runs: pd.DataFrame, out: Path) -> list[Path] | str:
    """Figure 2: NMI between prompts and patch tokens, mean over blocks, at init (epoch 0) and after each epoch."""
    have = runs[runs["nmi"].notna()]
    if have.empty:
        return "NMI figure skipped: no record carries curves['nmi'] (only prompt methods record it)"
    fig, ax = _figure()
    labels = _series_label(have, exclude=None)
    for i, (label, frame) in enumerate(_series_groups(have, labels)):
        per_run = [pd.Series([float(np.mean(layers)) for layers in curve]) for curve in frame["nmi"]]
        mean = pd.concat(per_run, axis=1).mean(axis=1)
        ax.plot(mean.index, mean.values, label=label, **_style(i))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="epoch (0 = at init)", ylabel="NMI, prompts vs patch tokens\n(mean over blocks)", ylim=(0, 1))
    _legend(ax)
    return _save(fig, out, "nmi_vs_epoch")


def init_ablation_stats(runs: pd.DataFrame) -> pd.DataFrame | str:
    """Per (series, init): accuracy over the tasks every init of the series has, as the mean over seeds of each
    seed's task mean, with the sample std (n − 1) over seeds and their count; the construction wall-clock; and
    `cores`, how its runs had the CPU while they built: "alone", "shared" (some run's `cpu_share` was below
    SHARED_CORES_BELOW) or "unknown" (some run recorded none: a GPU run, or a record older than the measure).

    A series with a single initialisation compares nothing and is left out (a store that swept the epochs of one
    init beside an init sweep at one budget). Returns a note instead when no series has two initialisations.
    """
    skipped = "init ablation skipped: no series recorded at two prompt initialisations"
    have = runs[runs["hp.init"].notna()].copy() if "hp.init" in runs else runs.iloc[:0]
    if have.empty:
        return skipped
    have["init"] = have["hp.init"]
    have["series"] = _series_label(have, exclude="init")
    share = have["cpu_share.build"].astype(float) if "cpu_share.build" in have \
        else pd.Series(np.nan, index=have.index)
    have["cores"] = np.select([share.isna(), share < SHARED_CORES_BELOW], ["unknown", "shared"], "alone")
    parts = []
    for name, frame in have.groupby("series"):
        if frame["init"].nunique() < 2:
            continue
        common = _on_common_tasks(frame, "init")
        per_seed = common.groupby(["init", "seed"]).agg(acc=("acc", "mean"),
                                                        secs=("wallclock.prompt_construction", "mean"))
        stats = per_seed.groupby("init").agg(acc=("acc", "mean"), std=("acc", "std"), seeds=("acc", "size"),
                                             secs=("secs", "mean"))
        stats["cores"] = common.groupby("init")["cores"].agg(_worst_cores)
        parts.append(stats.assign(series=name).reset_index())
    if not parts:
        return skipped
    return pd.concat(parts).set_index(["series", "init"])


def _worst_cores(states: pd.Series) -> str:
    """One bar's runs: "shared" if any shared the cores, else "unknown" if any did not measure, else "alone"."""
    return next(state for state in ("shared", "unknown", "alone") if (states == state).any())


_CORES_MARK = {"alone": "", "shared": "*", "unknown": "?"}


def fig_init_ablation(runs: pd.DataFrame, out: Path) -> list[Path] | str:
    """Figure 3a: accuracy per prompt initialisation, ± std over seeds, construction wall-clock on each bar."""
    stats = init_ablation_stats(runs)
    if isinstance(stats, str):
        return stats
    recorded = set(stats.index.get_level_values("init"))
    inits = [i for i in INIT_ORDER if i in recorded] + sorted(recorded - set(INIT_ORDER))
    series = sorted(set(stats.index.get_level_values("series")), key=natural_key)
    fig, ax = _figure()
    width = 0.8 / len(series)
    for i, name in enumerate(series):
        mine = stats.loc[name]
        mine = mine.reindex([x for x in inits if x in mine.index])
        xs = np.array([inits.index(x) for x in mine.index]) + (i - (len(series) - 1) / 2) * width
        # A single seed has no spread to show: no whisker rather than a zero-length one that reads as certainty.
        spread = mine["std"].where(mine["seeds"] > 1)
        bars = ax.bar(xs, mine["acc"], width, yerr=spread, capsize=2, label=name,
                      hatch=_HATCHES[i % len(_HATCHES)], edgecolor="black", error_kw={"elinewidth": 0.8})
        for bar, secs, cores, above in zip(bars, mine["secs"], mine["cores"], spread.fillna(0.0)):
            ax.annotate(f"{secs:.2f}s{_CORES_MARK[cores]}", (bar.get_x() + bar.get_width() / 2,
                                                             bar.get_height() + above),
                        ha="center", va="bottom", fontsize="xx-small")
    ax.set_xticks(range(len(inits)), inits)
    ax.set(xlabel="prompt initialisation (label: construction wall-clock;\n* some runs shared the cores, "
                  "? some did not measure it)",
           ylabel="test accuracy (%)\n(mean ± sample std over seeds)")
    _legend(ax)
    return _save(fig, out, "init_ablation")


def _line_figure(runs: pd.DataFrame, x: pd.Series, setting: str | None, xlabel: str, logx: bool = False,
                 by_backbone: bool = True) -> Any | None:
    """Accuracy against `x`, one line per variant (without `setting`); None when no line has two x values."""
    have = runs.assign(x=x)[x.notna()]
    if have.empty:
        return None
    have = have.assign(series=_series_label(have, exclude=setting, by_backbone=by_backbone))
    common = pd.concat(_on_common_tasks(frame, "x") for _, frame in have.groupby("series"))
    means = common.groupby(["series", "x"])["acc"].mean().reset_index()
    if means.groupby("series")["x"].nunique().max() < 2:
        return None
    fig, ax = _figure()
    for i, (name, frame) in enumerate(_series_groups(means, "series")):
        ax.plot(frame["x"], frame["acc"], label=name, **_style(i))
    if logx:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel="test accuracy (%)\n(mean over tasks and seeds)")
    _legend(ax)
    return fig


def fig_prompt_length(runs: pd.DataFrame, out: Path) -> list[Path] | str:
    """Figure 3c: accuracy against the number of prompts."""
    if "hp.num_prompts" not in runs:
        return "prompt-length figure skipped: no record has a prompt length"
    made = _line_figure(runs, runs["hp.num_prompts"], "num_prompts",
                        "prompt length (tokens per block)")
    return _save(made, out, "acc_vs_prompt_length") if made else \
        "prompt-length figure skipped: no method has records at two prompt lengths"


def fig_backbone_size(runs: pd.DataFrame, out: Path) -> list[Path] | str:
    """Figure 3d: accuracy against backbone size (parameters), one line per method variant across backbones."""
    made = _line_figure(runs, runs["params.backbone"].astype(float) / 1e6, None, "backbone parameters (M)",
                        logx=True, by_backbone=False)
    return _save(made, out, "acc_vs_backbone_size") if made else \
        "backbone-size figure skipped: no method has records on two backbones of different size"


def fig_data_fraction(runs: pd.DataFrame, out: Path) -> list[Path] | str:
    """Figure 4: accuracy against the fraction of training data, when records carry `train_fraction`."""
    made = _line_figure(runs, runs["fraction"], "train_fraction", "fraction of training data")
    return _save(made, out, "acc_vs_data_fraction") if made else \
        "data-fraction figure skipped: no record carries train_fraction at two values"


def fig_pareto(runs: pd.DataFrame, out: Path) -> list[Path] | str:
    """Accuracy against learnable parameters (% of backbone), one point per (backbone, variant), front per backbone."""
    points = runs.dropna(subset=["params.learnable_pct"]).groupby(["backbone", "variant"]).agg(
        pct=("params.learnable_pct", "mean"), acc=("acc", "mean")).reset_index()
    if len(points) < 2:
        return "Pareto figure skipped: fewer than two method variants with parameter counts"
    fig, ax = _figure()
    for i, row in enumerate(points.itertuples()):
        name = row.variant if points["backbone"].nunique() == 1 else f"{row.backbone} · {row.variant}"
        ax.plot(row.pct, row.acc, label=name, **{**_style(i), "linestyle": "none", "markersize": 7})
    for backbone, frame in points.groupby("backbone"):
        front = frame.sort_values(["pct", "acc"], ascending=[True, False])
        front = front[front["acc"] >= front["acc"].cummax()]
        ax.plot(front["pct"], front["acc"], color="grey", linewidth=0.8, zorder=0)
    ax.set_xscale("log")
    ax.set(xlabel="learnable parameters (% of backbone, log)", ylabel="test accuracy (%)\n(mean over tasks and seeds)")
    _legend(ax)
    return _save(fig, out, "acc_vs_params_pareto")


def _task_order(tasks: Iterable[str]) -> list[str]:
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
    columns = [Column(task, task, "gain") for task in _task_order(have["task"])]
    rows = []
    for (backbone, variant), frame in sorted(have.groupby(["backbone", "variant"]), key=_by_row):
        rows.append((backbone, variant, {task: Cell(float(f["gain"].mean())) for task, f in frame.groupby("task")}))
    caption = ("Convergence: validation accuracy (points) gained over the last third of training (mean of the last 3 "
               "epochs minus the mean of the 3 epochs ending two thirds of the way through), mean over seeds. Near 0: "
               "the run had plateaued before it stopped; large and positive: more epochs would likely have helped.")
    return Table("convergence", caption, columns, rows)


def _budget_variants(runs: pd.DataFrame) -> pd.Series:
    """Variant labels without `epochs`, and without `warmup_epochs` where the recipe scales it with the epochs (one
    warm-up per budget): a longer budget is then the same variant trained longer. Where a warm-up was swept at some
    budget, it stays in the labels of that variant and task."""
    coarse = _variants(runs, without=("epochs", "warmup_epochs"))
    if "hp.warmup_epochs" not in runs:
        return coarse
    keys = [runs["backbone"], coarse, runs["task"]]
    per_budget = runs.groupby([*keys, runs["hp.epochs"]], dropna=False)["hp.warmup_epochs"].transform("nunique")
    swept = per_budget.groupby(keys, dropna=False).transform("max") > 1
    return coarse.where(~swept, _variants(runs, without=("epochs",)))


def budget_table(runs: pd.DataFrame) -> Table | None:
    """Per variant and task recorded at several epoch budgets, one row per step to the next longer budget: test
    accuracy before and after, and the gain, over the seeds that ran both; None when no variant has two budgets."""
    if "hp.epochs" not in runs:
        return None
    runs = runs.assign(budget_variant=_budget_variants(runs))
    columns = [Column("before", "before"), Column("after", "after"), Column("gain", "gain", "gain"),
               Column("seeds", "seeds", "number"), Column("plateaued", "plateaued", "verdict")]
    order = _task_order(runs["task"])
    rows = []
    for (backbone, variant, task), frame in sorted(
            runs[runs["hp.epochs"].notna()].groupby(["backbone", "budget_variant", "task"]),
            key=lambda item: (item[0][0], natural_key(item[0][1]), order.index(item[0][2]))):
        by_budget = frame.groupby("hp.epochs")
        budgets = sorted(by_budget.groups)
        for short, long in zip(budgets, budgets[1:]):
            paired = by_budget.get_group(short)[["seed", "acc"]].merge(
                by_budget.get_group(long)[["seed", "acc"]], on="seed", suffixes=("_before", "_after"))
            if paired.empty:
                continue
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
    return Table("budget", caption, columns, rows)


def val_curves(runs: pd.DataFrame) -> dict[str, dict[str, pd.Series]]:
    """Task -> variant (prefixed by its backbone when several) -> val accuracy after each epoch (index 1, 2, ...),
    the mean over the variant's seeds; tasks in the suites' order. Only `fixed` runs score val every epoch
    (final-stage runs train on train+val), so only they have curves."""
    have = runs[runs["val_curve"].notna()]
    if have.empty:
        return {}
    have = have.assign(series=_series_label(have, exclude=None))
    curves: dict[str, dict[str, pd.Series]] = {}
    for task in _task_order(have["task"]):
        curves[task] = {}
        for name, frame in _series_groups(have[have["task"] == task], "series"):
            mean = pd.concat([pd.Series(c) for c in frame["val_curve"]], axis=1).mean(axis=1)
            curves[task][name] = mean.set_axis(mean.index + 1)
    return curves


def fig_val_curves(runs: pd.DataFrame, out: Path) -> list[Path] | str:
    """Validation accuracy against epoch, one panel per task, one line per variant: whether runs had plateaued
    when they stopped."""
    curves = val_curves(runs)
    if not curves:
        return "val-curve figure skipped: no record carries curves['val_acc'] (only fixed-protocol runs score val)"
    # One style per variant across every panel, so that a single legend serves them all.
    series = sorted({name for lines in curves.values() for name in lines}, key=natural_key)
    cols = min(3, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig, axes = _figure(rows, cols, size=(2.6 * cols + 1.8, 2.2 * rows + 0.4))
    axes = np.atleast_1d(axes).ravel()
    for ax, (task, lines) in zip(axes, curves.items()):
        for name, mean in lines.items():
            ax.plot(mean.index, mean.values, label=name, **{**_style(series.index(name)), "markersize": 3})
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(title=task, xlabel="epoch", ylabel="val accuracy (%)")
    for ax in axes[len(curves):]:
        ax.set_visible(False)
    handles = {label: handle for ax in axes for handle, label in zip(*ax.get_legend_handles_labels())}
    fig.legend([handles[s] for s in series], series, fontsize="x-small", loc="outside right upper")
    return _save(fig, out, "val_acc_vs_epoch")


FIGURES = (fig_nmi, fig_init_ablation, fig_prompt_length, fig_backbone_size, fig_data_fraction, fig_pareto,
           fig_val_curves)


# --- paired comparison ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    pairs: int
    mean: float
    low: float
    high: float
    confidence: float


def _select(runs: pd.DataFrame, name: str) -> pd.DataFrame:
    chosen = runs[runs["variant"] == name]
    if chosen.empty:
        chosen = runs[runs["method"] == name]
    variants = sorted(chosen["variant"].unique())
    if chosen.empty:
        raise BenchError(f"--compare: no finished runs of {name!r}; recorded: {', '.join(sorted(runs['variant'].unique()))}")
    if len(variants) > 1:
        raise BenchError(f"--compare: {name!r} has several variants ({'; '.join(variants)}); name one of them")
    return chosen


def compare(runs: pd.DataFrame, a: str, b: str, resamples: int = 10_000, confidence: float = 0.95,
            seed: int = 0) -> Comparison:
    """Mean of acc(a) − acc(b) over (backbone, task, seed) pairs both ran, with a seeded percentile-bootstrap CI.

    Pairs are resampled with replacement, so the interval treats them as exchangeable: it reflects seed and task
    variation together, not either alone.
    """
    keys = ["backbone", "task", "seed"]
    joined = _select(runs, a)[[*keys, "acc"]].merge(_select(runs, b)[[*keys, "acc"]], on=keys, suffixes=("_a", "_b"))
    if joined.empty:
        raise BenchError(f"--compare: {a!r} and {b!r} share no (backbone, task, seed); run both on the same grid")
    diff = (joined["acc_a"] - joined["acc_b"]).to_numpy()
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(len(diff), size=(resamples, len(diff)))].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return Comparison(a, b, len(diff), float(diff.mean()), float(low), float(high), confidence)


# --- the command ---------------------------------------------------------------------------------------------------


@dataclass
class Report:
    summary: Table
    paths: list[Path]
    notes: list[str]
    comparison: Comparison | None
    published: pd.DataFrame | None = None


def build_report(results: str | Path, out: str | Path, formats: Sequence[str] = FORMATS,
                 compare_pair: tuple[str, str] | None = None, published: bool = False) -> Report:
    """Write every table and figure the records support under `out`; say which were skipped and why. With
    `published`, also the published numbers (bench/published.csv) beside this run's (bench.published)."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise BenchError(f"--format {','.join(formats)}: valid formats are {','.join(FORMATS)}")
    store = Store(results)
    runs = load_runs(store)
    comparison = compare(runs, *compare_pair) if compare_pair else None  # a bad name fails before anything is written
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"cannot create report directory {out}: {exc.strerror}; pass --out DIR") from None
    paths: list[Path] = []
    notes = [f"skipped unreadable record {path.name} (set aside; rerun `bench run` to recompute it)"
             for path in store.set_aside]
    for suite in suites(runs["group"].dropna()):
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
    beside = None
    if published:
        from bench.published import compare_published, load_published, write_published

        beside = compare_published(runs, load_published())
        if beside.empty:
            notes.append("published table skipped: no recorded method, backbone and complete task group matches a "
                         "published number (bench/published.csv)")
        else:
            paths += write_published(beside, out, formats)
    notes += _drop_stale(out, paths, attempted_published=published)
    return Report(summary, paths, notes, comparison, beside)


# What the last `bench report` wrote in its directory, so that a table or figure it now skips does not linger there
# looking current. Files it never wrote are left alone.
WRITTEN_LIST = ".bench-report-files"


def _drop_stale(out: Path, paths: list[Path], attempted_published: bool) -> list[str]:
    """Remove the files an earlier report wrote for a table or figure that this one did not write (in any format);
    keep the published table when it was not asked for this time. Returns a note per removed file."""
    listed = out / WRITTEN_LIST
    before = listed.read_text().split() if listed.exists() else []
    current = {path.stem for path in paths} | (set() if attempted_published else {"published"})
    stale = [name for name in before if Path(name).stem not in current]
    for name in stale:
        (out / name).unlink(missing_ok=True)
    kept = {name for name in before if Path(name).stem in current and (out / name).exists()}
    listed.write_text("".join(f"{name}\n" for name in sorted(kept | {path.name for path in paths})))
    return [f"removed {name}: an earlier report wrote it, and this one skipped it" for name in stale]


def to_rich(table: Table) -> Any:
    """The table for the terminal: best bold, second underlined, as in the LaTeX."""
    from rich.markup import escape
    from rich.table import Table as RichTable

    rich = RichTable(title=table.key, title_justify="left")
    for name in ("backbone", "method", *[c.label for c in table.columns]):
        rich.add_column(name, justify="left" if name in ("backbone", "method") else "right")
    for backbone, variant, cells in table.rows:
        values = []
        for column in table.columns:
            cell = cells.get(column.key, Cell())
            text = escape(_number(Cell(cell.mean, cell.std), column.kind, "md"))
            values.append({1: f"[bold]{text}[/bold]", 2: f"[underline]{text}[/underline]"}.get(cell.rank, text))
        rich.add_row(escape(backbone), escape(variant), *values)
    return rich
