"""Allocation of a MACs goal between groups, and MACs predicted from the analysis alone."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

import falf_fx
from falf_fx.flops import count_cost, macs_by_module
from falf_fx.importance import group_importance
from falf_fx.models import resnet20, vgg11_cifar
from falf_fx.planning import MacsModel, allocate, channel_mac_costs, floor_of, random_plan
from falf_fx.errors import PlanError
from falf_fx.passes.rewrite import slim_graph_module

X = torch.randn(1, 3, 32, 32)


def _mobilenet():
    return torchvision.models.mobilenet_v2(width_mult=0.5, num_classes=10)


def _setup(factory):
    gm = falf_fx.trace(factory().eval(), X)
    analysis = falf_fx.analyze(gm)
    per_module = macs_by_module(gm, X)
    return gm, analysis, MacsModel(analysis, per_module, count_cost(gm, X).macs), channel_mac_costs(analysis, per_module)


@pytest.mark.parametrize("factory", [resnet20, vgg11_cifar, _mobilenet], ids=["resnet20", "vgg11", "mobilenetv2"])
def test_predicted_macs_match_fvcore_on_the_slim_model(factory):
    gm, analysis, macs, _ = _setup(factory)
    for seed in range(3):
        plan = random_plan(analysis, seed=seed)
        real = count_cost(slim_graph_module(gm, plan, verify=False), X).macs
        predicted = macs.predict(plan.removed_channels())
        assert real <= predicted <= real * 1.005  # pooling is counted at full width: a little high, never low


@pytest.mark.parametrize("allocation", ["uniform", "global", "cost"])
@pytest.mark.parametrize("goal", [0.5, 0.125])
def test_allocations_land_on_the_goal(allocation, goal):
    gm, analysis, macs, costs = _setup(vgg11_cifar)
    plan = allocate(analysis, group_importance(analysis, "l1"), goal * macs.total, macs, allocation, costs)
    real = count_cost(slim_graph_module(gm, plan, verify=False), X).macs / macs.total
    assert goal * 0.97 <= real <= goal * 1.001


@pytest.mark.parametrize("allocation", ["uniform", "global", "cost"])
@pytest.mark.parametrize("goal", [0.5, 0.0625, 0.0484])
def test_a_costly_last_channel_does_not_overshoot_the_goal(allocation, goal):
    # one channel of ResNet-20's 16-channel stream costs ~2% of the MACs: the plain prefix of the
    # removal order fell 2.9% below a 0.0484 goal; another group's next channel lands within 2%
    gm, analysis, macs, costs = _setup(resnet20)
    plan = allocate(analysis, group_importance(analysis, "l1"), goal * macs.total, macs, allocation, costs)
    real = count_cost(slim_graph_module(gm, plan, verify=False), X).macs / macs.total
    assert goal * 0.98 <= real <= goal * 1.001


def test_uniform_takes_the_same_share_of_every_group_and_min_keep_guards_the_rest():
    _, analysis, macs, costs = _setup(vgg11_cifar)
    scores = group_importance(analysis, "l1")
    plan = allocate(analysis, scores, 0.25 * macs.total, macs, "uniform", costs)
    shares = [len(plan.removals.get(g.id, ())) / g.size for g in analysis.prunable_groups]
    assert max(shares) - min(shares) <= 0.1
    # a group of near-dead channels and a few strong ones: a global ranking empties it down to min_keep
    low = dict(scores)
    first = analysis.prunable_groups[1]
    low[first.id] = np.where(np.arange(first.size) < 4, 1.0, 1e-6)
    plan = allocate(analysis, low, 0.5 * macs.total, macs, "global", costs, min_keep=0.25)
    assert len(plan.removals[first.id]) == first.size - int(np.ceil(0.25 * first.size))


def test_min_channels_holds_a_narrow_stage_at_its_floor_and_the_rest_pays():
    gm, analysis, macs, costs = _setup(resnet20)
    scores = group_importance(analysis, "l1")
    kept = {}
    for floor in (1, 4):
        plan = allocate(analysis, scores, 0.0484 * macs.total, macs, "uniform", costs, min_channels=floor)
        widths = [(g.size, g.size - len(plan.removals.get(g.id, ()))) for g in analysis.prunable_groups]
        kept[floor] = {size: min(w for s, w in widths if s == size) for size in (16, 32, 64)}
        real = count_cost(slim_graph_module(gm, plan, verify=False), X).macs / macs.total
        assert 0.0484 * 0.98 <= real <= 0.0484 * 1.001
    assert kept[1][16] == 3 and kept[4][16] == 4  # uniform alone cuts the 16-channel stage to 3
    assert kept[4][64] < kept[1][64]  # the 64-channel stage gives the MACs back


def test_floor_of_is_the_larger_of_the_share_and_the_channels_but_never_more_than_the_group():
    assert [floor_of(size, 0.05, 4) for size in (2, 4, 16, 64, 200)] == [2, 4, 4, 4, 10]
    assert floor_of(16, 0.0, 1) == 1
    assert floor_of(4, 0.05, 4, per_index=4) == 1  # a HetConv group: one index is a position of 4 blocks


def test_an_unknown_allocation_is_refused():
    _, analysis, macs, costs = _setup(resnet20)
    with pytest.raises(PlanError, match="allocation must be one of"):
        allocate(analysis, group_importance(analysis, "l1"), macs.total / 2, macs, "greedy", costs)
