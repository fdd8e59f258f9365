"""Published reference numbers beside measured ones: `bench report --published` ("paper" vs "this run").

`bench/report/published.csv` holds group means that papers report for methods of the registry, on the backbones the
registry names (ViT-B/16 pre-trained with MAE, MoCo v3 or supervised on ImageNet-21k), one row per number, each with
the paper, the table it comes from and the page it was read from. Only numbers found in a readable source are there.

A row's scope is a task group of the report's suites (`fgvc`, `vtab/natural`, `vtab/specialized`,
`vtab/structured`: the mean over the group's tasks) or `vtab`: the mean over all 19 VTAB-1k tasks, each task
weighing the same. That is the SSF paper's convention (its full fine-tuning mean, 65.57, is VPT's three group means
weighted by their 7, 4 and 8 tasks), and not the report's VTAB "Mean" column (the mean of the three group means).
A measured scope mean is shown only when every task of the scope has a record, as in the report's tables.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.record import COLUMNS
from bench.report.tables import Cell, Column, Table, suites

PUBLISHED = Path(__file__).parent / "published.csv"
HEADER = ["backbone", "method", "scope", "paper", "this run", "difference", "source"]


def scope_tasks(scope: str) -> tuple[str, ...]:
    """The tasks whose per-task means a scope averages."""
    groups = {g.id: g.tasks for suite in suites() for g in suite.groups}
    if scope in groups:
        return groups[scope]
    return tuple(t for gid, tasks in groups.items() if gid.startswith(f"{scope}/") for t in tasks)


def load_published(path: Path = PUBLISHED) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"accuracy": float})


def compare_published(runs: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """One row per (published number, measured variant of its method on its backbone) whose scope is complete:
    the paper's value, this run's mean over the scope's tasks (each task's mean over seeds) and this run − paper."""
    per_task = runs.groupby([COLUMNS.backbone, COLUMNS.method, "variant", COLUMNS.task])["acc"].mean()
    rows = []
    for ref in published.itertuples(index=False):
        tasks = scope_tasks(ref.scope)
        try:
            mine = per_task.loc[(ref.backbone, ref.method)]
        except KeyError:  # no record of this method on this backbone
            continue
        for variant, accs in mine.groupby(level="variant"):
            measured = accs.droplevel("variant")
            if not set(tasks) <= set(measured.index):
                continue
            mean = float(np.mean([measured[t] for t in tasks]))
            rows.append([ref.backbone, variant, ref.scope, ref.accuracy, mean, mean - ref.accuracy,
                         f"{ref.paper}, {ref.table}"])
    return pd.DataFrame(rows, columns=HEADER)


# In LaTeX, as every table's caption; `bench.report.rendering` turns it into Markdown.
CAPTION = ("Published vs this run: group means of test accuracy (\\%). Paper: the number as the cited table reports "
           "it; this run: the mean over the scope's tasks of each task's mean over seeds; difference: this run − "
           "paper. Scope vtab: all 19 VTAB-1k tasks with equal weight.")


def published_table(frame: pd.DataFrame) -> Table:
    """`compare_published`'s rows as a report table, for `bench.report.rendering` to write and print."""
    columns = [Column("scope", "scope", "text"), Column("paper", "paper", "pct"),
               Column("this run", "this run", "pct"), Column("difference", "difference", "delta"),
               Column("source", "source", "text")]
    rows = [(backbone, method, {"scope": Cell(text=scope), "paper": Cell(float(paper)),
                                "this run": Cell(float(this_run)), "difference": Cell(float(difference)),
                                "source": Cell(text=source)})
            for backbone, method, scope, paper, this_run, difference, source
            in frame[HEADER].itertuples(index=False, name=None)]
    return Table("published", CAPTION, columns, rows)
