"""The book: chapter parameters and profiles, run cards, running chapters, building the site.

A chapter is a notebook under ``book/`` listed in ``_toc.yml``. Its first code cell is
tagged ``parameters`` and holds ``profile`` plus plain values (``None`` = "take the
profile's value"); the next cell resolves them with :func:`resolve_profile`, and
:func:`run_card` states profile, parameters, data sources, sizes and device on the page.

    python -m fatlib book build [--profile quick] [--force]
    python -m fatlib book run threat_models -p profile smoke -p n_eval 200 [-o out.ipynb]
    python -m fatlib book list

:func:`build` copies the sources to ``_build/src``, executes every chapter there with
papermill (``FATLIB_PROFILE`` set in the kernel's environment and ``profile`` injected),
fetches the offline JavaScript (plotly.js from the plotly package; MathJax, require.js
and the ipywidgets embedder from npm, checksummed and cached in ``_build/vendor_cache``)
and runs ``jupyter-book build -W`` on the executed copies: the site is
``_build/html/index.html``. Only this module and ``fatlib.runs`` touch the disk layout.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PROFILES = ("smoke", "quick", "paper")
PROFILE_ENV = "FATLIB_PROFILE"
DEFAULT_PROFILE = "quick"
BOOK_SOURCES = ("_config.yml", "_toc.yml", "book", "references.bib")
VENDOR_DIR = "_vendor"  # not `_static`: jupyter-book would inject every .js in it into every page
VENDOR_CACHE_ENV = "FATLIB_VENDOR_CACHE"

# npm package -> (tarball written by `npm pack`, its sha256, members to copy: prefix -> target)
NPM_VENDOR = {
    "mathjax@3.2.2": ("mathjax-3.2.2.tgz",
                      "1b9c0a1c44df864e915690558e72adb9cc5203360daefd385084ced3b6c64c09",
                      {"package/es5/": "mathjax/"}),
    "requirejs@2.3.8": ("requirejs-2.3.8.tgz",
                        "777158e89275e16bd51aec3ef714fbcb5dc45789e7078659933bc814916d7dec",
                        {"package/require.js": "require.js"}),
    "@jupyter-widgets/html-manager@1.0.15": (
        "jupyter-widgets-html-manager-1.0.15.tgz",
        "2b9d65cb7913e1c7d671757a10008b32c9c2448d4429513371e55c07d6107638",
        {"package/dist/embed-amd.js": "html-manager/embed-amd.js",
         "package/dist/": "html-manager/fonts/"}),
}
_FONT_SUFFIXES = (".woff2", ".woff", ".ttf", ".eot", ".svg")
# resources a page loads by itself (not links the reader may follow)
_RESOURCE_RE = re.compile(r"<(?:script|img|link|iframe|source|embed)\b[^>]*?\b(?:src|href)\s*=\s*"
                          r"[\"'](https?:)?//([^\"'/]+)", re.I)


class BookError(RuntimeError):
    """A chapter failed, or the site could not be built; the message says where and why."""


# --------------------------------------------------------------------------- parameters

@dataclass
class Params:
    """A chapter's resolved parameters: the profile's values with the caller's overrides.

    Read them as attributes (``P.epochs``) or items (``P["epochs"]``).
    """

    profile: str
    values: dict
    defaults: dict = field(repr=False)

    def __getattr__(self, name):
        values = self.__dict__.get("values", {})
        if name in values:
            return values[name]
        raise AttributeError(f"no parameter {name!r}; parameters are {sorted(values)}")

    def __getitem__(self, name):
        return self.values[name]

    @property
    def overridden(self) -> dict:
        """name -> (value, profile's value) for values that differ from the profile's."""
        return {k: (v, self.defaults[k]) for k, v in self.values.items() if v != self.defaults[k]}

    def _repr_html_(self):
        rows = [[k, _fmt(v), f"overridden (profile: {_fmt(self.defaults[k])})"
                 if k in self.overridden else ""] for k, v in self.values.items()]
        return (f'<div class="fatlib-params"><strong>Parameters, profile {self.profile}</strong>'
                + _html_table(["parameter", "value", ""], rows) + "</div>")


def resolve_profile(profiles: dict, profile: str, overrides: dict | None = None) -> Params:
    """The profile's values, where each value given (not None) in ``overrides`` wins.

    Pass ``overrides=locals()`` from the chapter: the parameters cell sets each value to
    None ("take the profile's") and papermill's ``-p epochs 15`` sets it to 15.
    Args:
        profiles: profile name -> dict of values; every profile has the same keys.
        profile: 'smoke', 'quick' or 'paper' (any key of ``profiles``).
        overrides: name -> value; names that are not profile keys are ignored.
    Returns:
        Params with .profile, .values and .overridden.
    """
    if profile not in profiles:
        raise ValueError(f"unknown profile {profile!r}; this chapter has {sorted(profiles)} "
                         f"(set it with -p profile NAME or ${PROFILE_ENV})")
    keys = set(profiles[profile])
    for name, values in profiles.items():
        if set(values) != keys:
            raise ValueError(f"profile {name!r} has keys {sorted(values)} but {profile!r} has "
                             f"{sorted(keys)}: give every profile the same parameters")
    defaults = dict(profiles[profile])
    values = dict(defaults)
    for name, value in (overrides or {}).items():
        if name in values and value is not None:
            values[name] = value
    return Params(profile, values, defaults)


def env_profile(default: str = DEFAULT_PROFILE) -> str:
    """The profile named by ``$FATLIB_PROFILE`` (tests set 'smoke'), else ``default``."""
    return os.environ.get(PROFILE_ENV, default)


def parse_value(text: str):
    """A command-line parameter value: a Python literal (15, 0.3, 'a', [1, 2], None, True)
    or, failing that, the text itself; 'true'/'false'/'none' in any case also work."""
    lowered = text.strip().lower()
    if lowered in ("true", "false", "none"):
        return {"true": True, "false": False, "none": None}[lowered]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


# --------------------------------------------------------------------------- run card

@dataclass
class RunCard:
    """What a page computed with: profile, parameters, data, sizes, device, versions."""

    rows: list

    def _repr_html_(self):
        return ('<div class="fatlib-run-card"><strong>Run card</strong>'
                + _html_table(["", ""], self.rows, header=False) + "</div>")

    def __repr__(self):
        width = max(len(k) for k, _ in self.rows)
        return "Run card\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in self.rows)


def _sanity_rows(checks) -> list:
    """Card rows for a sanity report: a summary, then one row per check (name, verdict, finding)."""
    checks = list(checks)
    failed = [c.name for c in checks if not c.passed]
    rows = [("sanity checks", f"{len(checks) - len(failed)} of {len(checks)} passed"
             + (f"; failed: {', '.join(failed)}" if failed else ""))]
    return rows + [(f"sanity: {c.name}", f"{'passed' if c.passed else 'FAILED'}: "
                    f"{_shorten(c.message, 200)}") for c in checks]


def run_card(params: Params, *, data=(), sizes: dict | None = None, device=None,
             notes: str | None = None, sanity=None) -> RunCard:
    """The run card every chapter shows after loading its data.

    Args:
        params: the chapter's resolved parameters.
        data: source strings from ``fatlib.data.load_with_source`` (one per split used).
        sizes: what -> how many, e.g. {"test images (accuracy vs eps)": 500}.
        device: torch device the chapter computes on (default: CPU, or CUDA if available).
        notes: one more line (e.g. where trained models come from).
        sanity: optional sanity report, a list of ``fatlib.sanity.Check`` (e.g. from
            ``fatlib.sanity.run_cheap``): shown as a summary row and one row per check
            (name, passed or FAILED, what it found, shortened to 200 characters).
    Returns:
        RunCard, displayed as a table in notebooks and as text in a terminal.
    """
    import torch

    import fatlib
    from fatlib.train import resolve_precision

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    over = params.overridden
    rows = [("profile", params.profile),
            ("parameters", ", ".join(f"{k}={_fmt(v)}" for k, v in params.values.items())),
            ("overridden", ", ".join(f"{k}={_fmt(v)} (profile: {_fmt(d)})"
                                     for k, (v, d) in over.items()) or "none")]
    rows += [("data", s) for s in data]
    rows += [(f"size: {k}", _fmt(v)) for k, v in (sizes or {}).items()]
    auto = resolve_precision("auto", torch.device(device))
    rows += [("device", f"{torch.device(device)}, {torch.get_num_threads()} CPU threads; "
                        f"precision 'auto' trains in {auto} here"),
             ("versions", f"fatlib {fatlib.__version__} ({_git_describe()}), "
                          f"torch {torch.__version__}, python {sys.version.split()[0]}")]
    if notes:
        rows.append(("notes", notes))
    if sanity is not None:
        rows += _sanity_rows(sanity)
    return RunCard(rows)


def _git_describe() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "no git"
    return f"commit {out.stdout.strip()}" if out.returncode == 0 else "no commit"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _html_table(columns, rows, header=True) -> str:
    head = ("<thead><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
            + "</tr></thead>") if header else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f'<table class="fatlib-table">{head}<tbody>{body}</tbody></table>'


# --------------------------------------------------------------------------- chapters

def repo_root() -> Path:
    """The folder holding ``_config.yml`` and ``book/`` (the fatlib checkout)."""
    root = Path(__file__).resolve().parents[1]
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
            raise BookError(f"_toc.yml lists {name!r} but neither {name}.ipynb nor {name}.md exists")
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


# --------------------------------------------------------------------------- running

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
                        f"  cell source: {_shorten(err.source)}\n"
                        f"  executed copy with the traceback: {output}") from None
    return output


def _shorten(text: str, n: int = 300) -> str:
    text = " | ".join(line for line in text.splitlines() if line.strip())
    return text if len(text) <= n else text[:n] + " ..."


def run_chapter(chapter: str | Path, parameters: dict | None = None, *,
                output: Path | None = None, profile: str | None = None) -> Path:
    """Re-run one chapter with papermill and any of its parameters; returns the executed copy.

    Args:
        chapter: see :func:`find_chapter`.
        parameters: name -> value; names must be in the chapter's ``parameters`` cell.
        output: where to write the executed notebook (default ``_build/runs/<chapter>-<profile>.ipynb``).
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


# --------------------------------------------------------------------------- execution cache

def _tree_digest(folder: Path, pattern: str, content: bool) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob(pattern)) if folder.exists() else []:
        if path.is_file() and "__pycache__" not in path.parts:
            stat = path.stat()
            digest.update(path.relative_to(folder).as_posix().encode())
            digest.update(path.read_bytes() if content else f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def execution_key(notebook: Path, profile: str, root: Path) -> str:
    """Hash of everything an executed chapter depends on: its source, the profile, fatlib's
    code, the records in data/records, the data directory setting and the python version."""
    parts = [notebook.read_bytes(), profile.encode(), sys.version.encode(),
             _tree_digest(Path(__file__).resolve().parent, "*.py", content=True).encode(),
             _tree_digest(Path(os.environ.get("FATLIB_RECORDS_DIR") or root / "data" / "records"),
                          "*", content=False).encode(),
             os.environ.get("FATLIB_DATA_DIR", "").encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:20]


# --------------------------------------------------------------------------- vendor JavaScript

def vendor_cache_dir(build_dir: Path) -> Path:
    """Where npm tarballs are kept between builds: ``$FATLIB_VENDOR_CACHE`` or
    ``<build_dir>/vendor_cache``."""
    return Path(os.environ.get(VENDOR_CACHE_ENV) or build_dir / "vendor_cache")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_npm(spec: str, cache: Path) -> Path:
    """The npm tarball of ``spec`` (a key of NPM_VENDOR) in ``cache``, checksum verified;
    downloaded with ``npm pack`` when missing."""
    filename, sha256, _ = NPM_VENDOR[spec]
    tarball = cache / filename
    if not tarball.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise BookError(f"npm is needed once to fetch {spec} (offline MathJax / widgets "
                            f"JavaScript): install Node.js, or put {filename} into {cache}")
        cache.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([npm, "pack", spec, "--pack-destination", str(cache), "--silent"],
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 or not tarball.exists():
            raise BookError(f"`npm pack {spec}` failed (is the npm registry reachable?); or put "
                            f"{filename} into {cache} by hand.\n{proc.stderr[-2000:]}")
    if _sha256(tarball) != sha256:
        raise BookError(f"{tarball} has sha256 {_sha256(tarball)}, expected {sha256}: "
                        "delete it and build again")
    return tarball


def prepare_vendor(vendor: Path, cache: Path) -> Path:
    """Fill ``vendor`` (the site's static folder) with plotly.min.js, MathJax 3, require.js
    and the ipywidgets embedder, so that no page loads anything from a CDN."""
    import plotly

    stamp = vendor / ".fatlib-vendor.json"
    wanted = {"plotly": plotly.__version__, **{s: v[1] for s, v in NPM_VENDOR.items()}}
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return vendor
    shutil.rmtree(vendor, ignore_errors=True)
    vendor.mkdir(parents=True)
    shutil.copy2(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", vendor)
    for spec, (_, _, members) in NPM_VENDOR.items():
        _extract(fetch_npm(spec, cache), members, vendor)
    stamp.write_text(json.dumps(wanted))
    return vendor


def _extract(tarball: Path, members: dict, target: Path) -> None:
    with tarfile.open(tarball) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            for prefix, dest in members.items():
                if prefix.endswith("/"):
                    rest = member.name[len(prefix):]
                    fonts_only = dest.endswith("fonts/")
                    if not member.name.startswith(prefix) or (
                            fonts_only and ("/" in rest or not rest.endswith(_FONT_SUFFIXES))):
                        continue
                    out = target / dest / rest
                elif member.name == prefix:
                    out = target / dest
                else:
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tar.extractfile(member).read())


# --------------------------------------------------------------------------- building

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
    failures = []
    notebooks = chapters(stage)
    for i, notebook in enumerate(notebooks, 1):
        name = notebook.relative_to(stage).as_posix()
        try:
            seconds, cached = _execute_cached(notebook, profile, root, build_dir, force)
            how = "from the execution cache" if cached else f"executed in {seconds:.0f} s"
            log(f"[{i}/{len(notebooks)}] {name}: {how} ({profile})")
        except BookError as err:
            log(f"[{i}/{len(notebooks)}] {name}: FAILED")
            failures.append(str(err))
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


def _execute_cached(notebook: Path, profile: str, root: Path, build_dir: Path,
                    force: bool) -> tuple[float, bool]:
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


# --------------------------------------------------------------------------- Sphinx extension

def setup(app):
    """Sphinx extension (``_config.yml``: ``sphinx: extra_extensions: [fatlib.book]``).

    Drops repeated inline scripts (sphinx-thebe's ``const THEBE_JS_URL`` is emitted twice
    under jupyter-book 1.0.4, a page error), and copies the ipywidgets embedder's icon
    fonts to where it looks for them: ``<page folder>/@jupyter-widgets/html-manager/dist/``.
    """
    app.connect("html-page-context", _dedupe_scripts)
    app.connect("build-finished", _copy_widget_fonts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts, seen = context.get("script_files"), set()
    if not scripts:
        return
    kept = []
    for script in scripts:
        attributes = getattr(script, "attributes", {})
        key = (str(getattr(script, "filename", script) or ""),
               tuple(sorted((k, str(v)) for k, v in attributes.items())))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    scripts[:] = kept


def _copy_widget_fonts(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    html_dir = Path(app.outdir)
    fonts = html_dir / "_static" / "html-manager" / "fonts"
    if not fonts.exists():
        return
    folders = {p.parent for p in html_dir.rglob("*.html")
               if "_static" not in p.relative_to(html_dir).parts
               and "embed-amd.js" in p.read_text(errors="replace")}
    for folder in folders:
        target = folder / "@jupyter-widgets" / "html-manager" / "dist"
        target.mkdir(parents=True, exist_ok=True)
        for font in fonts.iterdir():
            shutil.copy2(font, target / font.name)


# --------------------------------------------------------------------------- command line

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fatlib book",
                                     description="Build the book, or re-run one chapter.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="execute every chapter and build the HTML book")
    b.add_argument("--profile", default=DEFAULT_PROFILE, choices=PROFILES)
    b.add_argument("--out", type=Path, default=None,
                   help="folder that receives _build/ (default: the repository root)")
    b.add_argument("--force", action="store_true", help="ignore the execution cache")
    b.add_argument("--no-strict", dest="strict", action="store_false",
                   help="do not turn Sphinx warnings into errors")
    r = sub.add_parser("run", help="re-run one chapter with papermill and any parameters")
    r.add_argument("chapter", help="e.g. threat_models, opening/threat_models or a path")
    r.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                   metavar=("NAME", "VALUE"), help="override a parameter (repeatable)")
    r.add_argument("--profile", choices=PROFILES, default=None)
    r.add_argument("-o", "--output", type=Path, default=None, help="executed notebook path")
    sub.add_parser("list", help="list the chapters and their parameters")
    return parser


def main(argv=None) -> int:
    """``python -m fatlib book build|run|list ...``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["book"]:
        argv = argv[1:]
    args = _parser().parse_args(argv)
    try:
        if args.command == "build":
            build(args.profile, out=args.out, force=args.force, strict=args.strict)
        elif args.command == "run":
            params = {name: parse_value(value) for name, value in args.parameter}
            path = run_chapter(args.chapter, params, output=args.output, profile=args.profile)
            print(f"executed notebook: {path}")
        else:
            root = repo_root()
            for notebook in chapters(root):
                params = ", ".join(f"{k}={v}" for k, v in notebook_parameters(notebook).items())
                print(f"{notebook.relative_to(root).with_suffix('').as_posix()}: {params}")
    except (BookError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
