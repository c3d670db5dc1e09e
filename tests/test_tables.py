"""Markdown tables are written by ``tabulate`` and hold exactly the preformatted cells."""

from __future__ import annotations

from cellbench.validation.markdown import md_table


def _cells(lines: list[str]) -> list[list[str]]:
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    return [r for r in rows if not all(set(c) <= set("-:") for c in r)]


def test_markdown_table_keeps_every_cell_as_written() -> None:
    header = ["defect", "`nuc_size`", "`fid_o`"]
    rows = [["*undamaged value*", "-1.000", "0"], ["blur", "**-0.25 [-0.35, -0.15]**", "1e+03"]]
    lines = md_table(header, rows)
    assert lines[0].startswith("| defect ") and set(lines[1]) <= set("|:- ")
    assert _cells(lines) == [header, *rows]  # "1e+03" and "0" are not re-parsed as numbers
