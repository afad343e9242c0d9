"""One text-table renderer for every table backendnn prints: model summaries,
callbacks' statistics, the CLI, the parity report and the benchmarks."""
from __future__ import annotations


def render(rows, *, align: str = "left", markdown: bool = False) -> str:
    """Rows of cells (the first row is the header) as aligned text columns.

    Args:
        rows: a list of sequences; cells are turned into strings.
        align: "left" or "right" for every column, or one letter per column
            ("lrr": the first column left, the others right).
        markdown: a Markdown table instead (alignment left to the viewer).

    Columns are separated by two spaces; trailing spaces are dropped.
    """
    rows = [[str(cell) for cell in row] for row in rows]
    if not rows:
        return ""
    n = max(len(row) for row in rows)
    rows = [row + [""] * (n - len(row)) for row in rows]
    if markdown:
        lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * n]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows[1:]])
    kinds = align if len(align) == n and set(align) <= {"l", "r"} else (align[0] * n)
    if set(kinds) - {"l", "r"}:
        msg = f"render: `align` must be 'left', 'right' or one of l/r per column, got {align!r}"
        raise ValueError(msg)
    widths = [max(len(row[c]) for row in rows) for c in range(n)]
    return "\n".join(
        "  ".join(cell.rjust(w) if k == "r" else cell.ljust(w)
                  for cell, w, k in zip(row, widths, kinds)).rstrip()
        for row in rows)
