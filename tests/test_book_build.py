"""A smoke build of the whole book, and the built pages in headless chromium.

The browser tests need Debian's chromium (``apt-get install chromium``); without it they
skip, or fail when ``CI=true``. Set ``FATLIB_SCREENSHOTS=<folder>`` to keep a full-page
screenshot of every page.
"""

import functools
import http.server
import os
import re
import shutil
import threading
from pathlib import Path

import nbformat
import pytest

from fatlib import book, chapter, scoreboard

from helpers import headless_chromium

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Build the book in the smoke profile into a temporary folder; returns the html folder.

    The npm tarballs are taken from the checkout's _build/vendor_cache when present.
    """
    out = tmp_path_factory.mktemp("book")
    cache = ROOT / "_build" / "vendor_cache"
    old = os.environ.get(book.VENDOR_CACHE_ENV)
    os.environ[book.VENDOR_CACHE_ENV] = str(cache)
    try:
        index = book.build("smoke", out=out)
    finally:
        if old is None:
            os.environ.pop(book.VENDOR_CACHE_ENV, None)
        else:
            os.environ[book.VENDOR_CACHE_ENV] = old
    assert index == out / "_build" / "html" / "index.html"
    return index.parent


def _page(site, source: Path) -> Path:
    return site / source.relative_to(ROOT).with_suffix(".html")


@pytest.mark.slow
def test_every_toc_page_is_built(site):
    for source in book.toc_files(ROOT):
        assert _page(site, source).exists(), source
    for notebook in book.chapters(ROOT):
        assert "Run card" in _page(site, notebook).read_text(), f"{notebook.name}: no run card"


@pytest.mark.slow
def test_every_paper_row_of_the_built_book_counts_for_a_catalogued_artifact(site):
    rows = chapter.collect_rows(site.parent / "src" / "book")
    ids = [a.artifact for a in scoreboard.load_artifacts()]
    stray = sorted({f"{v.artifact} ({name})" for name, found in rows.items() for v in found
                    if v.artifact.split(" ", 1)[0] in scoreboard.PAPERS
                    and not scoreboard.match(v.artifact, ids)})
    assert not stray, ("closing rows whose artifact starts with no id of data/artifacts.json "
                       f"(the scoreboard would show those artifacts without a verdict): {stray}")


@pytest.mark.slow
def test_pages_load_nothing_from_other_hosts(site):
    assert book.check_offline(site) == []
    for page in site.rglob("*.html"):
        text = page.read_text(errors="replace")
        for cdn in ("cdn.jsdelivr", "cdnjs.cloudflare", "unpkg.com/@jupyter", "cdn.plot.ly"):
            assert f'src="https://{cdn}' not in text, (page, cdn)
    assert (site / "_static" / "plotly.min.js").exists()
    assert (site / "_static" / "mathjax" / "tex-mml-chtml.js").exists()


@pytest.mark.slow
def test_injected_parameters_are_visible(site):
    html = _page(site, ROOT / "book/opening/threat_models.ipynb").read_text()
    assert "tag_injected-parameters" in html and "tag_parameters" in html
    assert "Parameters" in html and "smoke" in html


def _failing_book(root: Path) -> None:
    (root / "book").mkdir(parents=True)
    shutil.copy(ROOT / "_config.yml", root / "_config.yml")
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\n"
                                   "chapters:\n  - file: book/broken\n")
    (root / "book" / "intro.md").write_text("# Intro\n")
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import os\nprofile = os.environ.get('FATLIB_PROFILE', 'quick')",
                                  metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell("raise RuntimeError('boom ' + profile)")],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}})
    nbformat.write(nb, str(root / "book" / "broken.ipynb"))


@pytest.mark.slow
def test_a_failing_chapter_fails_the_build_naming_notebook_and_cell(tmp_path):
    _failing_book(tmp_path / "src")
    with pytest.raises(book.BookError) as err:
        book.build("smoke", root=tmp_path / "src", out=tmp_path / "out", log=lambda _: None)
    message = str(err.value)
    assert "broken.ipynb" in message and "cell 3" in message
    assert "RuntimeError: boom smoke" in message


# --------------------------------------------------------------------------- browser

@pytest.fixture(scope="module")
def browser():
    with headless_chromium() as b:
        yield b


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _visit(browser, url, screenshot=None):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    seen = {"requests": [], "errors": [], "failed": []}
    page.on("request", lambda r: seen["requests"].append(r.url))
    page.on("requestfailed", lambda r: seen["failed"].append(r.url))
    page.on("console", lambda m: m.type == "error" and seen["errors"].append(m.text))
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.goto(url, wait_until="load")
    page.wait_for_timeout(1500)
    if screenshot:
        page.screenshot(path=screenshot, full_page=True)
    return page, seen


@pytest.mark.slow
@pytest.mark.browser
def test_every_page_loads_offline_without_errors(browser, server, site):
    shots = os.environ.get("FATLIB_SCREENSHOTS")
    for source in book.toc_files(ROOT):
        rel = source.relative_to(ROOT).with_suffix(".html").as_posix()
        shot = Path(shots) / rel.replace("/", "_").replace(".html", ".png") if shots else None
        if shot:
            shot.parent.mkdir(parents=True, exist_ok=True)
        page, seen = _visit(browser, f"{server}/{rel}", shot)
        external = [u for u in seen["requests"]
                    if not u.startswith((server, "data:", "blob:"))]
        assert not external, f"{rel} requested {external[:5]}"
        assert not seen["failed"], f"{rel}: failed requests {seen['failed'][:5]}"
        assert not seen["errors"], f"{rel}: console errors {seen['errors'][:5]}"
        page.close()


@pytest.mark.slow
@pytest.mark.browser
def test_math_is_rendered(browser, server):
    for rel in ("index.html", "book/opening/threat_models.html"):
        page, _ = _visit(browser, f"{server}/{rel}")
        page.wait_for_selector("mjx-container", state="attached", timeout=15000)
        assert page.locator("mjx-container").count() > 0, rel
        page.close()


@pytest.mark.slow
@pytest.mark.browser
def test_a_plotly_slider_moves_and_the_figure_changes(browser, server):
    page, _ = _visit(browser, f"{server}/book/opening/threat_models.html")
    graphs = page.locator(".plotly-graph-div")
    assert graphs.count() >= 4
    state = ("el => ({visible: el.data.map(t => t.visible !== false),"
             " active: el.layout.sliders[0].active,"
             " labels: el.layout.sliders[0].steps.map(s => s.label),"
             " title: el.layout.title.text})")
    # the first epsilon slider over attacked images
    index = next(i for i in range(graphs.count()) if graphs.nth(i).evaluate(
        "el => !!el.layout.sliders && el.data.some(t => t.type === 'image')"))
    graph = graphs.nth(index)
    graph.scroll_into_view_if_needed()
    before = graph.evaluate(state)
    labels = before["labels"]
    target = len(labels) - 1 if before["active"] != len(labels) - 1 else 0
    group = graph.locator(".slider-label-group",
                          has_text=re.compile(f"^{re.escape(labels[target])}$"))
    rail = graph.locator(".slider-rail-touch-rect").bounding_box()
    box = group.first.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, rail["y"] + rail["height"] / 2)
    page.wait_for_timeout(500)
    after = graph.evaluate(state)
    assert after["active"] == target
    assert after["visible"] != before["visible"] and after["title"] != before["title"]
    page.close()


@pytest.mark.slow
@pytest.mark.browser
def test_widget_snapshot_renders_with_its_fonts(browser, server):
    page, seen = _visit(browser, f"{server}/book/opening/threat_models.html")
    page.wait_for_selector(".widget-subarea", timeout=15000)
    assert page.locator(".widget-subarea .widget-slider").count() >= 1
    assert page.locator(".widget-subarea img").count() >= 2
    assert not [u for u in seen["failed"] if "html-manager" in u]
    page.close()



def test_check_offline_flags_resources_from_other_hosts_but_not_links(tmp_path):
    (tmp_path / "a.html").write_text(
        '<a href="https://example.org">link</a><script src="_static/x.js"></script>'
        '<img src="data:image/png;base64,AA">')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.html").write_text(
        '<script async src="https://cdn.example.com/x.js"></script>'
        '<link rel="stylesheet" href="//fonts.example.com/f.css">')
    found = book.check_offline(tmp_path)
    assert len(found) == 2 and all(f.startswith("sub/b.html") for f in found)


def test_vendor_fetch_errors_are_clear(tmp_path, monkeypatch):
    spec = "requirejs@2.3.8"
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(book.BookError, match="npm is needed"):
        book.fetch_npm(spec, tmp_path)
    (tmp_path / book.NPM_VENDOR[spec][0]).write_bytes(b"not the tarball")
    with pytest.raises(book.BookError, match="expected 777158e8"):
        book.fetch_npm(spec, tmp_path)


# --------------------------------------------------------------------------- execution order

def _tiny_notebook(path: Path, execute_last: bool | None = None) -> Path:
    metadata = {"fatlib": {"execute_last": execute_last}} if execute_last is not None else {}
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")], metadata=metadata)
    nbformat.write(nb, str(path))
    return path


def test_execute_last_chapters_run_after_all_the_others_in_toc_order(tmp_path):
    board = _tiny_notebook(tmp_path / "scoreboard.ipynb", execute_last=True)
    first = _tiny_notebook(tmp_path / "first.ipynb")
    second = _tiny_notebook(tmp_path / "second.ipynb", execute_last=False)
    later = _tiny_notebook(tmp_path / "later.ipynb", execute_last=True)
    assert book.executes_last(board) and not book.executes_last(first)
    assert not book.executes_last(second)
    assert book.execution_order([board, first, later, second]) == [first, second, board, later]
    assert book.execution_order([first, second]) == [first, second]


def test_an_execute_last_chapter_is_never_taken_from_the_execution_cache(tmp_path, monkeypatch):
    from fatlib.book import execution

    runs = []

    def fake_execute(notebook, output, profile, parameters=None, cwd=None):
        runs.append(notebook.name)
        return output

    monkeypatch.setattr(execution, "execute", fake_execute)
    build_dir = tmp_path / "_build"
    chapter = _tiny_notebook(tmp_path / "chapter.ipynb")
    board = _tiny_notebook(tmp_path / "scoreboard.ipynb", execute_last=True)
    for _ in range(2):
        for notebook in (chapter, board):
            execution.execute_cached(notebook, "smoke", tmp_path, build_dir, force=False)
    assert runs == ["chapter.ipynb", "scoreboard.ipynb", "scoreboard.ipynb"]
    assert [p.name.split("-")[0] for p in (build_dir / "exec_cache").iterdir()] == ["chapter"]


def test_the_build_executes_an_execute_last_chapter_after_the_others(tmp_path, monkeypatch):
    from fatlib.book import site

    stage = tmp_path / "src"
    (stage / "book").mkdir(parents=True)
    (stage / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n"
                                    "  - file: book/scoreboard\n  - file: book/chapter\n")
    (stage / "book" / "intro.md").write_text("# Intro\n")
    _tiny_notebook(stage / "book" / "scoreboard.ipynb", execute_last=True)
    _tiny_notebook(stage / "book" / "chapter.ipynb")
    order = []
    monkeypatch.setattr(site, "execute_cached",
                        lambda notebook, *args: order.append(notebook.name) or (0.0, False))
    lines = []
    assert site._execute_chapters(stage, "smoke", tmp_path, tmp_path / "_build", False,
                                  lines.append) == []
    assert order == ["chapter.ipynb", "scoreboard.ipynb"]
    assert lines[-1].startswith("[2/2] book/scoreboard.ipynb: executed")
