"""Published reference numbers beside measured ones: `bench report --published` ("paper" vs "this run").

`bench/report/published.csv` holds numbers that papers and their repositories report for methods of the registry, one
row per number: per task where a citable table gives tasks, else group means. Only numbers read in a source are there,
and each row says where (`read_from`: the page or the file and line, at a commit) and how (`read_as`: a paper's text, a
notebook's output, a table image read by eye, a web aggregator's page).

A row's scope is a task (`dmlab`), a task group of the report's suites (`fgvc`, `vtab/natural`, ...: the mean over the
group's tasks) or `vtab`: the mean over all 19 VTAB-1k tasks, each task weighing the same. That is the SSF paper's
convention (its full fine-tuning mean, 65.57, is VPT's three group means weighted by their 7, 4 and 8 tasks), and not
the report's VTAB "Mean" column (the mean of the three group means). A measured scope mean is shown only when every
task of the scope has a record, as in the report's tables.

Every row carries the protocol its number was made under (`FACTS`): the backbone's weights variant, the data's format,
the input normalisation, what the reported number was selected on, and the number of seeds; `preprocessing` describes
the transforms in words and is not compared. A row meets the runs of its method on any backbone of the same
architecture and pre-training objective as the row's backbone (both ImageNet-21k ViT-B/16 releases meet), and each
comparison says which facts differ from the run's records and which the source leaves unstated.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from bench import BenchError
from bench.backbone import CLIP_MEAN, CLIP_STD, HALF, IMAGENET_MEAN, IMAGENET_STD, backbone_entry
from bench.data import TASKS
from bench.record import COLUMNS
from bench.report.tables import Cell, Column, Table, suites

PUBLISHED = Path(__file__).parent / "published.csv"
HEADER = ["backbone", "method", "scope", "paper", "this run", "difference", "protocol", "source"]

# The protocol facts a published row states and a run's records give (published.csv columns; "" = not stated):
# - backbone_variant: the weights (`orig_in21k`, `augreg_in21k`, `mae_in1k`, ...: BackboneEntry.variant);
# - data_format: `tfds`, a layout bench reads (`vtab-noah`, `vtab-spt`, `fgvc-vpt-json`, `fgvc-spt-txt`) or
#   `official-splits` (each dataset's own train/test lists);
# - normalisation: the input mean/std, `imagenet`, `0.5` or `clip` (NORMALISATIONS);
# - selection: what chose the reported number: `val` (settings picked on val, last epoch), `test` (the best test
#   epoch) or `fixed` (one setting, last epoch);
# - seeds: runs averaged per task.
FACTS = ("backbone_variant", "data_format", "normalisation", "selection", "seeds")
NORMALISATIONS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "0.5": (HALF, HALF), "clip": (CLIP_MEAN, CLIP_STD)}
# A stage's runs as a published row would describe them: `final` runs were picked by the `tune` stage on val.
SELECTION_OF_STAGE = {"final": "val", "fixed": "fixed"}


def scope_tasks(scope: str) -> tuple[str, ...]:
    """The tasks whose per-task means a scope averages: the task itself, a group's tasks, or a family's."""
    if scope in TASKS:
        return (scope,)
    groups = {g.id: g.tasks for suite in suites() for g in suite.groups}
    if scope in groups:
        return groups[scope]
    return tuple(t for gid, tasks in groups.items() if gid.startswith(f"{scope}/") for t in tasks)


def load_published(path: Path = PUBLISHED) -> pd.DataFrame:
    """The published rows; protocol facts as text, "" where the source does not state one."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("method", "backbone", "scope", "accuracy", *FACTS) if c not in frame.columns]
    if missing:
        raise BenchError(f"{path} lacks the column(s) {', '.join(missing)}; see bench/report/published.csv's header")
    frame["accuracy"] = frame["accuracy"].astype(float)
    return frame


@dataclass(frozen=True)
class Difference:
    fact: str
    paper: str
    run: str


def compare_published(runs: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """One row per (published number, measured variant of its method on a backbone of the row's kind) whose scope is
    complete: the paper's value, this run's mean over the scope's tasks (each task's mean over seeds), this run −
    paper, and how the protocols compare (`protocol`; the differing facts themselves in `differences`)."""
    facts = _run_facts(runs)
    per_task = runs.groupby([COLUMNS.backbone, COLUMNS.method, "variant", COLUMNS.task])["acc"].mean()
    measured_backbones = list(dict.fromkeys(runs[COLUMNS.backbone]))
    rows = []
    for ref in published.itertuples(index=False):
        tasks = scope_tasks(ref.scope)
        for backbone in (b for b in measured_backbones if _same_kind(b, ref.backbone)):
            try:
                mine = per_task.loc[(backbone, ref.method)]
            except KeyError:  # no record of this method on this backbone
                continue
            for variant, accs in mine.groupby(level="variant"):
                measured = accs.droplevel("variant")
                if not set(tasks) <= set(measured.index):
                    continue
                mean = float(np.mean([measured[t] for t in tasks]))
                scoped = facts[(facts[COLUMNS.backbone] == backbone) & (facts[COLUMNS.method] == ref.method)
                               & (facts["variant"] == variant) & facts[COLUMNS.task].isin(tasks)]
                differences, unknown = _protocol(ref, scoped)
                rows.append([backbone, variant, ref.scope, ref.accuracy, mean, mean - ref.accuracy,
                             _protocol_text(differences, unknown), f"{ref.paper}, {ref.table}", differences])
    return pd.DataFrame(rows, columns=[*HEADER, "differences"])


def protocol_notes(frame: pd.DataFrame) -> list[str]:
    """One note per group of compared numbers whose protocol differs from the run's in the same way: which numbers,
    and each differing fact with the paper's value and the run's."""
    grouped: dict[tuple[str, str, str, tuple[Difference, ...]], list[str]] = defaultdict(list)
    for row in frame.itertuples(index=False):
        if row.differences:
            grouped[(row.backbone, row.method, row.source, tuple(row.differences))].append(row.scope)
    notes = []
    for (backbone, method, source, differences), scopes in grouped.items():
        shown = ", ".join(scopes[:4]) + (f" and {len(scopes) - 4} more" if len(scopes) > 4 else "")
        facts = "; ".join(f"{d.fact}: paper {d.paper}, this run {d.run}" for d in differences)
        notes.append(f"published: {method} on {backbone} against {source} ({shown}) ran under another protocol: "
                     f"{facts}")
    return notes


def _same_kind(run_backbone: str, published_backbone: str) -> bool:
    """Whether a run's backbone is one a published row's number can be set beside: the same name, or the same timm
    architecture and pre-training objective (other weights of one model, such as the two ImageNet-21k releases)."""
    if run_backbone == published_backbone:
        return True
    try:
        mine, theirs = backbone_entry(run_backbone), backbone_entry(published_backbone)
    except BenchError:  # a record's backbone this bench no longer knows
        return False
    return (mine.timm_name.split(".")[0], mine.objective) == (theirs.timm_name.split(".")[0], theirs.objective)


def _run_facts(runs: pd.DataFrame) -> pd.DataFrame:
    """Per run, its protocol facts as a published row would state them; None where its records do not say."""
    facts = runs[[COLUMNS.backbone, COLUMNS.method, "variant", COLUMNS.task, COLUMNS.seed]].copy()
    facts["backbone_variant"] = [recorded or _registered_variant(name)
                                 for recorded, name in zip(runs["weights_variant"], runs[COLUMNS.backbone])]
    facts["data_format"] = runs["layout"]
    facts["normalisation"] = [_normalisation(norm) for norm in runs["input_norm"]]
    facts["selection"] = runs[COLUMNS.stage].map(SELECTION_OF_STAGE)
    return facts


def _registered_variant(name: str) -> str | None:
    """Records older than `variant` name their backbone only; its registered entry says which weights it is."""
    try:
        return backbone_entry(name).variant or None
    except BenchError:
        return None


def _normalisation(norm: tuple[tuple[float, ...], tuple[float, ...]] | None) -> str | None:
    if norm is None:
        return None
    for label, (mean, std) in NORMALISATIONS.items():
        if np.allclose(norm[0], mean) and np.allclose(norm[1], std):
            return label
    return f"mean {list(norm[0])} std {list(norm[1])}"


def _protocol(ref: tuple, runs: pd.DataFrame) -> tuple[list[Difference], list[str]]:
    """The facts where the published row and the runs differ, and those that one side leaves unstated."""
    differences, unknown = [], []
    for fact in FACTS:
        paper = getattr(ref, fact)
        if fact == "seeds":
            per_task = runs.groupby(COLUMNS.task)[COLUMNS.seed].nunique()
            values = {str(n) for n in per_task}
        else:
            values = set(runs[fact])
        run = _one(values)
        if not paper or run is None:
            unknown.append(fact)
        elif paper != run:
            differences.append(Difference(fact, paper, run))
    return differences, unknown


def _one(values: Iterable[object]) -> str | None:
    """The runs' value of a fact: the one value they share, `mixed (a, b)` when they differ, None when any is
    unknown."""
    values = set(values)
    if not values or any(v is None or (isinstance(v, float) and np.isnan(v)) for v in values):
        return None
    return str(next(iter(values))) if len(values) == 1 else f"mixed ({', '.join(sorted(map(str, values)))})"


def _protocol_text(differences: list[Difference], unknown: list[str]) -> str:
    parts = [f"differs: {', '.join(d.fact for d in differences)}"] if differences else []
    if unknown:
        parts.append(f"unknown: {', '.join(unknown)}")
    return "; ".join(parts) or "same"


# In LaTeX, as every table's caption; `bench.report.rendering` turns it into Markdown.
CAPTION = ("Published vs this run: test accuracy (\\%) per task, or a group's mean. Paper: the number as the cited "
           "source reports it; this run: the mean over the scope's tasks of each task's mean over seeds; difference: "
           "this run − paper. Scope vtab: all 19 VTAB-1k tasks with equal weight. Protocol: the facts (weights "
           "variant, data format, normalisation, selection, seeds) where the paper's run and this one differ, and "
           "those one side does not state.")


def published_table(frame: pd.DataFrame) -> Table:
    """`compare_published`'s rows as a report table, for `bench.report.rendering` to write and print."""
    columns = [Column("scope", "scope", "text"), Column("paper", "paper", "pct"),
               Column("this run", "this run", "pct"), Column("difference", "difference", "delta"),
               Column("protocol", "protocol", "text"), Column("source", "source", "text")]
    rows = [(backbone, method, {"scope": Cell(text=scope), "paper": Cell(float(paper)),
                                "this run": Cell(float(this_run)), "difference": Cell(float(difference)),
                                "protocol": Cell(text=protocol), "source": Cell(text=source)})
            for backbone, method, scope, paper, this_run, difference, protocol, source
            in frame[HEADER].itertuples(index=False, name=None)]
    return Table("published", CAPTION, columns, rows)
