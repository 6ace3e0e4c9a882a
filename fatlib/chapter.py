"""What every chapter of the book shares: its closing table of verdicts (which the
scoreboard page gathers), numbers glued into its prose, and rows for records still queued.

A chapter ends with ``closing_table(verdicts, chapter=...)``: the verdicts (made by
``fatlib.verdicts``) shown as the paper-vs-ours table, and the same rows stored in the cell's
output under the MIME type :data:`ROWS_MIME`, from which :func:`collect_rows` reads them
back out of the executed notebooks (the scoreboard page, executed after every chapter).
Nothing is typed twice: the scoreboard shows the rows the chapters computed.

Numbers in a chapter's prose come from code: ``glue_text(pgd=f"{acc:.1f}%")`` in a code
cell, ``{glue:md}`pgd``` in the markdown (myst-nb's glue, rendered when the book is built).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from fatlib import plots, verdicts

ROWS_MIME = "application/vnd.fatlib.verdicts+json"


class ClosingTable:
    """A chapter's verdicts: shown as the coloured paper-vs-ours table, stored as JSON rows."""

    def __init__(self, rows: list, chapter: str):
        self.rows, self.chapter = rows, chapter
        self.table = plots.comparison_table([v.comparison_row() for v in rows])

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/html": self.table._repr_html_(), "text/plain": repr(self.table),
                ROWS_MIME: {"format": verdicts.ROWS_FORMAT, "chapter": self.chapter,
                            "rows": [v.row() for v in self.rows]}}


def closing_table(rows: Iterable[verdicts.Verdict], *, chapter: str) -> ClosingTable:
    """The closing table of a chapter, from verdicts of ``fatlib.verdicts`` only.

    Args:
        rows: Verdicts (compare / check / not_run / queued); a typed verdict text is refused.
        chapter: the chapter's path in the book without suffix ('wong2020/table1_init_step').
    Returns:
        ClosingTable (display it as a cell's last expression).
    Raises:
        ValueError: a row that is not a Verdict, no rows, or an empty chapter name.
    """
    rows = list(rows)
    bad = [r for r in rows if not isinstance(r, verdicts.Verdict)]
    if bad or not rows:
        raise ValueError("closing_table takes the Verdicts of fatlib.verdicts (compare, check, "
                         f"not_run, chapter.queued), at least one; got {bad or 'none'}")
    if not isinstance(chapter, str) or not chapter.strip():
        raise ValueError("pass chapter='<paper>/<notebook>' (its path in book/, no suffix)")
    return ClosingTable(rows, chapter.strip())


def collect_rows(book_dir: str | Path) -> dict:
    """The closing-table rows of every executed notebook under ``book_dir``.

    Args:
        book_dir: a folder of executed notebooks (the book's staged ``book/``).
    Returns:
        chapter -> list of Verdicts, in the order of the chapters' paths.
    Raises:
        ValueError: a stored row that is not a valid verdict (names the notebook).
    """
    found = {}
    for notebook in sorted(Path(book_dir).rglob("*.ipynb")):
        cells = json.loads(notebook.read_text()).get("cells", [])
        for output in (o for c in cells if c.get("cell_type") == "code"
                       for o in c.get("outputs", [])):
            stored = output.get("data", {}).get(ROWS_MIME)
            if stored is None:
                continue
            try:
                found.setdefault(stored["chapter"], []).extend(
                    verdicts.Verdict.from_row(r) for r in stored["rows"])
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{notebook}: bad verdict rows ({err})") from err
    return found


def glue_text(**values: str) -> None:
    """Glue texts for the chapter's prose: ``{glue:md}`name``` in a markdown cell.

    Args:
        values: name -> the text to insert (format numbers in the call: f"{acc:.1f}%").
    Raises:
        ValueError: a value that is not a text (format it first, so the page shows what
            the code chose, not a float's repr).
    """
    from IPython.display import Markdown
    from myst_nb import glue

    for name, value in values.items():
        if not isinstance(value, str):
            raise ValueError(f"glue_text({name}=...) takes a text; format the number first, "
                             f"e.g. f'{{{name}:.1f}}%', got {value!r}")
        glue(name, Markdown(value), display=False)


def queued(artifact: str, claim: str, *, paper: str, record: str, scale: str = "") -> verdicts.Verdict:
    """The verdict row of a comparison whose record is queued but not made yet.

    Args:
        artifact, claim, paper: as in ``fatlib.verdicts.not_run``.
        record: the name of an entry of data/record_queue.json: a record, or an evaluation
            of one (runs.evaluation_entry).
        scale: the scale the record will have ('record scale: ...').
    Returns:
        a NOT_RUN Verdict naming the entry and the command that makes it.
    Raises:
        ValueError: `record` is not in the record queue.
    """
    from fatlib import runs

    entry = {e.name: e for e in runs.queue_items()}.get(record) or runs.queue_entry(record)
    what = (f"the {entry.attack} ({entry.version}) evaluation {record} of the record {entry.record}"
            if isinstance(entry, runs.EvalEntry) else f"the record {record}")
    return verdicts.not_run(artifact, claim, paper=paper, scale=scale,
                            need=f"{what}, queued in data/record_queue.json (made by "
                                 f"`python -m fatlib records run --only {record}`)")


def made_or_queued(artifact: str, claim: str, *, paper: str, records, scale: str) -> tuple:
    """The records a comparison needs, or the queued row of the first one not made yet.

    Args:
        artifact, claim, paper: as in :func:`queued`.
        records: names in data/record_queue.json.
        scale: the scale the records have ('record scale: ...').
    Returns:
        (the Records, None) when all are made; (what :func:`made_record` gives for each,
        the :func:`queued` Verdict of the first missing) otherwise.
    """
    made = [made_record(name) for name in records]
    missing = [name for name, record in zip(records, made) if record is None]
    return made, (queued(artifact, claim, paper=paper, record=missing[0], scale=scale)
                  if missing else None)


def made_record(record: str):
    """The record `record` if the queue has made it with the config its entry asks for.

    A page reads its record-scale rows by name: this gives the Record when it exists and its
    config equals the entry's in data/record_queue.json, else None (show a :func:`queued` row).
    Args:
        record: the record's name in data/record_queue.json.
    Returns:
        fatlib.runs.Record or None.
    Raises:
        ValueError: `record` is not in the record queue.
    """
    from fatlib import runs

    return runs.record_with_config(record, runs.queue_entry(record).config)
