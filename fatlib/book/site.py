"""Building the site: stage the sources in ``_build/src``, execute every chapter there,
fetch the offline JavaScript and run ``jupyter-book build``; then check that no page loads
anything from another host. The site is ``_build/html/index.html``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from fatlib.book.execution import execute_cached
from fatlib.book.params import DEFAULT_PROFILE, PROFILES
from fatlib.book.sources import BookError, chapters, execution_order, repo_root
from fatlib.book.vendor import VENDOR_DIR, prepare_vendor, vendor_cache_dir

BOOK_SOURCES = ("_config.yml", "_toc.yml", "book", "references.bib")
# resources a page loads by itself (not links the reader may follow)
_RESOURCE_RE = re.compile(r"<(?:script|img|link|iframe|source|embed)\b[^>]*?\b(?:src|href)\s*=\s*"
                          r"[\"'](https?:)?//([^\"'/]+)", re.I)


def build(profile: str = DEFAULT_PROFILE, *, out: Path | None = None, force: bool = False,
          strict: bool = True, root: Path | None = None, log=print) -> Path:
    """Execute every chapter in ``profile`` and build the HTML book; returns index.html.

    Args:
        profile: 'smoke' (tests), 'quick' (the rendered book) or 'paper'.
        out: folder that receives ``_build/`` (default: the repository root).
        force: re-execute chapters even when the execution cache has them.
        strict: Sphinx warnings are errors (``-W --keep-going``).
        root: the book's source folder (default: the repository root).
        log: where progress lines go.
    Raises:
        BookError naming every failing notebook and cell, or the Sphinx warnings.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; use one of {PROFILES}")
    root = Path(root or repo_root()).resolve()
    build_dir = Path(out or root).resolve() / "_build"
    stage = build_dir / "src"
    start = time.perf_counter()
    _stage_sources(root, stage)
    failures = _execute_chapters(stage, profile, root, build_dir, force, log)
    if failures:
        raise BookError(f"{len(failures)} chapter(s) failed in profile {profile!r}:\n"
                        + "\n".join(failures))
    prepare_vendor(stage / VENDOR_DIR, vendor_cache_dir(build_dir))
    html_dir = _sphinx(stage, build_dir, strict)
    external = check_offline(html_dir)
    if external:
        raise BookError("pages load external resources (the book must render offline):\n"
                        + "\n".join(external[:20]))
    index = html_dir / "index.html"
    log(f"built the book ({profile}) in {time.perf_counter() - start:.0f} s: {index}")
    return index


def _execute_chapters(stage: Path, profile: str, root: Path, build_dir: Path, force: bool,
                      log) -> list[str]:
    """Execute the staged chapters in place, in :func:`execution_order` (the execute_last
    ones, e.g. the scoreboard, after all the others); returns the failures' messages."""
    failures = []
    notebooks = execution_order(chapters(stage))
    for i, notebook in enumerate(notebooks, 1):
        name = notebook.relative_to(stage).as_posix()
        try:
            seconds, cached = execute_cached(notebook, profile, root, build_dir, force)
            how = "from the execution cache" if cached else f"executed in {seconds:.0f} s"
            log(f"[{i}/{len(notebooks)}] {name}: {how} ({profile})")
        except BookError as err:
            log(f"[{i}/{len(notebooks)}] {name}: FAILED")
            failures.append(str(err))
    return failures


def _stage_sources(root: Path, stage: Path) -> None:
    stage.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", "_build", ".*")
    for name in BOOK_SOURCES:
        src, dst = root / name, stage / name
        if dst.is_dir():
            shutil.rmtree(dst)
        elif dst.exists():
            dst.unlink()
        if src.is_dir():
            shutil.copytree(src, dst, ignore=ignore)
        elif src.exists():
            shutil.copy2(src, dst)


def _sphinx(stage: Path, build_dir: Path, strict: bool) -> Path:
    """Run ``jupyter-book build`` on the staged, executed sources; returns the html folder."""
    jb = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", str(stage),
           "--path-output", str(build_dir.parent), "--quiet"]
    if strict:
        cmd += ["-W", "--keep-going"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    html_dir = build_dir / "html"
    warnings = [line for line in (proc.stdout + proc.stderr).splitlines()
                if "WARNING" in line or "ERROR" in line]
    if proc.returncode != 0 or not (html_dir / "index.html").exists():
        detail = "\n".join(warnings) or (proc.stdout + proc.stderr)[-4000:]
        raise BookError(f"jupyter-book build failed ({' '.join(cmd)}):\n{detail}")
    return html_dir


def check_offline(html_dir: Path) -> list[str]:
    """'page: host' for every script, image, stylesheet or frame a page loads from
    another host (links the reader may click are allowed)."""
    found = []
    for page in sorted(html_dir.rglob("*.html")):
        if "_static" in page.relative_to(html_dir).parts:
            continue
        for match in _RESOURCE_RE.finditer(page.read_text(errors="replace")):
            found.append(f"{page.relative_to(html_dir)}: {match.group(0)[:160]}")
    return found

