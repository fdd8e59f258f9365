"""The one writer of each format a table is shown in: LaTeX (booktabs), Markdown, CSV and the terminal (rich)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from bench.report.tables import Cell, Table

FORMATS = ("tex", "md", "csv")
MISSING = {"tex": "--", "md": "–", "csv": ""}


_TEX_SPECIAL = str.maketrans({"\\": "\\textbackslash{}", "_": "\\_", "%": "\\%", "&": "\\&", "#": "\\#",
                              "$": "\\$", "{": "\\{", "}": "\\}", "~": "\\textasciitilde{}", "^": "\\^{}"})


def tex_escape(text: str) -> str:
    return text.translate(_TEX_SPECIAL)


def _number(cell: Cell, kind: str, fmt: str) -> str:
    if kind == "text" and cell.text is not None:
        return tex_escape(cell.text) if fmt == "tex" else cell.text
    if cell.mean is None:
        return MISSING[fmt]
    if kind == "count":
        return f"[{cell.mean:.0f}]"
    if kind in ("pct", "rank"):
        return f"{cell.mean:.2f}"
    if kind == "delta":
        return f"{cell.mean:+.2f}"
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


def to_latex(table: Table) -> str:
    """A booktabs `table` environment, ready for `\\input` (needs `\\usepackage{booktabs}`)."""
    header = ["Backbone", "Method", *[tex_escape(c.label) for c in table.columns]]
    spec = "ll" + "".join("c" if c.kind == "acc" else "l" if c.kind == "text" else "r" for c in table.columns)
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
        shown = tex_escape(backbone) if backbone != previous else ""
        values = [_number(cells.get(c.key, Cell()), c.kind, "tex") for c in table.columns]
        lines.append(" & ".join([shown, tex_escape(variant), *values]) + " \\\\")
        previous = backbone
    lines += ["\\bottomrule", "\\end{tabular}"]
    lines += [f"\\par{{\\footnotesize {tex_escape(line)}}}" for line in table.protocol]
    lines += ["\\end{table}", ""]
    return "\n".join(lines)


def to_markdown(table: Table) -> str:
    header = ["Backbone", "Method", *[c.label for c in table.columns]]
    align = ["---"] * 2 + ["---" if c.kind == "text" else "---:" for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for backbone, variant, cells in table.rows:
        values = [_number(cells.get(c.key, Cell()), c.kind, "md") for c in table.columns]
        lines.append("| " + " | ".join([backbone, variant, *values]) + " |")
    caption = table.caption.replace("$\\pm$", "±").replace("($n-1$)", "(n − 1)").replace("\\%", "%")
    caption = caption.replace("underlined", "in italics").replace("-- no record", "– no record")
    return "\n".join(lines) + f"\n\n{caption}\n" + "".join(f"\n{line}\n" for line in table.protocol)


def to_frame(table: Table) -> pd.DataFrame:
    """The table's numbers, one row per (backbone, method); accuracy columns get a `<name>_std` companion."""
    records = []
    for backbone, variant, cells in table.rows:
        row: dict[str, Any] = {"backbone": backbone, "method": variant}
        for column in table.columns:
            cell = cells.get(column.key, Cell())
            name = column.label if column.kind == "acc" else column.key
            row[name] = cell.text if column.kind == "text" else cell.mean
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


def to_rich(table: Table) -> Any:
    """The table for the terminal: best bold, second underlined, as in the LaTeX."""
    from rich.markup import escape
    from rich.table import Table as RichTable

    rich = RichTable(title=table.key, title_justify="left", caption=" ".join(table.protocol) or None,
                     caption_justify="left")
    rich.add_column("backbone")
    rich.add_column("method")
    for column in table.columns:
        rich.add_column(column.label, justify="left" if column.kind == "text" else "right")
    for backbone, variant, cells in table.rows:
        values = []
        for column in table.columns:
            cell = cells.get(column.key, Cell())
            # Markdown's text without its rank marks: rich marks the rank itself.
            text = escape(_number(replace(cell, rank=0), column.kind, "md"))
            values.append({1: f"[bold]{text}[/bold]", 2: f"[underline]{text}[/underline]"}.get(cell.rank, text))
        rich.add_row(escape(backbone), escape(variant), *values)
    return rich
