"""The book's sources: the checkout, the pages of ``_toc.yml``, the chapters (its notebooks),
their ``parameters`` cells and the order the build executes them in.

A chapter whose notebook metadata holds ``{"fatlib": {"execute_last": true}}`` (the
scoreboard, which reads the other chapters' executed copies) is executed after every
other chapter and never taken from the execution cache; see :func:`execution_order`.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

FATLIB_DIR = Path(__file__).resolve().parents[1]  # the fatlib package folder


class BookError(RuntimeError):
    """A chapter failed, or the site could not be built; the message says where and why."""


def repo_root() -> Path:
    """The folder holding ``_config.yml`` and ``book/`` (the fatlib checkout)."""
    root = FATLIB_DIR.parent
    if not (root / "_toc.yml").exists():
        raise BookError(f"no _toc.yml in {root}: the book is built from a source checkout "
                        "of fatlib (pip install -e .), not from an installed wheel")
    return root


def toc_files(root: Path | None = None) -> list[Path]:
    """The book's pages in ``_toc.yml`` order, as files (.md or .ipynb) under ``root``."""
    import yaml

    root = Path(root or repo_root())
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    names = []

    def walk(node):
        if isinstance(node, dict):
            for key in ("root", "file"):
                if isinstance(node.get(key), str):
                    names.append(node[key])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    files = []
    for name in names:
        found = [root / f"{name}{s}" for s in (".ipynb", ".md") if (root / f"{name}{s}").exists()]
        if not found:
            raise BookError(f"_toc.yml lists {name!r} but neither {name}.ipynb nor {name}.md "
                            "exists")
        files.append(found[0])
    return files


def chapters(root: Path | None = None) -> list[Path]:
    """The notebooks of the book (the pages that are executed), in toc order."""
    return [p for p in toc_files(root) if p.suffix == ".ipynb"]


def find_chapter(name: str, root: Path | None = None) -> Path:
    """A chapter notebook from a path, a toc entry ('book/opening/threat_models') or a
    unique end of one ('threat_models', 'opening/threat_models')."""
    path = Path(name)
    if path.suffix == ".ipynb" and path.exists():
        return path.resolve()
    root = Path(root or repo_root())
    stem = name.removesuffix(".ipynb").strip("/")
    names = {p: p.relative_to(root).with_suffix("").as_posix() for p in chapters(root)}
    matches = [p for p, n in names.items() if n == stem or n.endswith("/" + stem)]
    if len(matches) != 1:
        known = ", ".join(names.values())
        what = "matches several chapters" if matches else "is not a chapter"
        raise ValueError(f"{name!r} {what}; chapters: {known}")
    return matches[0]


def notebook_parameters(notebook: Path) -> dict:
    """name -> default (source text) of the assignments in the ``parameters`` cell.

    Read with ``ast`` (papermill's own reader skips lines whose comment holds an '=').
    """
    cells = json.loads(Path(notebook).read_text())["cells"]
    cell = next((c for c in cells if c["cell_type"] == "code"
                 and "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if cell is None:
        raise ValueError(f"{notebook} has no cell tagged 'parameters'")
    source = "".join(cell["source"])
    params = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    params[target.id] = ast.get_source_segment(source, node.value)
    return params


def executes_last(notebook: Path) -> bool:
    """Whether a chapter's notebook metadata asks to execute it after all the others
    (``{"fatlib": {"execute_last": true}}``)."""
    meta = json.loads(Path(notebook).read_text()).get("metadata", {}).get("fatlib")
    return isinstance(meta, dict) and meta.get("execute_last") is True


def execution_order(notebooks: list[Path]) -> list[Path]:
    """The chapters in the order the build executes them: toc order, except that those
    marked ``execute_last`` (see :func:`executes_last`) come after all the others."""
    last = {p for p in notebooks if executes_last(p)}
    return [p for p in notebooks if p not in last] + [p for p in notebooks if p in last]
