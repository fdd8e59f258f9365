"""Every report committed under results/ regenerates from its committed records byte for byte.

The README's conclusions quote these tables. A change to the report, to how records load, or to a task family's
groups that moves a single printed number (or a caption, a rank, a row's order) fails here, naming the file.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from bench.report import ROPE, WRITTEN_LIST, build_report

RESULTS = Path(__file__).parents[1] / "results"
# The stores whose report/ folder is committed beside their records.
STORES = sorted(path.parent.name for path in RESULTS.glob("*/report") if (path.parent / "runs").is_dir())
TABLE_FORMATS = (".md", ".tex", ".csv")


def test_the_committed_stores_are_found() -> None:
    assert "micro-study" in STORES


@pytest.mark.parametrize("store", STORES)
def test_a_committed_report_regenerates_byte_for_byte(store: str, tmp_path: Path) -> None:
    committed = RESULTS / store / "report"
    # A report committed with `bench report --rank` holds the rank table, one made with `--compare A,B --rope R` the
    # comparison, which names A, B and R; it regenerates with the same flags.
    compared = committed / "comparison.csv"
    pair, rope = None, ROPE
    if compared.exists():
        first = pd.read_csv(compared).set_index("test")
        pair = (first["a"].iloc[0], first["b"].iloc[0])
        rope = float(first.loc["Bayesian signed-rank", "rope"])
    build_report(RESULTS / store, tmp_path, compare_pair=pair, rank=(committed / "ranks.md").exists(), rope=rope)
    # The list of what a report wrote: the same tables and figures, none skipped, none added.
    assert (tmp_path / WRITTEN_LIST).read_text() == (committed / WRITTEN_LIST).read_text()
    tables = sorted(path for path in committed.iterdir() if path.suffix in TABLE_FORMATS)
    assert tables, f"results/{store}/report holds no table"
    for path in tables:
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), \
            f"results/{store}/report/{path.name} differs from the report its records give now"
