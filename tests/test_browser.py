"""Figures and widgets are web pages: drive them in a real browser.

Headless Chromium (Debian's package; Playwright's own browser download does not work offline)
opens (1) JupyterLab, started here from this environment, running a notebook that shows
``diffviz.explore(trace)``, and (2) the HTML report opened from disk. In both, the test checks
that the figure is drawn, moves the step slider, checks that the figure changed, and saves a
screenshot (to $DIFFVIZ_SCREENSHOTS, or pytest's temporary folder). Every request that would
leave this machine is blocked and recorded.

Select with ``-m browser``, skip with ``-m "not browser"``.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import diffviz

from .conftest import generate

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# the first x0 image of a plot (go.Image traces are drawn as SVG <image> elements)
FIRST_IMAGE_HREF = "el => el.querySelector('g.imagelayer image, image').getAttribute('href')"
# in a notebook page: the explorer figure's title, and its first image
PLOT = "document.querySelector('.jp-OutputArea .js-plotly-plot')"
TITLE = f"{PLOT}.querySelector('.gtitle').textContent"
FIRST_IMAGE = f"{PLOT}.querySelector('g.imagelayer image, image').getAttribute('href')"


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("DIFFVIZ_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install chromium), or "
                    "deselect these tests with -m 'not browser'.")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def offline_page(browser, allowed_host: str | None = None, height: int = 1000, width: int = 1280):
    """A new page whose requests to anywhere but file:, data:, blob: and ``allowed_host`` are
    aborted; returns (page, blocked URLs)."""
    context = browser.new_context(viewport={"width": width, "height": height})
    blocked: list[str] = []

    def route(r):
        url = r.request.url
        local = url.startswith(("file:", "data:", "blob:"))
        if local or (allowed_host and url.split("/")[2] == allowed_host):
            r.continue_()
        else:
            blocked.append(url)
            r.abort()

    context.route("**/*", route)
    return context.new_page(), blocked


# ---- the HTML report ----------------------------------------------------------------------------------
def test_report_draws_and_steps_offline(browser, traced, tmp_path, screenshots):
    path = diffviz.report(traced[1], tmp_path / "report.html")
    page, blocked = offline_page(browser)
    page.goto(path.as_uri())
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 7",
                           timeout=60_000)
    drawn = page.evaluate("[...document.querySelectorAll('.js-plotly-plot')].map(gd => gd._fullData.length)")
    assert len(drawn) == 7 and all(n > 0 for n in drawn)

    gd = page.locator("#fig0")  # the denoising animation
    before = gd.evaluate(FIRST_IMAGE_HREF)
    assert before.startswith("data:image/png;base64,")
    opening = next(s for s in range(traced[1].num_steps) if float(traced[1].sigma[s]) <= 1)
    # where x0 starts to mean something
    assert gd.evaluate("el => el.layout.sliders[0].active") == opening > 0
    rail = gd.locator("rect.slider-rail-touch-rect").bounding_box()
    page.mouse.click(rail["x"] + rail["width"] * 0.99, rail["y"] + rail["height"] / 2)  # the last step
    page.wait_for_function("document.getElementById('fig0').layout.sliders[0].active === 3", timeout=10_000)
    page.wait_for_function(f"document.getElementById('fig0').querySelector('g.imagelayer image, image')"
                           f".getAttribute('href') !== {json.dumps(before)}", timeout=10_000)
    assert "step 3 (t=" in gd.locator(".gtitle").text_content()

    page.mouse.click(rail["x"] + 1, rail["y"] + rail["height"] / 2)  # back to step 0, then play
    page.wait_for_function("document.getElementById('fig0').layout.sliders[0].active === 0", timeout=10_000)
    # play once step 0's frame is drawn (a click during the slider's own transition can be lost under load)
    page.wait_for_function("document.querySelector('#fig0 .gtitle').textContent.includes('step 0 (t=')",
                           timeout=10_000)
    gd.locator("g.updatemenu-button").first.click()
    page.wait_for_function("document.getElementById('fig0').layout.sliders[0].active >= 2", timeout=15_000)

    shot = screenshots / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    assert blocked == [], f"the report tried to reach the network: {blocked[:5]}"
    page.context.close()


# ---- the explorer in JupyterLab ----------------------------------------------------------------------------
def write_notebook(path: Path, cells: list[str]) -> None:
    notebook = {
        "cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": c}
                  for c in cells],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }
    path.write_text(json.dumps(notebook))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def jupyterlab(traced, sd_pipe, tmp_path_factory):
    """JupyterLab on localhost (this Python's environment, so the kernel has diffviz), serving a
    folder with two saved traces and notebooks that explore them (explore.ipynb one, compare.ipynb
    both); yields (base URL, token)."""
    root = tmp_path_factory.mktemp("lab")
    traced[1].save(root / "run.dvz")
    with diffviz.trace(sd_pipe) as other:
        generate(sd_pipe, "a blue circle above a red square", seed=1)
    other.save(root / "other.dvz")
    load = "import diffviz\ntrace = diffviz.load_trace('run.dvz')"
    write_notebook(root / "explore.ipynb", [load, "app = diffviz.explore(trace, ['red'])\napp"])
    write_notebook(root / "compare.ipynb", [
        load, "other = diffviz.load_trace('other.dvz')",
        "app = diffviz.explore(trace, ['red'], compare=other)\napp"])
    # explore.ipynb run and saved with its outputs (as a student or the course saves it), no widget state
    nbclient, nbformat = pytest.importorskip("nbclient"), pytest.importorskip("nbformat")
    saved = nbformat.read(root / "explore.ipynb", as_version=4)
    nbclient.NotebookClient(saved, timeout=120, resources={"metadata": {"path": str(root)}}).execute()
    nbformat.write(saved, root / "saved.ipynb")
    home = tmp_path_factory.mktemp("jupyter-home")
    news = home / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false", "checkForUpdates": false}')  # no "get notified about news?" toast
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               IPYTHONDIR=str(home / "ipython"),
               JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"))
    log = open(root / "jupyterlab.log", "w")  # noqa: SIM115  (open while the fixture yields; closed below)
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
         f"--port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}",
         "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: run cells as the Run menu does
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly"],  # nothing that would ask the internet
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    tail = (root / "jupyterlab.log").read_text()[-3000:]
                    pytest.fail(f"JupyterLab did not start; its log:\n{tail}")
                time.sleep(0.5)
        yield base, token
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def open_notebook(browser, jupyterlab, name: str):
    """Open ``name`` in JupyterLab, wait for its kernel, run every cell as a user would (Run > Run
    All Cells) and wait until the first plotly figure of the outputs is drawn; returns (page,
    blocked URLs, the figure's locator)."""
    base, token = jupyterlab
    page, blocked = offline_page(browser, allowed_host=base.split("/")[2], height=1300, width=1400)
    page.goto(f"{base}/lab/tree/{name}?reset&token={token}")  # reset: no tabs left open by another test
    page.wait_for_function("window.jupyterapp && document.querySelector('.jp-Notebook .jp-Cell')",
                           timeout=90_000)
    page.wait_for_function("""() => {
        const nb = window.jupyterapp.shell.currentWidget;
        return nb && nb.sessionContext && nb.sessionContext.session && nb.sessionContext.session.kernel
            && nb.sessionContext.session.kernel.status === 'idle'; }""", timeout=90_000)
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    plot = page.locator(".jp-OutputArea .js-plotly-plot").first
    plot.wait_for(state="visible", timeout=120_000)
    page.wait_for_function("""() => { const gd = document.querySelector('.jp-OutputArea .js-plotly-plot');
        return gd && gd._fullData && gd._fullData.some(t => t.type === 'heatmap')
            && gd.querySelectorAll('g.imagelayer image, image').length >= 3; }""", timeout=120_000)
    return page, blocked, plot


# the width the figure has, and the width of the notebook output it sits in (px)
WIDTHS = """gd => [gd._fullLayout.width, gd.closest('.jp-OutputArea-output').getBoundingClientRect().width]"""


def test_explorer_first_frame_shows_the_image_under_a_half_transparent_map_at_full_width(
        browser, jupyterlab, screenshots):
    page, blocked, plot = open_notebook(browser, jupyterlab, "explore.ipynb")
    # as drawn, before any interaction: the heat map keeps the opacity its slider shows
    opacity = plot.evaluate("gd => gd._fullData.find(t => t.type === 'heatmap').opacity")
    slider = page.locator(".jp-OutputArea .widget-slider").filter(has_text="opacity")
    assert opacity == pytest.approx(float(slider.locator(".widget-readout").inner_text()))
    assert opacity == pytest.approx(0.6)
    # the still picture above the app, for saved notebooks, is hidden while the app is alive
    still = page.locator("img[alt^='diffviz explorer']")
    assert still.count() == 1
    still.wait_for(state="hidden", timeout=5_000)
    # and the figure fills the output area (it must not wait for a first interaction to resize)
    page.wait_for_timeout(1500)
    width, room = plot.evaluate(WIDTHS)
    assert room > 900, f"the output area is only {room:.0f} px wide in a 1400 px window"
    assert width >= room - 40, f"the figure is {width} px wide in a {room:.0f} px output area"
    shot = screenshots / "explorer_first_frame.png"
    page.screenshot(path=str(shot), full_page=True)
    assert blocked == [], f"JupyterLab or the explorer tried to reach the network: {blocked[:5]}"
    page.context.close()


def test_a_saved_notebook_shows_a_still_of_the_explorer_without_a_kernel(browser, jupyterlab, screenshots):
    base, token = jupyterlab
    page, blocked = offline_page(browser, allowed_host=base.split("/")[2], height=1300, width=1400)
    page.goto(f"{base}/lab/tree/saved.ipynb?reset&token={token}")
    still = page.locator(".jp-OutputArea img[alt^='diffviz explorer']")
    still.wait_for(state="visible", timeout=90_000)
    box = still.bounding_box()
    assert box["width"] > 300 and box["height"] > 60
    assert "run the cell to explore" in page.locator(".jp-OutputArea").last.inner_text()
    page.screenshot(path=str(screenshots / "explorer_saved.png"), full_page=True)
    assert blocked == [], f"JupyterLab tried to reach the network: {blocked[:5]}"
    page.context.close()


def test_explorer_in_jupyterlab_draws_and_follows_the_step_slider(browser, jupyterlab, screenshots):
    page, blocked, plot = open_notebook(browser, jupyterlab, "explore.ipynb")
    before = plot.evaluate(FIRST_IMAGE_HREF)
    assert before.startswith("data:image/png;base64,")
    assert "step 0 of 3" in plot.locator(".gtitle").text_content()

    # move the step slider with the keyboard, as a user can: one step, then one more, timed in the page
    # from the key press to the figure showing the step (title and image)
    slider = page.locator(".jp-OutputArea .widget-slider").filter(has_text="step")
    handle = slider.locator(".noUi-handle")
    handle.focus()
    handle.press("ArrowRight")
    page.wait_for_function(f"{TITLE}.includes('step 1 of 3')", timeout=20_000)
    moved = plot.evaluate(FIRST_IMAGE_HREF)
    assert moved != before
    page.evaluate(f"""() => {{ window.timing = {{}};
        document.addEventListener('keydown', () => {{ window.timing.pressed = performance.now(); }},
                                  {{capture: true, once: true}});
        const poll = () => {{ if ({TITLE}.includes('step 2 of 3') && {FIRST_IMAGE} !== {json.dumps(moved)})
            window.timing.shown = performance.now(); else requestAnimationFrame(poll); }};
        poll(); }}""")
    handle.press("ArrowRight")
    assert slider.locator(".widget-readout").inner_text().strip() == "2"
    page.wait_for_function("window.timing.shown", timeout=20_000)
    took = page.evaluate("window.timing.shown - window.timing.pressed")
    print(f"explorer: slider key press to redrawn figure in the browser, {took:.0f} ms")

    # play from step 0: the page draws the steps itself (the kernel only hears where it is)
    handle.press("Home")
    page.wait_for_function(f"{TITLE}.includes('step 0 of 3')", timeout=20_000)
    page.evaluate(f"""() => {{ window.shown = []; let last = null;
        const poll = () => {{ const t = {TITLE};
            if (t !== last) {{ window.shown.push([performance.now(), t, {PLOT}._fullData[0].source,
                {PLOT}._fullData.find(d => d.type === 'heatmap').z[0][0]]); last = t; }}
            if (!t.includes('step 3 of 3')) requestAnimationFrame(poll); }};
        poll(); }}""")
    page.locator(".jp-OutputArea button").filter(has_text="play").click()
    page.wait_for_function(f"{TITLE}.includes('step 3 of 3')", timeout=10_000)
    page.locator(".jp-OutputArea button").filter(has_text="▶ play").wait_for(timeout=10_000)
    shown = page.evaluate("window.shown")
    steps = [title.split(" · ")[-1].split(" (")[0] for _, title, _, _ in shown]
    assert steps == [f"step {s} of 3" for s in range(4)]
    assert len({image for _, _, image, _ in shown}) == 4 and len({z for _, _, _, z in shown}) == 4
    page.wait_for_function("() => document.querySelector('.jp-OutputArea .widget-slider .widget-readout')"
                           ".textContent.trim() === '3'", timeout=10_000)  # the slider followed
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(shown[1:])]
    print(f"explorer: play shows a step every {statistics.median(gaps):.0f} ms (median)")

    shot = screenshots / "explorer.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    assert blocked == [], f"JupyterLab or the explorer tried to reach the network: {blocked[:5]}"
    page.context.close()



def test_explorer_compares_two_traces_on_one_step_slider(browser, jupyterlab, screenshots):
    page, blocked, plot = open_notebook(browser, jupyterlab, "compare.ipynb")
    page.wait_for_function("""() => document.querySelector('.jp-OutputArea .js-plotly-plot')
        .querySelectorAll('g.imagelayer image, image').length >= 8""", timeout=30_000)
    # two rows of pictures and heat maps, both maps half transparent, the figure as wide as its cell
    heat = plot.evaluate("gd => gd._fullData.filter(t => t.type === 'heatmap').map(t => t.opacity)")
    assert heat == [pytest.approx(0.6)] * 2
    page.wait_for_timeout(1000)
    width, room = plot.evaluate(WIDTHS)
    assert width >= room - 40, f"the figure is {width} px wide in a {room:.0f} px output area"
    prompts = plot.locator(".annotation-text").all_text_contents()
    assert any(t.startswith("A: “a red circle left of a blue square”") for t in prompts)
    assert any(t.startswith("B: “a blue circle above a red square”") for t in prompts)
    # one slider moves both rows: the first x0 of each row changes
    hrefs = """gd => { const im = gd.querySelectorAll('g.imagelayer image, image');
        return [im[0].getAttribute('href'), im[4].getAttribute('href')]; }"""
    before = plot.evaluate(hrefs)
    handle = page.locator(".jp-OutputArea .widget-slider").filter(has_text="step").locator(".noUi-handle")
    handle.focus()
    handle.press("End")
    page.wait_for_function("""() => document.querySelector('.jp-OutputArea .js-plotly-plot .gtitle')
        .textContent.includes('step 3 of 3')""", timeout=20_000)
    after = plot.evaluate(hrefs)
    assert after[0] != before[0] and after[1] != before[1]
    page.screenshot(path=str(screenshots / "explorer_compare.png"), full_page=True)
    assert blocked == [], f"JupyterLab or the explorer tried to reach the network: {blocked[:5]}"
    page.context.close()

