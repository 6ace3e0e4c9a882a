"""The scoreboard: every artifact of the four papers and the verdicts the book's chapters gave.

The catalogue ``data/artifacts.json`` lists every table, figure, lemma, algorithm, appendix
and headline claim of the papers, one JSON object each::

    {"paper": "wong2020", "artifact": "wong2020 Table 1", "kind": "table",
     "title": "what it shows", "chapter": "book/wong2020/table1_init_step"}

``chapter`` is the book page that treats it (its path without suffix), or null when no page
does yet. Artifact ids are ``"<paper> <Table|Figure|Lemma|Theorem|Algorithm|Appendix|Section>
<number>"`` (numbered as the paper numbers it; a Theorem is of kind 'lemma', a Section of kind
'claim') and ``"<paper> claim: <short text>"``.

:func:`board` joins the catalogue with the verdict rows of the executed chapters
(``fatlib.chapter.collect_rows``): a row counts for the artifact whose id its ``artifact`` text
starts with ("wong2020 Table 1, FGSM zero init" counts for "wong2020 Table 1"; the longest id
wins, and "wong2020 Table 1" never takes "wong2020 Table 10"). An artifact no page treats
reads :data:`NOT_IN_BOOK`; one whose page gave no row reads :data:`NO_VERDICT`; rows that
match no id are kept, under their chapter, so that nothing a chapter computed is lost.
"""

from __future__ import annotations

import html
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from fatlib import plots, verdicts

PAPERS = ("wong2020", "andriushchenko2020", "golgooni2021", "l2fast")
KINDS = ("table", "figure", "lemma", "algorithm", "claim", "appendix")
# the word after the paper in an id -> the kind it must have
ID_WORDS = {"Table": "table", "Figure": "figure", "Lemma": "lemma", "Theorem": "lemma",
            "Algorithm": "algorithm", "Appendix": "appendix", "Section": "claim"}
FIELDS = ("paper", "artifact", "kind", "title", "chapter")
NOT_IN_BOOK = "not in the book yet"
NO_VERDICT = "no verdict from its chapter yet"
STATUSES = verdicts.VERDICTS + (NO_VERDICT, NOT_IN_BOOK)
COLUMNS = ("artifact", "chapter", "scale", "paper vs ours", "verdict")  # artifact names the paper
_COLOURS = {**plots.VERDICT_COLOURS, NO_VERDICT: "#f6f6f6", NOT_IN_BOOK: "#ffffff"}
_CHAPTER_RE = re.compile(r"^book/[A-Za-z0-9_][A-Za-z0-9_/-]*$")


@dataclass(frozen=True)
class Artifact:
    """One entry of the catalogue (see the module docstring for the fields)."""

    paper: str
    artifact: str
    kind: str
    title: str
    chapter: str | None


def artifacts_file() -> Path:
    """The catalogue of the repository: ``data/artifacts.json``."""
    return Path(__file__).resolve().parents[1] / "data" / "artifacts.json"


def _id_problem(paper: str, artifact: str, kind: str) -> str | None:
    """What is wrong with an artifact id for its paper and kind, or None."""
    if not artifact.startswith(paper + " "):
        return f"the id must start with the paper, '{paper} ...'"
    rest = artifact[len(paper) + 1:]
    if rest.startswith("claim: "):
        ok = kind == "claim" and rest[len("claim: "):].strip()
        return None if ok else "a 'claim: ' id needs kind 'claim' and a short text"
    word, _, number = rest.partition(" ")
    if word not in ID_WORDS or not number.strip():
        return f"the id must be '{paper} <{'|'.join(ID_WORDS)}> <number>' or '{paper} claim: ...'"
    if ID_WORDS[word] != kind:
        return f"a '{word}' id has kind '{ID_WORDS[word]}', not '{kind}'"
    return None


def _entry_problem(entry) -> str | None:
    """What is wrong with one catalogue entry (a parsed JSON value), or None."""
    if not isinstance(entry, dict) or set(entry) != set(FIELDS):
        keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        return f"needs exactly the keys {list(FIELDS)}, got {keys}"
    texts = [entry[k] for k in ("paper", "artifact", "kind", "title")]
    if not all(isinstance(t, str) and t.strip() for t in texts):
        return "paper, artifact, kind and title must be non-empty texts"
    if entry["paper"] not in PAPERS or entry["kind"] not in KINDS:
        return f"paper must be one of {PAPERS} and kind one of {KINDS}"
    chapter = entry["chapter"]
    if chapter is not None and not (isinstance(chapter, str) and _CHAPTER_RE.match(chapter)):
        return "chapter must be null or a book path without suffix ('book/wong2020/x')"
    return _id_problem(entry["paper"], entry["artifact"], entry["kind"])


def load_artifacts(path: str | Path | None = None) -> list[Artifact]:
    """The artifact catalogue, checked entry by entry.

    Args:
        path: a catalogue file (default: :func:`artifacts_file`).
    Returns:
        the Artifacts in the file's order.
    Raises:
        ValueError: a file that is not a JSON list, a malformed entry (named by its position
            and id) or an id given twice.
    """
    path = Path(path or artifacts_file())
    try:
        entries = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(entries, list):
        raise ValueError(f"{path} must hold a JSON list of artifacts, got {type(entries).__name__}")
    found, seen = [], set()
    for i, entry in enumerate(entries):
        name = entry.get("artifact", "?") if isinstance(entry, dict) else "?"
        problem = _entry_problem(entry) or ("the id is given twice" if name in seen else None)
        if problem:
            raise ValueError(f"{path}: entry {i} ({name}): {problem}")
        seen.add(name)
        found.append(Artifact(**entry))
    return found


def chapter_key(chapter: str) -> str:
    """A chapter's path in book/ without suffix: 'book/wong2020/x.ipynb' -> 'wong2020/x'."""
    return re.sub(r"\.(ipynb|md)$", "", chapter.strip()).removeprefix("book/")


def match(artifact_text: str, ids: Iterable[str]) -> str | None:
    """The longest catalogue id that ``artifact_text`` starts with, or None.

    An id matches only up to a word boundary: 'wong2020 Table 1' matches 'wong2020 Table 1,
    FGSM' and 'wong2020 Table 1.' but not 'wong2020 Table 10' or 'wong2020 Table 1.2'.
    """
    def starts(i: str) -> bool:
        return re.match(re.escape(i) + r"(?![0-9A-Za-z]|\.[0-9A-Za-z])", artifact_text) is not None

    hits = [i for i in ids if starts(i)]
    return max(hits, key=len) if hits else None


def executed_chapters(book_dir: str | Path) -> list[str]:
    """The chapters (:func:`chapter_key`) under ``book_dir`` whose notebook has been executed.

    Notebooks marked ``{"fatlib": {"execute_last": true}}`` (the scoreboard) are left out.
    """
    from fatlib.book import executes_last

    folder, found = Path(book_dir), []
    for notebook in sorted(p for p in folder.rglob("*.ipynb") if not executes_last(p)):
        cells = json.loads(notebook.read_text()).get("cells", [])
        if any(c.get("outputs") or c.get("execution_count") for c in cells
               if c.get("cell_type") == "code"):
            found.append(notebook.relative_to(folder).with_suffix("").as_posix())
    return found


def _row(v: verdicts.Verdict, chapter: str, paper: str) -> dict:
    return {"paper": paper, "artifact": f"{v.artifact}: {v.claim}", "chapter": chapter,
            "scale": v.scale, "paper vs ours": f"{v.paper} vs {v.ours}", "verdict": v.text,
            "status": v.verdict}


def _placeholder(a: Artifact) -> dict:
    status = NOT_IN_BOOK if a.chapter is None else NO_VERDICT
    return {"paper": a.paper, "artifact": f"{a.artifact}: {a.title}",
            "chapter": chapter_key(a.chapter) if a.chapter else "", "scale": "",
            "paper vs ours": "", "verdict": status, "status": status}


def _as_verdict(row) -> verdicts.Verdict:
    return row if isinstance(row, verdicts.Verdict) else verdicts.Verdict.from_row(row)


def board(artifacts: Iterable[Artifact], rows_by_chapter: dict) -> list[dict]:
    """The scoreboard's rows: every artifact with its verdicts, then the rows of no artifact.

    Args:
        artifacts: the catalogue (:func:`load_artifacts`).
        rows_by_chapter: chapter -> its Verdicts (or verdict row dicts), as
            ``fatlib.chapter.collect_rows`` returns them.
    Returns:
        dicts with the :data:`COLUMNS` plus 'status' (one of :data:`STATUSES`) and
        'catalogued' (False for a row that matches no artifact); catalogue order first.
    """
    artifacts = list(artifacts)
    ids = [a.artifact for a in artifacts]
    matched, unmatched = {}, []
    for chapter, rows in sorted(rows_by_chapter.items()):
        for v in map(_as_verdict, rows):
            hit = match(v.artifact, ids)
            paper = v.artifact.split(" ", 1)[0]
            entry = (chapter_key(chapter), v, paper if paper in PAPERS else "")
            (matched.setdefault(hit, []) if hit else unmatched).append(entry)
    out = []
    for a in artifacts:
        hits = matched.get(a.artifact)
        out += ([{**_row(v, c, a.paper), "catalogued": True} for c, v, _ in hits] if hits
                else [{**_placeholder(a), "catalogued": True}])
    return out + [{**_row(v, c, p), "catalogued": False} for c, v, p in unmatched]


def counts(rows: Iterable[dict]) -> dict:
    """status -> number of board rows, for every status of :data:`STATUSES` (zeros included)."""
    seen = Counter(r["status"] for r in rows)
    return {s: seen.get(s, 0) for s in STATUSES}


class BoardTable:
    """Board rows as an HTML table (chapters as links, rows coloured by verdict) or as text."""

    def __init__(self, rows: Iterable[dict], columns: Iterable[str] = COLUMNS):
        self.rows, self.columns = list(rows), list(columns)

    def _cell(self, row: dict, column: str) -> str:
        text = html.escape(str(row.get(column, "")))
        if column == "chapter" and row.get(column):
            return f'<a href="{html.escape(row[column])}.html">{text.replace("/", "/<wbr>")}</a>'
        return text

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='text-align:left'>{html.escape(c)}</th>" for c in self.columns)
        body = "".join(f"<tr style='background:{_COLOURS.get(r.get('status'), '#ffffff')}'>"
                       + "".join(f"<td>{self._cell(r, c)}</td>" for c in self.columns) + "</tr>"
                       for r in self.rows)
        board = " fatlib-board" if tuple(self.columns) == COLUMNS else ""  # fatlib.css fits it
        return (f'<table class="fatlib-table fatlib-scoreboard{board}">'
                f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def __repr__(self) -> str:
        return repr(plots.table([{c: r.get(c, "") for c in self.columns} for r in self.rows],
                                self.columns))


def counts_table(rows: Iterable[dict]) -> BoardTable:
    """The count of board rows per verdict, one coloured row per status."""
    return BoardTable([{"verdict": s, "rows": n, "status": s} for s, n in counts(rows).items()],
                      ["verdict", "rows"])
