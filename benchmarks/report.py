"""The HTML report: how long it takes to write, how big it is, how fast Chromium renders it.

ResNet-18, DenseNet-201 and Swin-T at 224 px, and a finished compress run (LeNet-5
on digits).  Render time is the page's own load-event time in headless Chromium
(navigation start to the end of the load event: parsing, the first view laid out,
the script run), median of 3 fresh loads.  Screenshots go to results/ for the README.

    python benchmarks/report.py        # needs Debian's graphviz and chromium, and playwright
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import falf_fx  # noqa: E402
from falf_fx.data import digits_loaders  # noqa: E402
from falf_fx.models import lenet5  # noqa: E402
from falf_fx.training import TrainConfig, train  # noqa: E402
from harness import RESULTS, machine, write_json  # noqa: E402

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]


def _compress_run(directory: Path) -> Path:
    train_loader, val = digits_loaders(batch_size=64, seed=0)
    model = lenet5()
    train(model, train_loader, lambda out, b: torch.nn.functional.cross_entropy(out, b[1]),
          TrainConfig(epochs=5, lr=0.05), progress=False)
    falf_fx.compress(model, train_loader, val_loader=val, target_macs=0.25, rounds=2, finetune_epochs=4,
                     checkpoint_dir=directory, progress=False)
    return directory / "report.html"


_EVERY_VIEW = """() => {
  const t = performance.now();
  for (const view of document.querySelectorAll('#views .view')) {
    view.hidden = false; view.getBoundingClientRect(); document.body.offsetHeight; view.hidden = true;
  }
  return (performance.now() - t) / 1e3;
}"""


def _render(browser, path: Path, screenshot: Path | None) -> dict:
    """Load time of the page (first view), and the time to lay out every other view once."""
    loads, walls, every = [], [], []
    for _ in range(3):
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        start = time.perf_counter()
        page.goto(path.as_uri())
        page.wait_for_selector("body[data-ready='1']")
        walls.append(time.perf_counter() - start)
        loads.append(page.evaluate("() => performance.getEntriesByType('navigation')[0].loadEventEnd") / 1e3)
        every.append(page.evaluate(_EVERY_VIEW))
        page.reload()
        page.wait_for_selector("body[data-ready='1']")
        if screenshot is not None and len(loads) == 1:
            page.screenshot(path=str(screenshot), full_page=True)
        page.close()
    return {"render_s": round(statistics.median(loads), 3), "open_wall_s": round(statistics.median(walls), 3),
            "every_view_s": round(statistics.median(every), 3), "views": page_views(path)}


def page_views(path: Path) -> int:
    return path.read_text().count("<div class='view'")


def main() -> None:
    from playwright.sync_api import sync_playwright

    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    rows = []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        cases = [(name, getattr(torchvision.models, name)()) for name in ("resnet18", "densenet201", "swin_t")]
        for name, model in cases:
            path = Path(tmp, f"{name}.html")
            start = time.perf_counter()
            falf_fx.report(model, x, path, name=f"torchvision.models:{name}")
            rows.append({"model": name, "write_s": round(time.perf_counter() - start, 2),
                         "bytes": path.stat().st_size,
                         **_render(browser, path, RESULTS / f"report-{name}.png" if name == "resnet18" else None)})
            print(rows[-1], flush=True)
        path = _compress_run(Path(tmp, "run"))
        rows.append({"model": "lenet5 compress run (digits)", "write_s": None, "bytes": path.stat().st_size,
                     **_render(browser, path, RESULTS / "report-compress.png")})
        print(rows[-1], flush=True)
        browser.close()
    write_json("report.json", {"machine": machine(torch.get_num_threads()), "input": "1x3x224x224", "rows": rows})


if __name__ == "__main__":
    main()
