"""Published reference numbers: the shipped table names only registered methods, backbones and task groups, and
`bench report --published` puts each paper's number beside this run's mean over the same tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bench.backbone import BACKBONES
from bench.cli import main
from bench.config import RunSpec
from bench.method import METHODS
from bench.record import RunRecord
from bench.report import build_report, compare_published, load_published, load_runs, scope_tasks, suites
from bench.store import Store
from records import make_record

GROUP_OF = {t: g.id for suite in suites() for g in suite.groups for t in g.tasks}
VTAB = [t for t, g in GROUP_OF.items() if g.startswith("vtab/")]
FGVC = [t for t, g in GROUP_OF.items() if g == "fgvc"]


def _record(method: str, task: str, seed: int, acc: float, **hparams: Any) -> RunRecord:
    spec = RunSpec(method, task, "sup21k-vit-b16", seed, {"epochs": 100, **hparams})
    return make_record(spec, acc, group=GROUP_OF[task], learnable_pct=0.2, backbone_params=86_000_000)


def test_shipped_rows_name_registered_methods_backbones_and_task_groups():
    import bench.methods  # noqa: F401  (registers the methods)

    published = load_published()
    assert len(published) >= 10
    for row in published.itertuples(index=False):
        assert row.method in METHODS.names() and row.backbone in BACKBONES.names(), row
        assert scope_tasks(row.scope), row.scope
        assert 0 < row.accuracy < 100 and row.paper and row.table and row.read_from.startswith("https://"), row
    assert len(scope_tasks("vtab")) == 19 and len(scope_tasks("vtab/natural")) == 7 and len(scope_tasks("fgvc")) == 5


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """SSF on all 19 VTAB tasks (task i: 50 + i; two seeds on the first), full fine-tuning on 4 of 5 FGVC tasks."""
    store = Store(tmp_path / "results")
    for i, task in enumerate(VTAB):
        store.write(_record("ssf", task, 0, 50.0 + i))
    store.write(_record("ssf", VTAB[0], 1, 60.0))
    for task in FGVC[:4]:
        store.write(_record("full", task, 0, 90.0))
    return tmp_path / "results"


def test_paper_beside_this_run_over_the_scopes_tasks_with_equal_weight(results: Path):
    compared = compare_published(load_runs(results), load_published())
    # Only SSF's VTAB-1k mean is complete: full fine-tuning lacks an FGVC task, SSF has no FGVC record.
    assert list(zip(compared["method"], compared["scope"])) == [("ssf", "vtab")]
    row = compared.iloc[0]
    per_task = [55.0] + [50.0 + i for i in range(1, 19)]  # the first task: mean of 50 and 60 over seeds
    assert row["this run"] == pytest.approx(sum(per_task) / 19)
    assert row["paper"] == 73.10
    assert row["difference"] == pytest.approx(row["this run"] - 73.10)
    assert "SSF" in row["source"]


def test_a_published_row_meets_every_variant_of_its_method(results: Path, tmp_path: Path):
    store = Store(results)
    for task in FGVC:
        store.write(_record("full", task, 0, 80.0, lr=0.1))
    own = tmp_path / "published.csv"
    own.write_text("method,backbone,scope,accuracy,paper,table,read_from\n"
                   "full,sup21k-vit-b16,fgvc,88.54,P,T,https://example.org\n")
    compared = compare_published(load_runs(results), pd.read_csv(own))
    assert list(compared["method"]) == ["full lr=0.1"] and compared["difference"].iloc[0] == pytest.approx(80 - 88.54)


def test_the_published_table_is_written_like_every_report_table(results: Path, tmp_path: Path):
    build_report(results, tmp_path, published=True)
    markdown = (tmp_path / "published.md").read_text().splitlines()
    mean = (55.0 + sum(50.0 + i for i in range(1, 19))) / 19
    assert markdown[:2] == ["| Backbone | Method | scope | paper | this run | difference | source |",
                            "|---|---|---|---:|---:|---:|---|"]
    assert markdown[2].startswith(f"| sup21k-vit-b16 | ssf | vtab | 73.10 | {mean:.2f} | {mean - 73.10:+.2f} | Lian ")
    latex = (tmp_path / "published.tex").read_text()
    assert "\\begin{tabular}{lllrrrl}" in latex and "Scaling \\& Shifting" in latex and "(\\%)" in latex


def test_cli_report_published_prints_and_writes_the_comparison(results: Path, tmp_path: Path, capsys):
    assert main(["report", "--results", str(results), "--out", str(tmp_path / "out"), "--published"]) == 0
    out = capsys.readouterr().out
    assert "paper" in out and "this run" in out and "73.1" in out
    written = pd.read_csv(tmp_path / "out" / "published.csv")
    assert list(written["method"]) == ["ssf"]
    assert (tmp_path / "out" / "published.md").read_text().count("| ssf |") == 1
    assert main(["report", "--results", str(results), "--out", str(tmp_path / "plain")]) == 0
    assert not (tmp_path / "plain" / "published.csv").exists()
