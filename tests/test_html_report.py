"""falf_fx.report without a browser: what the HTML file holds, the module views, errors, the CLI and compress."""
from __future__ import annotations

import json
import re

import pytest
import torch
import torchvision
from torch import nn

import falf_fx
from falf_fx.cli import main
from falf_fx.data import digits_loaders
from falf_fx.errors import FalfError
from falf_fx.graph_views import ModuleTree, render_views
from falf_fx.html_report import ReportError
from falf_fx.text_report import graph_nodes

X64 = torch.randn(1, 3, 64, 64)


@pytest.fixture(scope="module")
def resnet18_html(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "resnet18.html"
    falf_fx.report(torchvision.models.resnet18(), X64, path, measure_latency=False)
    return path.read_text()


def test_one_row_per_group_and_every_frozen_reason(resnet18_html):
    analysis = falf_fx.analyze(falf_fx.trace(torchvision.models.resnet18(), X64))
    rows = re.findall(r"<tr class='group (prunable|frozen)' data-group='(\d+)'", resnet18_html)
    assert [int(g) for _, g in rows] == [g.id for g in analysis.groups]
    assert sum(kind == "prunable" for kind, _ in rows) == len(analysis.prunable_groups)
    frozen = [g for g in analysis.groups if not g.prunable]
    assert frozen  # the classifier's output
    titles = " ".join(re.findall(r"<title>([^<]*)</title>", resnet18_html))
    for group in frozen:
        for reason in group.reasons:
            assert reason.replace("'", "&#x27;") in titles  # on hover in the graph
            assert f"<b>{reason}</b>".replace("'", "&#x27;") in resnet18_html  # and in the frozen list


def test_the_page_is_self_contained(resnet18_html):
    assert not re.search(r"""(src|href)=["'](https?:)?//""", resnet18_html)  # nothing fetched from anywhere
    assert "<script src" not in resnet18_html and "<link" not in resnet18_html and "@import" not in resnet18_html
    assert resnet18_html.count("<svg") >= 2  # the graph views and the widths chart, inline
    assert "id='widths-chart'" in resnet18_html and "id='run'" not in resnet18_html


def test_resnet18_fits_whole_in_its_first_view_with_blocks_as_clusters():
    gm = falf_fx.trace(torchvision.models.resnet18(), X64)
    views = render_views(gm, falf_fx.analyze(gm))
    assert views[0].scope_path == "" and set(views[0].nodes) == {n.name for n in gm.graph.nodes}
    assert 'class="cluster module"' in views[0].svg and "layer1.0 (BasicBlock)" in views[0].svg
    by_key = {v.key: v for v in views}
    for view in views[1:]:  # every module's view has a parent, up to the whole model
        assert view.parent_key in by_key


def test_a_big_model_opens_module_by_module_and_every_node_is_drawn_somewhere():
    gm = falf_fx.trace(torchvision.models.densenet121(), X64)
    analysis = falf_fx.analyze(gm)
    tree = ModuleTree(gm, graph_nodes(analysis))
    assert sum(1 for _ in tree.scope_of) == len(gm.graph.nodes)
    views = render_views(gm, analysis, node_budget=60)
    drawn = {name for v in views for name in v.nodes}
    assert drawn == {n.name for n in gm.graph.nodes}
    assert max(len(v.nodes) for v in views) <= 60
    assert 'class="node module collapsed"' in views[0].svg and 'href="#view-' in views[0].svg
    dense = [v for v in views if v.note]  # a dense block: its implied edges are left out, and said
    assert dense and all("edges between boxes are left out" in v.note for v in dense)


def test_the_users_model_is_left_as_it_was(tmp_path):
    model = torchvision.models.resnet18().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    falf_fx.report(model, X64, tmp_path / "r.html", measure_latency=False)
    assert model.training
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(t.is_meta for t in after.values())


def test_bad_inputs_get_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ReportError, match="takes a model .* or the CompressResult of compress, not dict"):
        falf_fx.report({"not": "a model"}, X64, tmp_path / "r.html")
    assert issubclass(ReportError, FalfError)
    monkeypatch.setenv("PATH", str(tmp_path))  # no Graphviz binary to be found
    with pytest.raises(FalfError, match="Graphviz's dot, which is not installed: apt-get install graphviz"):
        falf_fx.report(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), X64, tmp_path / "r.html",
                       measure_latency=False)
    assert not (tmp_path / "r.html").exists()


def test_cli_report_writes_the_page(tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", "torchvision.models:resnet18", "--input-shape", "1,3,64,64", "--out", str(out),
                 "--no-latency", "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["out"] == str(out) and printed["bytes"] == out.stat().st_size
    assert "torchvision.models:resnet18" in out.read_text()
    assert main(["report", "torchvision.models:resnet18", "--out", str(tmp_path / "no" / "r.html")]) == 2
    assert "directory" in capsys.readouterr().err
    assert main(["report", "torchvision.models:resnet18", "--out", str(out), "--ratio", "1.5"]) == 2
    assert "--ratio must be strictly between 0 and 1" in capsys.readouterr().err


def test_ratio_previews_prune_before_and_after(tmp_path):
    model = torchvision.models.resnet18()
    page = falf_fx.report(model, X64, tmp_path / "r.html", ratio=0.5, measure_latency=False).read_text()
    slim = falf_fx.prune(model, X64, ratio=0.5)
    assert "<th>After / before</th>" in page and "falf_fx.prune(model, x, ratio=0.5)" in page
    assert "Output channels per layer, before and after" in page
    assert f"<td>layer1.0.conv1</td><td>64</td><td>{slim.get_submodule('layer1.0.conv1').out_channels}</td>" in page
    with pytest.raises(ReportError, match="ratio= previews prune"):
        falf_fx.report(falf_fx.CompressResult(slim, {}), X64, tmp_path / "r.html", ratio=0.5)


def small_compress_run(directory) -> tuple[falf_fx.CompressResult, torch.Tensor]:
    """Two rounds of compress on digits with a checkpoint folder (where report.html goes), and an input."""
    train, val = digits_loaders(image_size=8, batch_size=64, seed=0)
    model = nn.Sequential(nn.Conv2d(1, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
                          nn.Conv2d(12, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    result = falf_fx.compress(model, train, val_loader=val, target_macs=0.5, rounds=2, finetune_epochs=2,
                              checkpoint_dir=directory, progress=False, measure_latency=False)
    return result, next(iter(train))[0][:1]


def test_compress_writes_report_html_next_to_report_json(tmp_path):
    result, _ = small_compress_run(tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert (tmp_path / "report.json").exists()
    assert "id='rounds-chart'" in page and "The compression run" in page
    assert page.count("<tr class='round") == len(result.history) == 2
    assert "Output channels per layer, before and after" in page
    assert result.report["method"] in page
    ids = re.findall(r"""\sid=["']([^"']+)["']""", page)
    assert len(ids) == len(set(ids))  # every view's and every chart's ids are the page's own
