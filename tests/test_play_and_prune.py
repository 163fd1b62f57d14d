"""Play-and-Prune: constant-channel folding (exact), the controller's rule, and the method end to end."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import falf_fx
from passes.analysis import analyze_graph
from passes.fold_constants import fold_constants, measure_inputs, removed_inputs
from passes.plan import PruningPlan
from passes.rewrite import slim_graph_module
from tests.conftest import randomize_norms

# -- folding ----------------------------------------------------------------------------------


def _head_linear(bias: bool) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(2, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 5, bias=bias))


def _head_pointwise(bias: bool) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(2, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 1, bias=bias), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def _head_padded() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(2, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def _with_dead_filters(model: nn.Sequential, channels: list[int], beta: float) -> nn.Sequential:
    """Zero the first conv's filters ``channels``: after BN (eval) and ReLU each is the constant relu(beta)."""
    randomize_norms(model, seed=1)
    with torch.no_grad():
        model[0].weight[channels] = 0.0
        model[0].bias[channels] = 0.0
        model[1].running_mean[channels] = 0.0
        model[1].bias[channels] = beta
    return model.double().eval()


def _fold_and_slim(model: nn.Sequential, channels: list[int]):
    x = torch.randn(8, 2, 6, 6, dtype=torch.float64)
    gm = falf_fx.trace(model, x)
    analysis = analyze_graph(gm)
    group = next(g for g in analysis.groups if "0" in g.producers)
    plan = PruningPlan.build(analysis, {group.id: channels})
    constants = measure_inputs(gm, removed_inputs(plan), [(x,)])
    result = fold_constants(gm, plan, constants)
    with torch.no_grad():
        want = gm(x)
        return result, want, result.graph_module(x), slim_graph_module(result.graph_module, result.plan)(x), \
            slim_graph_module(gm, plan)(x)


@pytest.mark.parametrize("make", [_head_linear, _head_pointwise], ids=["flatten-linear", "pointwise-conv"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_removing_constant_channels_after_folding_is_exact(make, bias):
    result, want, folded, slim, unfolded = _fold_and_slim(_with_dead_filters(make(bias), [1, 4], beta=1.5), [1, 4])
    torch.testing.assert_close(folded, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(slim, want, rtol=1e-12, atol=1e-12)
    assert (unfolded - want).abs().max() > 1e-2  # without the fold the constants are lost
    assert sum(result.folded.values()) == (2 * 16 if make is _head_linear else 2)
    assert result.inexact == () and result.unfolded == ()


def test_padded_conv_fold_is_exact_inside_and_reported():
    model = _with_dead_filters(_head_padded(), [2], beta=1.5)
    result, _, _, _, _ = _fold_and_slim(model, [2])
    assert result.inexact == ("3",)
    x = torch.randn(4, 2, 6, 6, dtype=torch.float64)
    inner = lambda m: m[:4](x)[..., 1:-1, 1:-1]  # noqa: E731 - the conv's output away from the padding
    folded = nn.Sequential(*[result.graph_module.get_submodule(str(i)) for i in range(len(model))])
    with torch.no_grad():
        torch.testing.assert_close(inner(folded), inner(model), rtol=1e-12, atol=1e-12)
        assert (folded[:4](x) - model[:4](x)).abs().max() > 1e-3  # the border is not


def test_padded_conv_fold_is_exact_when_relu_kills_the_channel():
    result, want, _, slim, _ = _fold_and_slim(_with_dead_filters(_head_padded(), [2], beta=-1.0), [2])
    assert result.inexact == ()
    torch.testing.assert_close(slim, want, rtol=1e-12, atol=1e-12)


def test_fold_refuses_missing_constants():
    x = torch.randn(2, 2, 6, 6)
    gm = falf_fx.trace(_head_linear(True), x)
    analysis = analyze_graph(gm)
    plan = PruningPlan.build(analysis, {next(g.id for g in analysis.groups if "0" in g.producers): [0]})
    with pytest.raises(ValueError, match=r"no constants for the consumers \['4'\]"):
        fold_constants(gm, plan, {})
