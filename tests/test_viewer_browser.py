"""The HTML viewer in a real browser: headless Chromium opens the page `save_html` writes.

Checks what a reader sees: the plot rendered (node and edge marks in the SVG, no console errors),
hovering a node shows its tooltip, clicking a node highlights its paths and dims the rest, and
clicking again or on empty space resets. Screenshots go to the test's tmp_path and, when the
CIRCUITS_ARTIFACTS environment variable names a folder, there too (CI keeps them).

Needs selenium (a dev dependency) and Chromium with its driver (Debian: ``apt install chromium
chromium-driver``; `.ci/run` installs them); skips, saying which is missing, without them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import networkx as nx
import pandas as pd
import pytest

import circuits as cc

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')"
)
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

TOKENS = ["<bos>", "The", " cat", " sat"]
WAIT_S = 60  # an upper bound for slow CI machines, not a timing assertion
GD = "document.querySelector('.js-plotly-plot')"
KINDS_DRAWN = ("input", "feature", "error", "output")


def feature_circuit() -> nx.DiGraph:
    """A small attribution graph as a transcoder circuit tracer would give: tokens, features with
    top examples, an error node and an output logit, pruned and with faithfulness measured."""
    nodes: list[dict[str, Any]] = [
        {"key": f"tok{i}", "kind": "input", "site": "embed", "pos": i, "label": t,
         "activation": 1.0}
        for i, t in enumerate(TOKENS)
    ]  # fmt: skip
    for layer, pos, unit in [(0, 1, 3), (0, 2, 5), (0, 2, 9), (1, 2, 4), (1, 3, 1), (2, 3, 7)]:
        nodes.append(
            {"key": f"f{layer}.{unit}@{pos}", "kind": "feature", "site": f"blocks.{layer}.tc",
             "layer": layer, "pos": pos, "unit": unit, "label": f"L{layer}/{unit}",
             "activation": 0.5 + unit / 10, "score": unit / 10,
             "examples": "the cat sat on the mat\na cat and a dog\ncats are animals"}
        )  # fmt: skip
    nodes.append({"key": "err1@3", "kind": "error", "site": "blocks.1.err", "layer": 1, "pos": 3,
                  "label": "err L1"})  # fmt: skip
    nodes.append({"key": "out", "kind": "output", "site": "logits", "pos": 3, "unit": 42,
                  "label": "logit ' on'", "activation": 3.0})  # fmt: skip
    edges = [("tok0", "f0.3@1", 0.1), ("tok1", "f0.3@1", 0.8), ("tok2", "f0.5@2", 1.2),
             ("tok2", "f0.9@2", -0.4), ("f0.5@2", "f1.4@2", 0.9), ("f0.9@2", "f1.4@2", 0.3),
             ("f0.3@1", "f1.1@3", 0.5), ("tok3", "f1.1@3", 0.7), ("f1.4@2", "f2.7@3", 1.1),
             ("f1.1@3", "f2.7@3", -0.6), ("tok3", "err1@3", 0.25), ("err1@3", "f2.7@3", 0.2),
             ("f2.7@3", "out", 1.5), ("f1.4@2", "out", -0.3)]  # fmt: skip
    frame = pd.DataFrame(edges, columns=["source", "target", "weight"])
    meta = {"model": "toy transcoder", "faithfulness": 0.91}
    g = cc.build_graph(frame, nodes=pd.DataFrame(nodes), meta=meta, top_k=20)
    g.graph["replacement_score"] = 0.82
    g.graph["completeness_score"] = 0.95
    return g


def _browser() -> tuple[str, str]:
    """Paths of Chromium and its driver, or a skip that says what to install."""
    binary = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        missing = " and ".join(
            name for name, path in (("chromium", binary), ("chromedriver", driver)) if not path
        )
        pytest.skip(f"no headless browser: {missing} not found (Debian: apt install chromium "
                    "chromium-driver; .ci/run installs them)")  # fmt: skip
    return binary, driver


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    binary, driver = _browser()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,900", "--hide-scrollbars"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:  # the driver named explicitly: selenium must never try to download one
        chrome = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    except WebDriverException as err:
        pytest.skip(f"Chromium is installed but cannot start here: {err.msg}")
    try:
        yield chrome
    finally:
        chrome.quit()


@pytest.fixture
def artifacts(tmp_path: Path) -> list[Path]:
    """Folders screenshots are saved to: tmp_path, and $CIRCUITS_ARTIFACTS when it is set."""
    folders = [tmp_path]
    if os.environ.get("CIRCUITS_ARTIFACTS"):
        folders.append(Path(os.environ["CIRCUITS_ARTIFACTS"]))
        folders[-1].mkdir(parents=True, exist_ok=True)
    return folders


def screenshot(browser: Any, folders: list[Path], name: str) -> Path:
    for folder in folders:
        assert browser.save_screenshot(str(folder / name))
    path = folders[-1] / name
    assert path.stat().st_size > 10_000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return path


def open_viewer(browser: Any, tmp_path: Path) -> nx.DiGraph:
    """Export the circuit, open the page and wait until the plot and its viewer script ran."""
    g = feature_circuit()
    page = cc.save_html(g, tmp_path / "circuit.html")
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(page.resolve().as_uri())
    WebDriverWait(browser, WAIT_S).until(
        lambda b: b.execute_script(
            f"var gd = {GD}; return !!(gd && gd._fullLayout && "
            "gd.querySelectorAll('.annotation-text').length)"  # the viewer's hint: its script ran
        )
    )
    return g


def node_points(browser: Any, kind: str) -> list[Any]:
    """The SVG marks of one node kind (plotly classes a trace's group by its uid)."""
    return browser.find_elements(By.CSS_SELECTOR, f".tracenode-{kind} path.point")


def severe_console_errors(browser: Any) -> list[str]:
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def tooltip(browser: Any) -> str:
    """The text of the hover label shown now ("" when none)."""
    return "\n".join(e.text for e in browser.find_elements(By.CSS_SELECTOR, ".hovertext"))


def key_of(browser: Any, point: Any) -> str:
    """The node key a mark stands for (plotly binds the point's customdata to it)."""
    return str(browser.execute_script("return arguments[0].__data__.data", point))


def opacities(browser: Any, kind: str) -> dict[str, float]:
    """Each node's drawn opacity, by key, read from the page's computed styles."""
    return {
        key_of(browser, p): float(p.value_of_css_property("opacity"))
        for p in node_points(browser, kind)
    }


def path_points(browser: Any) -> int:
    """Points in the traces that redraw the highlighted paths (four per edge)."""
    return int(
        browser.execute_script(
            f"return {GD}.data.filter(function (t) {{ return t.meta && t.meta.role === 'path'; }})"
            ".reduce(function (n, t) { return n + t.x.length; }, 0)"
        )
    )


def dimmed(browser: Any) -> set[str]:
    return {k for kind in KINDS_DRAWN for k, o in opacities(browser, kind).items() if o < 0.5}


def test_page_renders_nodes_and_edges(browser: Any, tmp_path: Path, artifacts: list[Path]) -> None:
    g = open_viewer(browser, tmp_path)
    kinds = {a["kind"] for _, a in g.nodes(data=True)}
    assert kinds == {"input", "feature", "error", "output"}
    for kind in kinds:
        assert len(node_points(browser, kind)) == sum(
            a["kind"] == kind for _, a in g.nodes(data=True)
        )
    lines = browser.execute_script(
        "return Array.from(document.querySelectorAll('.scatterlayer path.js-line'))"
        ".map(function (p) { return p.getAttribute('d') || ''; })"
    )
    segments = sum(d.count("M") for d in lines)
    assert segments >= g.number_of_edges()  # every edge drawn (the legend lines add a few)
    arrows = browser.execute_script(
        f"var gd = {GD}; return gd.data.filter(function (t) {{ return t.meta && "
        "t.meta.role === 'edges'; }).reduce(function (n, t) { return n + "
        "t.marker.size.filter(function (s) { return s > 0; }).length; }, 0)"
    )
    assert arrows == g.number_of_edges()  # one arrow head per edge
    ticks = [t.text for t in browser.find_elements(By.CSS_SELECTOR, ".ytick text")]
    assert ticks[:2] == ["0: <bos>", "1: The"] and ticks[3].endswith("sat")  # token rows
    title = browser.find_element(By.CSS_SELECTOR, ".gtitle").text
    assert "toy transcoder" in title and "faithfulness 0.91" in title and "top_k=20" in title
    legend = browser.find_element(By.CSS_SELECTOR, ".legend").text
    for entry in ("input", "feature", "error", "output", "edge: positive", "edge: negative"):
        assert entry in legend
    print(f"screenshot: {screenshot(browser, artifacts, 'viewer.png')}")
    assert severe_console_errors(browser) == []


def test_hovering_a_node_shows_its_details(
    browser: Any, tmp_path: Path, artifacts: list[Path]
) -> None:
    open_viewer(browser, tmp_path)
    error_node = node_points(browser, "error")[0]
    ActionChains(browser).move_to_element(error_node).perform()
    WebDriverWait(browser, WAIT_S).until(lambda b: "err L1" in tooltip(b))
    assert "kind: error" in tooltip(browser)
    feature = node_points(browser, "feature")[0]
    ActionChains(browser).move_to_element(feature).perform()
    WebDriverWait(browser, WAIT_S).until(lambda b: "top examples" in tooltip(b))
    text = tooltip(browser)
    for phrase in ("kind: feature", "key: f0.3@1", "layer 0 · pos 1 (The)", "score: 0.3",
                   "activation: 0.8", "the cat sat on the mat"):  # fmt: skip
        assert phrase in text
    screenshot(browser, artifacts, "viewer-hover.png")
    assert severe_console_errors(browser) == []


def test_clicking_a_node_highlights_its_paths(
    browser: Any, tmp_path: Path, artifacts: list[Path]
) -> None:
    g = open_viewer(browser, tmp_path)
    assert dimmed(browser) == set()
    # L1/4 (f1.4@2): upstream tok2 -> f0.5, f0.9 -> f1.4; downstream -> f2.7 -> out, and -> out
    on_paths = {"tok2", "f0.5@2", "f0.9@2", "f1.4@2", "f2.7@3", "out"}
    target = next(p for p in node_points(browser, "feature") if key_of(browser, p) == "f1.4@2")
    ActionChains(browser).move_to_element(target).click().perform()
    WebDriverWait(browser, WAIT_S).until(lambda b: dimmed(b) == set(g) - on_paths)
    state = browser.execute_script(
        f"var gd = {GD}; return gd.data.map(function (t) {{ return [t.meta && t.meta.role, "
        "t.opacity === undefined ? 1 : t.opacity, (t.x || []).length]; })"
    )
    assert all(op < 0.5 for role, op, _ in state if role == "edges")  # the other edges dimmed
    assert path_points(browser) == 4 * 7  # its seven edges, redrawn at full strength
    screenshot(browser, artifacts, "viewer-click.png")
    rail = browser.find_element(By.CSS_SELECTOR, ".slider-rail-touch-rect")
    last_step = (rail.size["width"] // 2 - 2, 0)  # the slider's right end: |w| >= 1.07
    ActionChains(browser).move_to_element_with_offset(rail, *last_step).click().perform()
    strong = {"f1.4@2", "f2.7@3", "out"}  # f1.4 -> f2.7 -> out; tok2 -> f0.5 (1.2) is strong too
    WebDriverWait(browser, WAIT_S).until(lambda b: dimmed(b) == set(g) - strong)  # but cut off
    assert path_points(browser) == 4 * 2
    ActionChains(browser).move_to_element(target).click().perform()  # the same node: reset
    WebDriverWait(browser, WAIT_S).until(lambda b: dimmed(b) == set())
    ActionChains(browser).move_to_element(target).click().perform()
    WebDriverWait(browser, WAIT_S).until(lambda b: dimmed(b) == set(g) - strong)
    area = browser.find_element(By.CSS_SELECTOR, ".nsewdrag")  # top right: no node near
    corner = (area.size["width"] // 2 - 5, -area.size["height"] // 2 + 5)
    ActionChains(browser).move_to_element_with_offset(area, *corner).click().perform()
    WebDriverWait(browser, WAIT_S).until(lambda b: dimmed(b) == set())
    assert severe_console_errors(browser) == []
