"""fatlib.book as a Sphinx extension (``_config.yml``: ``sphinx: extra_extensions:
[fatlib.book]``; the package re-exports :func:`setup`)."""

from __future__ import annotations

import shutil
from pathlib import Path


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

