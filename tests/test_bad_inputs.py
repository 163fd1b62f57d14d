"""Wrong models, inputs, ratios and plans fail with errors that say what is wrong and where."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import falf_fx
from falf_fx import PlanError, PruningPlan, ShapePropagationError, TraceError
from tests.catalog import make


class ValueDependentTopLevel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        if x.mean() > 0:  # control flow on tensor values at the top level: fx cannot trace it
            return self.conv(x)
        return -self.conv(x)


def _analysis(name: str):
    model, inputs = make(name)
    return falf_fx.analyze(falf_fx.trace(model, inputs))


def test_untraceable_top_level_names_the_line_and_the_fixes():
    with pytest.raises(TraceError, match=r"(?s)ValueDependentTopLevel at .*test_bad_inputs\.py:\d+: "
                                         r"if x\.mean\(\) > 0.*leaf_modules=.*concrete_args="):
        falf_fx.trace(ValueDependentTopLevel(), torch.randn(1, 3, 5, 5))


def test_wrong_input_shape_names_the_module_that_failed():
    model, _ = make("conv2d")
    with pytest.raises(ShapePropagationError, match=r"example inputs of shape \(2, 5, 8, 8\): module '0\.0' failed"):
        falf_fx.trace(model, torch.randn(2, 5, 8, 8))


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_prune_ratio_outside_the_open_interval(ratio):
    model, inputs = make("conv2d")
    with pytest.raises(ValueError, match=f"ratio must be strictly between 0 and 1, got {ratio}"):
        falf_fx.prune(model, inputs, ratio=ratio)


def test_plan_emptying_a_group():
    analysis = _analysis("conv2d")
    (group,) = analysis.prunable_groups
    with pytest.raises(PlanError, match=rf"group {group.id} \(0\.0\) would lose all 8 channels: keep at least one"):
        PruningPlan.build(analysis, {group.id: range(8)})


def test_plan_naming_a_frozen_group_says_why_it_is_frozen():
    analysis = _analysis("conv2d")
    (frozen,) = [g for g in analysis.groups if g.frozen.all()]
    with pytest.raises(PlanError, match=rf"group {frozen.id} \(1\) is frozen at channels \[0\]: model output"):
        PruningPlan.build(analysis, {frozen.id: [0]})


def test_plan_with_an_index_out_of_range():
    analysis = _analysis("conv2d")
    (group,) = analysis.prunable_groups
    with pytest.raises(PlanError, match=rf"group {group.id}: channel indices \[8\] out of range 0\.\.7"):
        PruningPlan.build(analysis, {group.id: [1, 8]})


def test_plan_with_an_unknown_group():
    analysis = _analysis("conv2d")
    with pytest.raises(PlanError, match=r"group 7 does not exist \(the analysis has 2 groups\)"):
        PruningPlan.build(analysis, {7: [0]})


def test_plan_listing_a_channel_twice():
    analysis = _analysis("conv2d")
    (group,) = analysis.prunable_groups
    with pytest.raises(PlanError, match="a channel is listed twice"):
        PruningPlan.build(analysis, {group.id: [2, 2]})


def test_plan_emptying_a_sliced_tensor_though_not_its_group():
    analysis = _analysis("concat_split")
    (b,) = [g for g in analysis.groups if "b" in g.producers]
    with pytest.raises(PlanError, match="removes every channel of .*: keep at least one there"):
        PruningPlan.build(analysis, {b.id: [8, 9]})  # all of y[:, 14:], the input of conv s


def test_slim_with_a_plan_made_for_another_graph():
    analysis = _analysis("conv2d")
    other = falf_fx.trace(*make("conv1d"))
    with pytest.raises(PlanError, match=r"this plan was made for another graph \(fingerprint \w{12}, the module's is"):
        falf_fx.slim(other, falf_fx.random_plan(analysis, 0))


def test_a_plan_knows_its_graph_even_when_the_node_names_match():
    x = torch.randn(1, 3, 8, 8)
    narrow = falf_fx.trace(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)), x)
    wide = falf_fx.trace(nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 3)), x)
    assert [n.name for n in narrow.graph.nodes] == [n.name for n in wide.graph.nodes]
    plan = falf_fx.PruningPlan.build(falf_fx.analyze(narrow), {0: [1, 2]})
    with pytest.raises(PlanError, match="this plan was made for another graph"):
        falf_fx.slim(wide, plan)
    trained = copy.deepcopy(narrow)  # the same graph with other weights takes the plan
    with torch.no_grad():
        trained.get_submodule("0").weight.mul_(2)
    assert falf_fx.slim(trained, plan).get_submodule("0").out_channels == 6
