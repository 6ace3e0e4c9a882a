"""How the book's pages and messages show values: numbers, HTML tables, shortened texts."""

from __future__ import annotations

import html


def fmt(value) -> str:
    """A parameter value as text: floats to 6 significant digits, integers with commas."""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def html_table(columns, rows, header=True) -> str:
    """A ``fatlib-table`` HTML table of rows (escaped), with a header row unless header=False."""
    head = ("<thead><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
            + "</tr></thead>") if header else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f'<table class="fatlib-table">{head}<tbody>{body}</tbody></table>'


def shorten(text: str, n: int = 300) -> str:
    """The non-blank lines of text joined by ' | ', cut to n characters (then ' ...')."""
    text = " | ".join(line for line in text.splitlines() if line.strip())
    return text if len(text) <= n else text[:n] + " ..."

