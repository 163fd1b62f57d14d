"""prune/slim contracts: names kept, saveable, re-traceable, PassManager, importance, ignore, round_to."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn
from torch.fx.passes.infra.pass_manager import PassManager
from torch.fx.passes.infra.pass_base import PassResult

import falf_fx
from falf_fx.flops import count_cost
from falf_fx.models import resnet20, vgg16_cifar
from falf_fx.testing import check_equivalence
from falf_fx.passes import AnalysisPass, SlimPass
from tests.conftest import randomize_norms


@pytest.fixture(scope="module")
def model_and_input():
    return randomize_norms(resnet20()).eval(), torch.randn(2, 3, 32, 32)


def test_slim_keeps_qualified_names_and_state_dict_keys(model_and_input):
    model, x = model_and_input
    slim = falf_fx.prune(model, x, ratio=0.5)
    assert set(slim.state_dict()) == set(model.state_dict())
    assert dict(slim.named_modules()).keys() >= {"layer1.0.conv1", "layer3.2.bn2", "fc"}
    assert slim.get_submodule("layer1.0.conv1").out_channels == 8  # the block's inner width halves


def test_slim_saves_loads_and_retraces(model_and_input):
    model, x = model_and_input
    slim = falf_fx.prune(model, x, ratio=0.5).eval()
    buffer = io.BytesIO()
    torch.save(slim, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), slim(x))
    retraced = torch.fx.symbolic_trace(loaded)
    with torch.no_grad():
        assert torch.equal(retraced(x), slim(x))


def test_no_masks_remain(model_and_input):
    model, x = model_and_input
    slim = falf_fx.prune(model, x, ratio=0.5)
    assert not any("mask" in name for name, _ in slim.named_buffers())
    assert count_cost(slim, x).params < count_cost(model, x).params


def test_passes_run_inside_a_pass_manager(model_and_input):
    model, x = model_and_input
    gm = falf_fx.trace(model, x)
    seen = []

    def user_pass(graph_module):
        seen.append(len(graph_module.graph.nodes))
        return PassResult(graph_module, False)

    analysis_pass = AnalysisPass()
    PassManager(passes=[user_pass, analysis_pass])(gm)
    plan = falf_fx.random_plan(analysis_pass.result, seed=1)
    result = PassManager(passes=[SlimPass(plan), user_pass])(gm)
    assert len(seen) == 2 and result.modified
    check_equivalence(model, x, plan)
    assert count_cost(result.graph_module, x).macs < count_cost(gm, x).macs


def test_random_importance_is_the_same_for_two_models_of_one_architecture():
    x = torch.randn(1, 3, 32, 32)
    first = falf_fx.prune(resnet20(), x, ratio=0.5, importance="random", seed=3)
    second = falf_fx.prune(resnet20(), x, ratio=0.5, importance="random", seed=3)
    other = falf_fx.prune(resnet20(), x, ratio=0.5, importance="random", seed=4)
    kept = lambda gm: gm.meta["falf_fx.removed"]  # noqa: E731
    assert kept(first) == kept(second)
    assert kept(first) != kept(other)


def test_l1_importance_removes_the_weakest_filters():
    model = vgg16_cifar().eval()
    with torch.no_grad():
        model[0].weight[:32] *= 1e-3  # the first 32 filters of the first conv are tiny
    slim = falf_fx.prune(model, torch.randn(1, 3, 32, 32), ratio=0.5, importance="l1")
    kept = slim.meta["falf_fx.removed"]["0.weight"][0]
    assert kept == list(range(32, 64))


def test_ignore_and_round_to():
    model = resnet20().eval()
    x = torch.randn(1, 3, 32, 32)
    slim = falf_fx.prune(model, x, ratio=0.5, ignore=["layer2"])
    assert slim.get_submodule("layer2.0.conv1").out_channels == 32
    assert slim.get_submodule("layer1.0.conv1").out_channels == 8
    rounded = falf_fx.prune(model, x, ratio=0.3, round_to=8)
    assert all(m.out_channels % 8 == 0 for m in rounded.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize("kind,power", [("l1", 1), ("l2", 2)])
def test_magnitude_importance_sums_every_slice_of_a_channel(kind, power):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 5))
    gm = falf_fx.trace(model, torch.randn(1, 3, 6, 6))
    analysis = falf_fx.analyze(gm)
    (group,) = analysis.prunable_groups
    scores = falf_fx.group_importance(analysis, kind)[group.id]
    conv, bn, fc = model[0], model[1], model[4]
    fc_in = fc.weight.detach().double().view(5, 6, 16).abs().pow(power).sum(dim=(0, 2))
    parts = [conv.weight.detach().double().abs().pow(power).sum(dim=(1, 2, 3)), fc_in,
             *(p.detach().double().abs().pow(power) for p in (conv.bias, bn.weight, bn.bias))]
    expected = torch.stack(parts).sum(0).numpy()
    np.testing.assert_allclose(scores, expected if power == 1 else np.sqrt(expected), rtol=1e-12)


def _copy_and_plan(model, x, seed=2):
    """A kept copy of ``model`` and a random plan on an unspent trace of ``model``."""
    import copy
    keep = copy.deepcopy(model)
    gm = falf_fx.trace(model, x)
    return keep, gm, falf_fx.random_plan(falf_fx.analyze(gm), seed=seed)


def test_inplace_slim_equals_the_copying_slim_and_reuses_the_modules(model_and_input):
    model, x = model_and_input
    keep, gm, plan = _copy_and_plan(randomize_norms(resnet20()).eval(), x)
    copied = falf_fx.slim(gm, plan)
    conv = gm.get_submodule("layer1.0.conv1")
    slim = falf_fx.slim(gm, plan, inplace=True)
    assert slim is gm and slim.get_submodule("layer1.0.conv1") is conv  # no copy of any module
    assert conv.weight.shape == copied.get_submodule("layer1.0.conv1").weight.shape
    assert slim.meta["falf_fx.removed"] == copied.meta["falf_fx.removed"]
    with torch.no_grad():
        assert torch.equal(slim.eval()(x), copied.eval()(x))
    replan = falf_fx.PruningPlan.build(falf_fx.analyze(falf_fx.trace(keep, x)), plan.removals)
    check_equivalence(keep, x, replan, slim=slim)  # exact against the kept original


def test_inplace_slim_keeps_tied_tensors_tied():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 8, 3, padding=1)
            self.c = nn.Conv2d(8, 8, 3, padding=1)
            self.c.weight = self.b.weight  # one parameter, two modules
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            x = torch.relu(self.a(x))
            return self.head(torch.relu(self.c(torch.relu(self.b(x)))))

    x = torch.randn(1, 3, 8, 8)
    keep, gm, plan = _copy_and_plan(Tied().eval(), x, seed=0)
    assert plan.num_removed
    slim = falf_fx.slim(gm, plan, inplace=True)
    assert slim.b.weight is slim.c.weight
    replan = falf_fx.PruningPlan.build(falf_fx.analyze(falf_fx.trace(keep, x)), plan.removals)
    check_equivalence(keep, x, replan, slim=slim)


def test_inplace_slim_refuses_a_module_the_plan_was_not_made_from(model_and_input):
    model, x = model_and_input
    gm = falf_fx.trace(model, x)
    plan = falf_fx.random_plan(falf_fx.analyze(gm), seed=0)
    other = falf_fx.trace(model, x)
    with pytest.raises(ValueError, match="the very module"):
        falf_fx.slim(other, plan, inplace=True)


def test_check_equivalence_catches_a_wrong_slim_model(model_and_input):
    model, x = model_and_input
    gm = falf_fx.trace(model, x)
    plan = falf_fx.random_plan(falf_fx.analyze(gm), seed=0)
    slim = falf_fx.slim(gm, plan)
    with torch.no_grad():
        slim.fc.bias[0] += 1.0  # a slim model that is not the masked original
    with pytest.raises(falf_fx.EquivalenceError, match="differs"):
        check_equivalence(model, x, plan, slim=slim)
