import io
import json

import pytest
import torch
from rich.console import Console
from torch import nn

import falf_fx
from falf_fx.flops import Cost
from falf_fx.text_report import CostReport, GroupsReport, graph_nodes, graph_table, to_dot

# conv 3->8 (3x3, 8x8 input -> 6x6) then conv 8->4 (1x1): MACs by hand.
CONV0_MACS = 8 * 6 * 6 * 3 * 3 * 3
CONV1_MACS = 4 * 6 * 6 * 8


def _render(renderable) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=200, color_system=None).print(renderable)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def two_convs():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(1, 3, 8, 8)
    return falf_fx.analyze(falf_fx.trace(model, x)), x


def test_cost_report_ratios_and_json():
    report = CostReport("m", (1, 3, 8, 8), Cost(macs=100, params=10), Cost(macs=25, params=5))
    assert report.ratios() == {"macs": 0.25, "flops": 0.25, "params": 0.5}
    data = json.loads(json.dumps(report.to_json()))
    assert data["before"] == {"macs": 100, "flops": 200, "params": 10}
    assert data["after"]["flops"] == 50
    assert "FLOPs = 2 x MACs" in data["convention"]
    text = _render(report.table())
    assert "After / before" in text and "0.250 (-75.0%)" in text


def test_single_cost_report_is_flat():
    data = CostReport("m", (1, 3), Cost(macs=1_500_000, params=7)).to_json()
    assert (data["macs"], data["flops"], data["params"]) == (1_500_000, 3_000_000, 7)
    assert "after" not in data
    assert "1.50 M" in _render(CostReport("m", (1, 3), Cost(1_500_000, 7)).table())


def test_groups_report_counts_macs_share_by_hand(two_convs):
    analysis, x = two_convs
    report = GroupsReport.build("two_convs", analysis, x)
    total = CONV0_MACS + CONV1_MACS
    assert report.cost.macs == total
    hidden, output = report.groups
    assert (hidden.channels, hidden.prunable, hidden.producers) == (8, 8, ("0",))
    assert hidden.macs_share == pytest.approx(1.0)  # conv0 makes the channels, conv1 reads them
    assert (output.channels, output.prunable) == (4, 0)
    assert output.macs_share == pytest.approx(CONV1_MACS / total)
    assert any("model output" in r for r in output.frozen_reasons)
    assert report.prunable_macs_share == pytest.approx(1.0)


def test_groups_report_json_and_render(two_convs):
    analysis, x = two_convs
    report = GroupsReport.build("two_convs", analysis, x)
    data = json.loads(json.dumps(report.to_json()))
    assert data["input_shape"] == [1, 3, 8, 8]
    assert (data["num_groups"], data["num_prunable_groups"]) == (2, 1)
    assert data["groups"][1]["frozen_reasons"] and data["groups"][0]["frozen_reasons"] == []
    text = _render(report.renderable())
    assert "Frozen channels, by reason" in text and "group 1 (4/4 channels frozen)" in text


def test_graph_nodes_carry_shapes_and_groups(two_convs):
    analysis, _ = two_convs
    nodes = {n.name: n for n in graph_nodes(analysis)}
    assert nodes["_0"].target == "0 (Conv2d)"
    assert nodes["_0"].shape == [1, 8, 6, 6]
    assert nodes["_1"].groups == (0,) and nodes["_2"].groups == (1,)
    assert nodes["_2"].inputs == ("_1",)
    assert "1×8×6×6" in _render(graph_table("m", list(nodes.values())))


def test_dot_colours_groups_and_escapes_names(two_convs):
    analysis, _ = two_convs
    dot = to_dot(analysis, name='my "net"')
    assert dot.startswith('digraph "my \\"net\\"" {') and dot.rstrip().endswith("}")
    lines = {line.split(" [")[0].strip(): line for line in dot.splitlines()}
    assert 'fillcolor="#8dd3c7"' in lines['"_0"']  # group 0: first palette colour
    assert "dashed" in lines['"_2"'] and "group 1 (frozen)" in lines['"_2"']  # the output group
    assert '"_0" -> "_1";' in dot
