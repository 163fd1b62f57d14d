"""The HTML report rendered in a real headless Chromium (Debian's, driven by Playwright): DOM, clicks, pixels.

Locally a missing browser skips these tests with what to install; CI installs it
(``.ci/run``) and sets FALF_FX_REQUIRE_BROWSER=1, which makes the same message a failure.
"""
from __future__ import annotations

import io
import os
import shutil

import pytest
import torch
import torchvision

import falf_fx
from tests.test_html_report import small_compress_run

pytestmark = pytest.mark.xdist_group("browser")  # one Chromium per worker, not one per test

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]  # a closed network: no background connections
X224 = torch.randn(1, 3, 224, 224)


def _missing(what: str) -> None:
    if os.environ.get("FALF_FX_REQUIRE_BROWSER"):
        pytest.fail(what)
    pytest.skip(what)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed: pip install -c constraints.txt -e '.[dev]'")
    if not os.path.exists(CHROMIUM):
        _missing("no Chromium to render the report in: apt-get install chromium (.ci/run does it on CI)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


def _open(browser, path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-ready='1']")
    return page


def _not_blank(png: bytes) -> None:
    from PIL import Image, ImageStat

    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert ImageStat.Stat(image.convert("L")).stddev[0] > 20
    assert len(image.getcolors(maxcolors=1 << 20)) > 50  # text, group colours, edges: not a flat page


def _check_page(page, analysis) -> None:
    """What every report must show: a row per group, each frozen reason, the charts, one graph view."""
    prunable = [g for g in analysis.groups if g.prunable]
    assert page.locator("tr.group.prunable").count() == len(prunable)
    assert page.locator("tr.group").count() == len(analysis.groups)
    frozen_text = page.inner_text("#frozen")
    titles = page.evaluate("() => Array.from(document.querySelectorAll('#views title')).map(t => t.textContent)"
                           ".join('\\n')")
    for group in analysis.groups:
        for reason in group.reasons:
            assert reason in frozen_text
            assert reason in titles or not page.locator(f"#views g.node.g-{group.id}").count()
    assert page.locator("#widths-chart svg").count() == 1
    assert page.locator("#widths-chart svg path, #widths-chart svg rect").count() > 3
    assert page.locator("#views .view:not([hidden])").count() == 1
    _not_blank(page.screenshot(full_page=False))


def _report(model, example, path):
    falf_fx.report(model, example, path, measure_latency=False)
    return falf_fx.analyze(falf_fx.trace(model, example))


def test_resnet18_report(browser, tmp_path):
    path = tmp_path / "resnet18.html"
    analysis = _report(torchvision.models.resnet18(), X224, path)
    page = _open(browser, path)
    _check_page(page, analysis)
    page.locator("tr.group.prunable").nth(2).click()  # a group row shows where the group lives
    assert page.locator("#views .view:not([hidden]) g.node.hl").count() >= 3


def test_densenet201_report_opens_module_by_module_and_stays_small(browser, tmp_path):
    path = tmp_path / "densenet201.html"
    analysis = _report(torchvision.models.densenet201(), X224, path)
    assert path.stat().st_size < 5e6
    page = _open(browser, path)
    _check_page(page, analysis)
    first = page.evaluate("() => document.body.dataset.view")
    page.locator("#views .view:not([hidden]) g.collapsed a").first.click()
    opened = page.evaluate("() => document.body.dataset.view")
    assert opened != first and page.locator(f"#{opened}").is_visible()
    assert page.locator("#crumbs a").count() >= 1  # the way back up
    page.locator("#crumbs a").first.click()
    assert page.evaluate("() => document.body.dataset.view") == first


def test_swin_t_report_says_what_is_frozen(browser, tmp_path):
    path = tmp_path / "swin_t.html"
    analysis = _report(torchvision.models.swin_t(), X224, path)
    page = _open(browser, path)
    _check_page(page, analysis)
    assert any(not g.prunable for g in analysis.groups)
    assert page.locator("#views g.node.frozen").count() > 0


def test_compress_run_report(browser, tmp_path):
    result, example = small_compress_run(tmp_path)
    page = _open(browser, tmp_path / "report.html")
    _check_page(page, falf_fx.analyze(falf_fx.trace(result.model, example)))
    assert page.locator("#rounds-chart svg").count() == 1
    assert page.locator("table.history tr.round").count() == len(result.history)
    assert "met" in page.inner_text("#run")
