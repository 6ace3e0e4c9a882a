"""The book's notebooks: committed without outputs, the parameters pattern, the toc, and
every notebook runs under ``pytest --nbval-lax`` in the smoke profile.

The nbval run is the same as
    FATLIB_PROFILE=smoke .venv/bin/python -m pytest --nbval-lax book/ -p no:cacheprovider
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from papermill.translators import PythonTranslator

from fatlib import book

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (ROOT / "book").rglob("*.ipynb")
                   if ".ipynb_checkpoints" not in p.parts)
PAGES = sorted(p for p in (ROOT / "book").rglob("*") if p.suffix in (".md", ".ipynb")
               and ".ipynb_checkpoints" not in p.parts and "_assets" not in p.parts)
PARAMETERS_LINE = 'profile = os.environ.get("FATLIB_PROFILE", "quick")'
# what a notebook must not contain: core logic belongs in fatlib (STYLE.md, item 7)
FORBIDDEN = [r"\.backward\(", r"torch\.autograd\.grad", r"torch\.optim\.", r"optimizer\.step\(",
             r"\.zero_grad\(", r"F\.cross_entropy", r"nn\.functional\.cross_entropy"]


def _cells(path):
    return json.loads(path.read_text())["cells"]


def _code(path):
    return ["".join(c["source"]) for c in _cells(path) if c["cell_type"] == "code"]


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks under book/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_have_no_outputs(path):
    nb = json.loads(path.read_text())
    dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
             and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, (f"{path.relative_to(ROOT)} has outputs in cells {dirty}: clear them "
                       "(jupyter nbconvert --clear-output --inplace) before committing")
    assert "widgets" not in nb["metadata"], f"{path.name} carries saved widget state"
    assert "papermill" not in nb["metadata"], f"{path.name} is an executed copy"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_pattern(path):
    cells = _cells(path)
    code = [c for c in cells if c["cell_type"] == "code"]
    first = code[0]
    assert "parameters" in first["metadata"].get("tags", []), "first code cell not tagged"
    assert PARAMETERS_LINE in "".join(first["source"])
    rest = "\n".join(_code(path)[1:])
    assert "PROFILES = {" in rest and "resolve_profile(PROFILES, profile, overrides=locals())" in rest
    for name in book.PROFILES:
        assert f'"{name}": dict(' in rest, f"PROFILES lacks {name!r}"
    assert "run_card(" in rest, "every chapter shows a run card"
    params = book.notebook_parameters(path)
    assert "profile" in params
    # papermill's own reader (`papermill --help-notebook`, its type inference) sees them all
    seen = {p.name for p in PythonTranslator.inspect({"source": "".join(first["source"])})}
    assert seen == set(params), (f"papermill cannot read the parameter line(s) of "
                                 f"{sorted(set(params) - seen)}: keep quotes and '=' out of "
                                 "their comments")
    # set-up code may fold behind the hide-input toggle (one click away); nothing is removed
    # from the page and no output is hidden
    hidden = sorted({t for c in cells for t in c["metadata"].get("tags", [])
                     if ("hide" in t or "remove" in t) and t != "hide-input"})
    assert not hidden, f"only the 'hide-input' tag may fold a cell, found {hidden}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_core_logic_in_notebooks(path):
    for source in _code(path):
        for pattern in FORBIDDEN:
            assert not re.search(pattern, source, re.M), (
                f"{path.name}: '{pattern}' in a code cell; attacks, losses and training "
                "loops belong in fatlib")


VERDICT_WORDS = re.compile(r"reproduced|differs|not run here", re.I)
MAX_CODE_LINES = 150     # per notebook (issue 13: thin chapters)
MAX_FUNCTION_LINES = 10  # a longer function belongs in fatlib
CONTENT_CHAPTERS = [p for p in NOTEBOOKS if p.parent.name not in ("appendix", "book")]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_verdict_is_typed_in_a_notebook(path):
    typed = [line.strip() for source in _code(path) for line in source.splitlines()
             if VERDICT_WORDS.search(line)]
    assert not typed, (f"{path.name} types a verdict word in code: {typed[:3]}; verdicts come "
                       "from fatlib.verdicts (compare / check / not_run, chapter.queued)")


@pytest.mark.parametrize("path", CONTENT_CHAPTERS, ids=lambda p: p.stem)
def test_every_content_chapter_ends_with_a_closing_table(path):
    assert any("closing_table(" in source for source in _code(path)), (
        f"{path.name} has no fatlib.chapter.closing_table: the scoreboard cannot see its verdicts")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_are_thin(path):
    import ast

    code = _code(path)
    lines = sum(len(source.splitlines()) for source in code)
    assert lines <= MAX_CODE_LINES, f"{path.name}: {lines} code lines (at most {MAX_CODE_LINES})"
    for source in code:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= MAX_FUNCTION_LINES, (
                    f"{path.name}: function {node.name} has {length} lines (at most "
                    f"{MAX_FUNCTION_LINES}); move it into fatlib")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_glued_name_in_the_prose_is_glued_by_the_code(path):
    prose = "\n".join("".join(c["source"]) for c in _cells(path) if c["cell_type"] == "markdown")
    used = set(re.findall(r"\{glue(?::\w+)?\}`([\w.-]+)`", prose))
    code = "\n".join(_code(path))
    missing = sorted(n for n in used if not re.search(rf"\b{re.escape(n)}\s*=", code))
    assert not missing, f"{path.name}: the prose uses glued names no code cell sets: {missing}"


def _title(path):
    text = (path.read_text() if path.suffix == ".md" else
            "\n".join("".join(c["source"]) for c in _cells(path) if c["cell_type"] == "markdown"))
    return next((line for line in text.splitlines() if line.startswith("# ")), "")


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.stem)
def test_page_titles_hold_no_math(path):
    # the navigation lists every title on every page, and a page without math loads no
    # MathJax: there "$\\alpha$" showed as the raw "\\(\\alpha\\)"
    assert "$" not in _title(path), (f"{path.name}: write the title's math in plain text or "
                                     f"Unicode (α, ℓ2), not $...$: {_title(path)!r}")


def test_toc_lists_every_page_and_only_existing_ones():
    listed = {p.resolve() for p in book.toc_files(ROOT)}
    missing = [p.relative_to(ROOT).with_suffix("").as_posix() for p in PAGES
               if p.resolve() not in listed]
    assert not missing, ("pages under book/ missing from _toc.yml; add under their part:\n"
                         + "\n".join(f"      - file: {m}" for m in missing))


def test_find_chapter_and_unknown_parameters():
    assert book.find_chapter("threat_models") == ROOT / "book/opening/threat_models.ipynb"
    assert book.find_chapter("opening/threat_models").name == "threat_models.ipynb"
    with pytest.raises(ValueError, match="is not a chapter"):
        book.find_chapter("nope")
    with pytest.raises(ValueError, match="has no parameter"):
        book.run_chapter("how_to_use", {"n_imagez": 3}, profile="smoke")
    assert book.main(["run", "how_to_use", "-p", "n_imagez", "3"]) == 1


@pytest.mark.slow
def test_run_chapter_injects_and_shows_overrides(tmp_path):
    out = tmp_path / "run.ipynb"
    rc = book.main(["run", "how_to_use", "-p", "profile", "smoke", "-p", "n_images", "3",
                    "-o", str(out)])
    assert rc == 0
    cells = _cells(out)
    injected = [c for c in cells if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected and 'profile = "smoke"' in "".join(injected[0]["source"])
    assert "n_images = 3" in "".join(injected[0]["source"])
    text = json.dumps([c.get("outputs", []) for c in cells])
    assert "n_images=3 (profile: 2)" in text


@pytest.mark.slow
def test_every_notebook_runs_under_nbval_in_the_smoke_profile():
    env = {**os.environ, "FATLIB_PROFILE": "smoke"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "book",
                           "-p", "no:cacheprovider", "-q"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
