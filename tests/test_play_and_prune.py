"""Play-and-Prune: constant-channel folding (exact), the controller's rule, and the method end to end."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

import falf_fx
from falf_fx.methods import PlayAndPrune
from falf_fx.data import digits_loaders
from falf_fx.methods import make_method
from falf_fx.methods.play_and_prune import Setting, next_setting
from falf_fx.models import resnet_cifar
from falf_fx.passes.analysis import analyze_graph
from falf_fx.passes.fold_constants import fold_constants, measure_inputs, removed_inputs
from falf_fx.passes.plan import PruningPlan
from falf_fx.passes.rewrite import slim_graph_module
from tests.conftest import pretrained_state, randomize_norms, with_state

# -- folding ----------------------------------------------------------------------------------


def _head_linear(bias: bool) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(2, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
                         nn.Linear(6 * 4 * 4, 5, bias=bias))


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


# -- the controller -------------------------------------------------------------------------------

RULE = dict(max_threshold=1.0, patience=2)


def test_controller_raises_by_its_step_inside_the_tolerance():
    setting, go_on = next_setting(Setting(0.4, 1.0, step=2.0), kept=True, removed=3, **RULE)
    assert go_on and setting == Setting(0.8, 2.0, step=2.0, idle=0)
    setting, _ = next_setting(setting, kept=True, removed=3, **RULE)
    assert (setting.threshold, setting.lam) == (1.0, 4.0)  # W_t stops at its maximum, lam_t goes on


def test_controller_goes_back_halves_the_log_step_and_stops_after_patience_failures():
    setting, go_on = next_setting(Setting(0.8, 2.0, step=4.0), kept=False, removed=5, **RULE)
    assert go_on and setting == Setting(0.2, 0.5, step=2.0, idle=1)
    raised, _ = next_setting(setting, kept=True, removed=1, **RULE)
    assert raised == Setting(0.4, 1.0, step=2.0, idle=0)  # halfway (log scale) between 0.2 that held and 0.8
    setting, go_on = next_setting(setting, kept=False, removed=2, **RULE)
    assert not go_on and setting.idle == 2 and setting.step == pytest.approx(2 ** 0.5)


def test_controller_counts_idle_rounds_as_failures_only_at_the_maximum_threshold():
    setting, go_on = next_setting(Setting(0.5, 1.0, step=3.0, idle=1), kept=True, removed=0, **RULE)
    assert go_on and setting.idle == 0 and setting.threshold == 1.0
    setting, go_on = next_setting(Setting(1.0, 1.0, step=3.0, idle=1), kept=True, removed=0, **RULE)
    assert not go_on and setting.idle == 2


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="0 < zero < 1"):
        make_method("play_and_prune", zero=2.0)


# -- the method end to end ------------------------------------------------------------------------

CE = lambda out, batch: nn.functional.cross_entropy(out, batch[1])  # noqa: E731


def tiny_net() -> nn.Sequential:
    """A small LeNet: no padding, so every fold is exact."""
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16 * 4 * 4, 10))


@pytest.fixture(scope="module")
def data():
    train_loader, val_loader = digits_loaders(image_size=8, batch_size=64, seed=0)
    few = DataLoader(Subset(train_loader.dataset, range(320)), batch_size=64, shuffle=True)  # 5 batches a phase
    return train_loader, val_loader, few


@pytest.fixture(scope="module")
def trained(data):
    return pretrained_state(tiny_net, data[0], epochs=6)


def _model(state) -> nn.Sequential:
    return with_state(tiny_net, state)


def test_play_and_prune_cuts_macs_inside_the_tolerance(data, trained):
    result = falf_fx.compress(_model(trained), data[2], method=PlayAndPrune(threshold=0.5, lam=1.0),
                              val_loader=data[1], tolerance=0.03, rounds=2, progress=False)
    base = result.report["before"]["metric"]
    assert result.report["macs_ratio"] < 1.0
    assert base - result.report["after"]["metric"] <= 0.03
    first = result.history[0]
    assert {"threshold", "lam", "zeroed", "metric", "macs"} <= first.keys()
    assert first["kept"] and first["channels_removed"] == first["zeroed"] > 0
    assert first["removal_error"] < 0.5


def test_play_and_prune_stops_at_a_macs_target(data, trained):
    result = falf_fx.compress(_model(trained), data[2], method=PlayAndPrune(threshold=0.5, lam=1.0),
                              val_loader=data[1], target_macs=0.9, rounds=3, progress=False)
    last = result.history[-1]
    assert len(result.history) == 2 and last["kept"]  # round two reached the target: no third round
    assert last["channels_removed"] < last["zeroed"]  # zeroed filters beyond the target stay
    assert 0.8 < result.report["macs_ratio"] <= 0.9


def test_a_killed_play_and_prune_resumes_to_the_same_result(data, trained, tmp_path):
    options = dict(method=PlayAndPrune(threshold=0.5, lam=1.0), val_loader=data[1], tolerance=0.03, rounds=2, seed=1,
                   finetune_epochs=2, progress=False)
    uninterrupted = falf_fx.compress(_model(trained), data[2], **options)

    class Killed(BaseException):  # a crash (like KeyboardInterrupt), not a loss error
        pass

    calls = []

    def dies_in_round_two(out, batch):  # round one is 5 regularised + 5 fine-tuning batches
        calls.append(1)
        if len(calls) == 13:
            raise Killed
        return CE(out, batch)

    with pytest.raises(Killed):
        falf_fx.compress(_model(trained), data[2], loss_fn=dies_in_round_two, checkpoint_dir=tmp_path, **options)
    assert (tmp_path / "compress.pt").exists()
    resumed = falf_fx.compress(_model(trained), data[2], loss_fn=CE, checkpoint_dir=tmp_path, resume=True, **options)
    assert resumed.history == uninterrupted.history
    assert len(resumed.history) == 2 and resumed.history[1]["lam"] > resumed.history[0]["lam"]  # state restored
    for a, b in zip(resumed.model.state_dict().values(), uninterrupted.model.state_dict().values()):
        assert torch.equal(a, b)


def test_a_residual_network_with_even_filter_norms_is_offered_its_share_of_candidates(data):
    """Behind BatchNorm the filters of a ResNet sit near their group's mean norm: W_t as a share of the filters
    still offers that share (a fraction of the mean offered none, then half of them at once)."""
    model = resnet_cifar(8, num_classes=10, in_channels=1).eval()
    analysis = falf_fx.analyze(falf_fx.trace(model, torch.randn(1, 1, 8, 8)))
    prunable = sum(int((~g.frozen).sum()) for g in analysis.prunable_groups if g.param_members)
    result = falf_fx.compress(model, data[0], method=PlayAndPrune(threshold=0.2, lam=3.0, patience=1),
                              val_loader=data[1], tolerance=1.0, rounds=1, finetune_epochs=1, progress=False,
                              measure_latency=False)
    first = result.history[0]
    assert abs(first["candidates"] - 0.2 * prunable) <= 0.05 * prunable
    assert first["kept"] and first["channels_removed"] == first["candidates"] and result.report["macs_ratio"] < 0.8
