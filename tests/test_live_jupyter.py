"""The book opened live, as a teacher does: JupyterLab runs a chapter in the smoke profile
and its ipywidgets explorer recomputes when its slider moves.

Starts ``jupyter lab`` on 127.0.0.1 (a free port, a token, no browser) over a temporary copy
of book/opening/threat_models.ipynb, with a kernelspec ``python3`` pointing at this
interpreter, and drives it in headless chromium (skipped without chromium or playwright, like
the book's browser tests). ``FATLIB_SCREENSHOTS=<folder>`` keeps a screenshot when it fails.
"""

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import headless_chromium

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "book" / "opening" / "threat_models.ipynb"
START_TIMEOUT = 180   # s: the server answers, the notebook and its kernel are up
RUN_TIMEOUT = 600     # s: Run All Cells reaches the widget (2 busy cores: generous)
UPDATE_TIMEOUT = 120  # s: the kernel recomputes the explorer after the slider moved

# the state of the notebook after Run All: widget sliders, running/queued cells, tracebacks
NOTEBOOK_STATE = """() => {
  const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
    .map(p => p.textContent);
  const outputs = [...document.querySelectorAll('.jp-OutputArea-output')];
  return {sliders: document.querySelectorAll('.jp-OutputArea .widget-slider').length,
          busy: prompts.filter(t => t.includes('*')).length,
          done: prompts.filter(t => /\\d/.test(t)).length,
          errors: outputs.map(o => o.textContent).filter(t => t.includes('Traceback'))};
}"""
# what the explorer shows, without its controls: text, image sources, plotly trace data
OUTPUT_STATE = """el => {
  const copy = el.cloneNode(true);
  copy.querySelectorAll('.widget-slider, .widget-dropdown').forEach(n => n.remove());
  return {text: copy.textContent,
          images: [...el.querySelectorAll('img')].map(i => i.src),
          plots: [...el.querySelectorAll('.js-plotly-plot')].map(p => JSON.stringify(p.data))};
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _jupyter_dirs(tmp: Path) -> dict:
    """Private Jupyter data/config/runtime/settings folders, and a python3 kernelspec in the
    data folder that runs this interpreter (the venv's, with ipykernel and fatlib)."""
    dirs = {name: tmp / name.lower() for name in ("JUPYTER_DATA_DIR", "JUPYTER_CONFIG_DIR",
                                                 "JUPYTER_RUNTIME_DIR",
                                                 "JUPYTERLAB_SETTINGS_DIR",
                                                 "JUPYTERLAB_WORKSPACES_DIR")}
    spec = dirs["JUPYTER_DATA_DIR"] / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (fatlib)", "language": "python"}))
    config = dirs["JUPYTER_CONFIG_DIR"]
    config.mkdir(parents=True)
    # offline: no news feed, no update check; start the notebook's kernel without asking
    (config / "jupyter_server_config.json").write_text(json.dumps({"LabApp": {
        "news_url": None, "check_for_updates_class": "jupyterlab.NeverCheckForUpdate"}}))
    settings = dirs["JUPYTERLAB_SETTINGS_DIR"] / "@jupyterlab"
    for plugin, values in (("notebook-extension/tracker", {"autoStartDefaultKernel": True}),
                           ("apputils-extension/notification", {"fetchNews": "false"})):
        (settings / plugin).parent.mkdir(parents=True, exist_ok=True)
        (settings / f"{plugin}.jupyterlab-settings").write_text(json.dumps(values))
    return {k: str(v) for k, v in dirs.items()}


def _request(url: str, token: str, method: str = "GET") -> int:
    req = urllib.request.Request(url, method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=10) as response:
        return response.status


def _wait_until_up(proc, url: str, token: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if _request(f"{url}/api/status", token) == 200:
                return
        except OSError:
            time.sleep(1)
    pytest.fail(f"jupyter lab did not answer in {START_TIMEOUT} s:\n{log.read_text()[-3000:]}")


def _stop(proc, url: str, token: str) -> None:
    """Shut the server (and its kernels) down through its API, else terminate it."""
    try:
        _request(f"{url}/api/shutdown", token, method="POST")
        proc.wait(timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser():
    with headless_chromium() as b:
        yield b


@pytest.fixture(scope="module")
def lab(browser, tmp_path_factory):
    """A JupyterLab server over a copy of the chapter; yields the notebook's URL (with token)."""
    tmp = tmp_path_factory.mktemp("live")
    root = tmp / "book"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    port, token = _free_port(), secrets.token_hex(16)
    url = f"http://127.0.0.1:{port}"
    dirs = _jupyter_dirs(tmp)
    # JUPYTER_PATH comes first even in a venv: its python3 kernelspec wins
    env = dict(os.environ, FATLIB_PROFILE="smoke", JUPYTER_PATH=dirs["JUPYTER_DATA_DIR"],
               **dirs)
    env.setdefault("FATLIB_NO_DOWNLOAD", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    log = tmp / "jupyter.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
             "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}"],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=root)
    try:
        _wait_until_up(proc, url, token, log)
        yield f"{url}/lab/tree/{NOTEBOOK.name}?token={token}"
    finally:
        _stop(proc, url, token)


def _run_all_cells(page) -> None:
    """Run > Run All Cells, once the notebook's kernel is idle."""
    page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=START_TIMEOUT * 1000)
    page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"\| Idle$")).first.wait_for(
        timeout=START_TIMEOUT * 1000)
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile("^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile("^Run All Cells$")).click()


def _wait_for_slider(page) -> dict:
    """Poll until an ipywidgets slider is rendered; fail clearly when the run ends without."""
    deadline, idle_polls = time.monotonic() + RUN_TIMEOUT, 0
    while time.monotonic() < deadline:
        state = page.evaluate(NOTEBOOK_STATE)
        if state["sliders"]:
            return state
        if page.locator(".jp-Dialog .jp-mod-accept").count():  # e.g. Select Kernel
            page.locator(".jp-Dialog .jp-mod-accept").first.click()
        if state["errors"]:
            pytest.fail(f"{NOTEBOOK.name} failed in JupyterLab:\n{state['errors'][0][-3000:]}")
        idle_polls = idle_polls + 1 if state["done"] and not state["busy"] else 0
        if idle_polls >= 5:
            pytest.fail(f"{NOTEBOOK.name} ran all {state['done']} code cells in JupyterLab "
                        "but shows no ipywidgets slider (.widget-slider): the chapter must "
                        "keep its live explorer (e.g. fatlib.widgets.attack_explorer)")
        page.wait_for_timeout(1000)
    pytest.fail(f"no ipywidgets slider after {RUN_TIMEOUT} s of Run All Cells: {state}")


def _move(slider) -> str:
    """Press an arrow key on the slider's handle (towards the far end); returns the key."""
    handle = slider.locator(".noUi-handle").first
    handle.scroll_into_view_if_needed()
    at_max = handle.get_attribute("aria-valuenow") == handle.get_attribute("aria-valuemax")
    key = "ArrowLeft" if at_max else "ArrowRight"
    handle.focus()
    handle.press(key)
    return key


def _wait_for_change(output, before: dict) -> dict:
    deadline = time.monotonic() + UPDATE_TIMEOUT
    while time.monotonic() < deadline:
        after = output.evaluate(OUTPUT_STATE)
        if after != before:
            return after
        time.sleep(0.5)
    return after


def _screenshot(page, name: str) -> None:
    folder = os.environ.get("FATLIB_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name), full_page=True)


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.timeout(RUN_TIMEOUT + 2 * START_TIMEOUT + UPDATE_TIMEOUT)
def test_the_chapter_runs_live_and_its_widget_slider_recomputes(browser, lab):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(lab, wait_until="load", timeout=START_TIMEOUT * 1000)
        _run_all_cells(page)
        _wait_for_slider(page)
        output = page.locator(".jp-OutputArea-output", has=page.locator(".widget-slider")).first
        slider = output.locator(".widget-slider").first
        readout = slider.locator(".widget-readout").first
        value, before = readout.text_content(), output.evaluate(OUTPUT_STATE)
        key = _move(slider)
        after = _wait_for_change(output, before)
        assert readout.text_content() != value, f"{key} did not move the slider from {value}"
        assert after != before, (f"the slider moved ({value} -> {readout.text_content()}) "
                                 f"but the explorer's output did not change: {before['text']}")
    except BaseException:
        _screenshot(page, "live_jupyter_failure.png")
        raise
    finally:
        page.close()
