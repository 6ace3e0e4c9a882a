"""Executing chapters with papermill, and the execution cache of the build.

:func:`execute` runs one notebook in a profile (``$FATLIB_PROFILE`` set in the kernel's
environment, ``profile`` and any parameters injected; the kernel's working directory is
the notebook's folder). :func:`run_chapter` re-runs one chapter with any of its parameters.
The build keeps each executed chapter in ``_build/exec_cache`` under a key of everything it
depends on (:func:`execution_key`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from fatlib.book.display import shorten
from fatlib.book.params import PROFILE_ENV, PROFILES, env_profile
from fatlib.book.sources import (FATLIB_DIR, BookError, executes_last, find_chapter,
                                 notebook_parameters, repo_root)


@contextlib.contextmanager
def _environ(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# kernel log lines that are not about the chapter (ipykernel 7 on TCP, kernel shutdown)
_KERNEL_NOISE = ("Kernel is running over TCP without encryption",
                 "KeyboardInterrupt caught in kernel")


@contextlib.contextmanager
def _filtered_stderr():
    """Pass the kernel's stderr (it inherits file descriptor 2) through, minus _KERNEL_NOISE."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines():
                if line.strip() and not any(noise in line for noise in _KERNEL_NOISE):
                    print(line, file=sys.stderr)


def execute(notebook: Path, output: Path, profile: str, parameters: dict | None = None,
            cwd: Path | None = None) -> Path:
    """Execute one notebook with papermill in ``profile``; raise BookError naming the cell.

    ``profile`` is injected as a parameter and set as ``$FATLIB_PROFILE`` in the kernel's
    environment; ``parameters`` are injected too (papermill's ``injected-parameters`` cell).
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; use one of {PROFILES}")
    output.parent.mkdir(parents=True, exist_ok=True)
    injected = {"profile": profile, **(parameters or {})}
    try:
        with _environ(**{PROFILE_ENV: profile}), _filtered_stderr():
            papermill.execute_notebook(str(notebook), str(output), parameters=injected,
                                       cwd=str(cwd or notebook.parent), progress_bar=False,
                                       kernel_name="python3", language="python")
    except PapermillExecutionError as err:
        raise BookError(f"{notebook}: cell {err.cell_index} (execution count {err.exec_count}) "
                        f"raised {err.ename}: {err.evalue}\n"
                        f"  cell source: {shorten(err.source)}\n"
                        f"  executed copy with the traceback: {output}") from None
    return output



def run_chapter(chapter: str | Path, parameters: dict | None = None, *,
                output: Path | None = None, profile: str | None = None) -> Path:
    """Re-run one chapter with papermill and any of its parameters; returns the executed copy.

    Args:
        chapter: see :func:`find_chapter`.
        parameters: name -> value; names must be in the chapter's ``parameters`` cell.
        output: where to write the executed notebook (default
            ``_build/runs/<chapter>-<profile>.ipynb``).
        profile: default: ``parameters['profile']``, else ``$FATLIB_PROFILE``, else 'quick'.
    """
    notebook = find_chapter(str(chapter))
    parameters = dict(parameters or {})
    profile = profile or parameters.pop("profile", None) or env_profile()
    parameters.pop("profile", None)
    known = notebook_parameters(notebook)
    unknown = sorted(set(parameters) - set(known))
    if unknown:
        raise ValueError(f"{notebook.name} has no parameter(s) {unknown}; its parameters are "
                         + ", ".join(f"{k} (default {v})" for k, v in known.items()))
    if output is None:
        output = _default_build_dir() / "runs" / f"{notebook.stem}-{profile}.ipynb"
    return execute(notebook, Path(output), profile, parameters)


def _default_build_dir() -> Path:
    return repo_root() / "_build"


def _tree_digest(folder: Path, pattern: str, content: bool) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob(pattern)) if folder.exists() else []:
        if path.is_file() and "__pycache__" not in path.parts:
            stat = path.stat()
            digest.update(path.relative_to(folder).as_posix().encode())
            digest.update(path.read_bytes() if content
                          else f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def execution_key(notebook: Path, profile: str, root: Path) -> str:
    """Hash of everything an executed chapter depends on: its source, the profile, fatlib's
    code, the records in data/records, the data directory setting and the python version."""
    parts = [notebook.read_bytes(), profile.encode(), sys.version.encode(),
             _tree_digest(FATLIB_DIR, "*.py", content=True).encode(),
             _tree_digest(Path(os.environ.get("FATLIB_RECORDS_DIR") or root / "data" / "records"),
                          "*", content=False).encode(),
             os.environ.get("FATLIB_DATA_DIR", "").encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:20]


def execute_cached(notebook: Path, profile: str, root: Path, build_dir: Path,
                   force: bool) -> tuple[float, bool]:
    """Execute a staged chapter in place, or copy its executed version from the cache.

    A chapter marked ``execute_last`` reads the other chapters' executed copies, so it is
    always executed and never cached.
    Returns:
        (seconds spent executing, whether it came from the cache).
    """
    if executes_last(notebook):
        start = time.perf_counter()
        execute(notebook, notebook, profile)
        return time.perf_counter() - start, False
    key = execution_key(notebook, profile, root)
    cached = build_dir / "exec_cache" / f"{notebook.stem}-{key}.ipynb"
    if cached.exists() and not force:
        shutil.copy2(cached, notebook)
        return 0.0, True
    start = time.perf_counter()
    execute(notebook, notebook, profile)
    cached.parent.mkdir(parents=True, exist_ok=True)
    for old in cached.parent.glob(f"{notebook.stem}-*.ipynb"):
        old.unlink()
    shutil.copy2(notebook, cached)
    return time.perf_counter() - start, False

