"""The report's figures, after SPT's (Wang et al., ICML 2024): NMI between prompts and patch tokens per epoch
(Figure 2), the prompt-initialisation ablation (3a), prompt length (3c), backbone size (3d), training-data fraction
(4), accuracy against learnable parameters, and validation accuracy per epoch. Each is written as PDF and PNG; one
whose records are absent returns a note saying why instead.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from bench.record import COLUMNS, hp_column
from bench.report.tables import natural_key, task_order, variants

INIT_ORDER = ("random", "sampled", "mean", "max", "kmeans")
# A run whose threads got less than this share of their cores' time had other work on them (bench.engine's
# `cpu_share`): on 2 cores, a two-thread micro run measured 0.99 alone and 0.50 beside another such run.
SHARED_CORES_BELOW = 0.75


def _series_groups(frame: pd.DataFrame, by: str | pd.Series) -> list[tuple[str, pd.DataFrame]]:
    """`frame` grouped by a series label, in `natural_key` order: the order of every figure's lines and legend."""
    return sorted(frame.groupby(by), key=lambda item: natural_key(item[0]))


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
    labels = variants(frame, without=(exclude,) if exclude else ())
    if by_backbone and frame[COLUMNS.backbone].nunique() > 1:
        labels = frame[COLUMNS.backbone] + " · " + labels
    return labels


def _on_common_tasks(frame: pd.DataFrame, by: str) -> pd.DataFrame:
    """Rows of the tasks recorded at every value of `by`, so that all points of a series average the same tasks."""
    common = set.intersection(*(set(f[COLUMNS.task]) for _, f in frame.groupby(by)))
    return frame[frame[COLUMNS.task].isin(common)]


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
    have = runs[runs[hp_column("init")].notna()].copy() if hp_column("init") in runs else runs.iloc[:0]
    if have.empty:
        return skipped
    have["init"] = have[hp_column("init")]
    have["series"] = _series_label(have, exclude="init")
    share = have[COLUMNS.cpu_share.build].astype(float) if COLUMNS.cpu_share.build in have \
        else pd.Series(np.nan, index=have.index)
    have["cores"] = np.select([share.isna(), share < SHARED_CORES_BELOW], ["unknown", "shared"], "alone")
    parts = []
    for name, frame in have.groupby("series"):
        if frame["init"].nunique() < 2:
            continue
        common = _on_common_tasks(frame, "init")
        per_seed = common.groupby(["init", COLUMNS.seed]).agg(acc=("acc", "mean"),
                                                        secs=(COLUMNS.wallclock.prompt_construction, "mean"))
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
    if hp_column("num_prompts") not in runs:
        return "prompt-length figure skipped: no record has a prompt length"
    made = _line_figure(runs, runs[hp_column("num_prompts")], "num_prompts",
                        "prompt length (tokens per block)")
    return _save(made, out, "acc_vs_prompt_length") if made else \
        "prompt-length figure skipped: no method has records at two prompt lengths"


def fig_backbone_size(runs: pd.DataFrame, out: Path) -> list[Path] | str:
    """Figure 3d: accuracy against backbone size (parameters), one line per method variant across backbones."""
    made = _line_figure(runs, runs[COLUMNS.params.backbone].astype(float) / 1e6, None, "backbone parameters (M)",
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
    points = runs.dropna(subset=[COLUMNS.params.learnable_pct]).groupby([COLUMNS.backbone, "variant"]).agg(
        pct=(COLUMNS.params.learnable_pct, "mean"), acc=("acc", "mean")).reset_index()
    if len(points) < 2:
        return "Pareto figure skipped: fewer than two method variants with parameter counts"
    fig, ax = _figure()
    for i, row in enumerate(points.itertuples()):
        name = row.variant if points[COLUMNS.backbone].nunique() == 1 else f"{row.backbone} · {row.variant}"
        ax.plot(row.pct, row.acc, label=name, **{**_style(i), "linestyle": "none", "markersize": 7})
    for backbone, frame in points.groupby(COLUMNS.backbone):
        front = frame.sort_values(["pct", "acc"], ascending=[True, False])
        front = front[front["acc"] >= front["acc"].cummax()]
        ax.plot(front["pct"], front["acc"], color="grey", linewidth=0.8, zorder=0)
    ax.set_xscale("log")
    ax.set(xlabel="learnable parameters (% of backbone, log)", ylabel="test accuracy (%)\n(mean over tasks and seeds)")
    _legend(ax)
    return _save(fig, out, "acc_vs_params_pareto")


def val_curves(runs: pd.DataFrame) -> dict[str, dict[str, pd.Series]]:
    """Task -> variant (prefixed by its backbone when several) -> val accuracy after each epoch (index 1, 2, ...),
    the mean over the variant's seeds; tasks in the suites' order. Only `fixed` runs score val every epoch
    (final-stage runs train on train+val), so only they have curves."""
    have = runs[runs["val_curve"].notna()]
    if have.empty:
        return {}
    have = have.assign(series=_series_label(have, exclude=None))
    curves: dict[str, dict[str, pd.Series]] = {}
    for task in task_order(have[COLUMNS.task]):
        curves[task] = {}
        for name, frame in _series_groups(have[have[COLUMNS.task] == task], "series"):
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
