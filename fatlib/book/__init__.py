"""The book: chapter parameters and profiles, run cards, running chapters, building the site.

A chapter is a notebook under ``book/`` listed in ``_toc.yml``. Its first code cell is
tagged ``parameters`` and holds ``profile`` plus plain values (``None`` = "take the
profile's value"); the next cell resolves them with :func:`resolve_profile`, and
:func:`run_card` states profile, parameters, data sources, sizes and device on the page.

    python -m fatlib book build [--profile quick] [--force]
    python -m fatlib book run threat_models -p profile smoke -p n_eval 200 [-o out.ipynb]
    python -m fatlib book list

:func:`build` copies the sources to ``_build/src``, executes every chapter there with
papermill (``FATLIB_PROFILE`` set in the kernel's environment and ``profile`` injected;
chapters marked ``{"fatlib": {"execute_last": true}}`` in their notebook metadata run
after all the others and are never cached), fetches the offline JavaScript (plotly.js
from the plotly package; MathJax, require.js and the ipywidgets embedder from npm,
checksummed and cached in ``_build/vendor_cache``) and runs ``jupyter-book build -W`` on
the executed copies: the site is ``_build/html/index.html``. Only this package and
``fatlib.runs`` touch the disk layout.

The package's modules: ``params`` (profiles and parameters), ``cards`` (run cards),
``sources`` (toc, chapters, execution order), ``execution`` (papermill and the execution
cache), ``vendor`` (offline JavaScript), ``site`` (the build), ``sphinx_hooks`` (this
package as a Sphinx extension: :func:`setup`) and ``cli`` (the command line).
"""

from fatlib.book.cards import RunCard, run_card
from fatlib.book.cli import main
from fatlib.book.execution import execute, execute_cached, execution_key, run_chapter
from fatlib.book.params import (DEFAULT_PROFILE, PROFILE_ENV, PROFILES, Params, env_profile,
                                parse_value, resolve_profile)
from fatlib.book.site import BOOK_SOURCES, build, check_offline
from fatlib.book.sources import (BookError, chapters, execution_order, executes_last,
                                 find_chapter, notebook_parameters, repo_root, toc_files)
from fatlib.book.sphinx_hooks import setup
from fatlib.book.vendor import (NPM_VENDOR, VENDOR_CACHE_ENV, VENDOR_DIR, fetch_npm,
                                prepare_vendor, vendor_cache_dir)

__all__ = [
    "BOOK_SOURCES", "BookError", "DEFAULT_PROFILE", "NPM_VENDOR", "PROFILES", "PROFILE_ENV",
    "Params", "RunCard", "VENDOR_CACHE_ENV", "VENDOR_DIR", "build", "chapters",
    "check_offline", "env_profile", "execute", "execute_cached", "execution_key",
    "execution_order", "executes_last", "fetch_npm", "find_chapter", "main",
    "notebook_parameters", "parse_value", "prepare_vendor", "repo_root", "resolve_profile",
    "run_card", "run_chapter", "setup", "toc_files", "vendor_cache_dir",
]
