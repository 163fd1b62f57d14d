"""CFP (method="correlation"): Pearson over grouped producers, pair selection, the regulariser, compress end to end."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

import falf_fx
from falf_fx.cli import main
from falf_fx.data import digits_loaders
from falf_fx.methods.correlation import (Correlation, correlation_penalty, pair_pearson, pearson, producer_filters,
                                         select_pairs)
from falf_fx.passes.analysis import analyze_graph
from tests.conftest import pretrained_state, with_state

CE = lambda out, batch: nn.functional.cross_entropy(out, batch[1])  # noqa: E731

# -- Pearson over a group's producers ------------------------------------------------------------


def test_pearson_matches_numpy_corrcoef_and_a_flat_filter_correlates_with_nothing():
    filters = torch.randn(7, 30, dtype=torch.float64)
    filters[3] = 2.5 * filters[1] - 4.0  # an affine copy: rho = 1
    filters[5] = -filters[0]  # rho = -1
    expected = np.corrcoef(filters.numpy())
    assert np.allclose(pearson(filters).numpy(), expected, atol=1e-12)
    assert pearson(filters)[1, 3] == pytest.approx(1.0) and pearson(filters)[0, 5] == pytest.approx(-1.0)
    first, second = torch.tensor([1, 0, 6]), torch.tensor([3, 5, 2])
    assert np.allclose(pair_pearson(filters, first, second).numpy(), expected[[1, 0, 6], [3, 5, 2]])
    filters[4] = 0.7
    rho = pearson(filters)
    assert torch.isfinite(rho).all() and rho[4, :4].abs().max() == 0.0


class TwoProducers(nn.Module):
    """conv0 and conv1 write into one residual sum; conv2 maps that sum back onto itself."""

    def __init__(self):
        super().__init__()
        self.conv0, self.conv1 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(3, 6, 1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        y = self.conv0(x) + self.conv1(x)
        y = y + self.conv2(y)
        return self.head(y.mean((2, 3)))


def test_a_filter_spans_every_producer_of_its_group_along_the_output_axis():
    model = TwoProducers()
    gm = falf_fx.trace(model, torch.randn(1, 3, 8, 8))
    group = next(g for g in analyze_graph(gm).groups if "conv0" in g.producers)
    assert set(group.producers) == {"conv0", "conv1", "conv2"}  # conv2's input and output axes are both in it
    filters = producer_filters(gm, group)
    expected = torch.cat([m.weight.flatten(1) for m in (model.conv0, model.conv1, model.conv2)], dim=1)
    assert torch.equal(filters, expected)  # conv2 contributes its rows (outputs), not its columns
    assert np.allclose(pearson(filters.double()).detach().numpy(), np.corrcoef(expected.detach().double().numpy()))


def test_grouped_conv_channels_get_all_their_positions():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 3))
    gm = falf_fx.trace(model, torch.randn(1, 4, 6, 6))
    group = next(g for g in analyze_graph(gm).groups if g.producers == ("0",))
    filters = producer_filters(gm, group)
    weight = model[0].weight.detach().flatten(1)
    member = next(m for m in group.param_members if m.name == "0.weight")
    assert group.size == 4 and member.positions.size == 8  # output channels c and c + 4 are pruned together
    for channel in range(group.size):
        own = np.sort(member.positions[member.channels == channel])
        assert torch.equal(filters[channel], weight[own].flatten())

# -- pair selection -------------------------------------------------------------------------------


def _symmetric(n: int, seed: int, planted: dict[tuple[int, int], float] = {}) -> np.ndarray:  # noqa: B006
    rng = np.random.default_rng(seed)
    rho = rng.uniform(-0.5, 0.5, (n, n))
    rho = (rho + rho.T) / 2
    for (a, b), value in planted.items():
        rho[a, b] = rho[b, a] = value
    np.fill_diagonal(rho, 1.0)
    return rho


def test_pairs_meet_the_quotas_stay_disjoint_and_take_the_strongest_first():
    sizes, quotas = {0: 40, 1: 40, 2: 30}, {0: 12, 1: 4, 2: 8}
    rho = {0: _symmetric(40, 0, {(2, 5): -0.99, (7, 9): 0.97}), 1: _symmetric(40, 1), 2: _symmetric(30, 2)}
    frozen = {g: np.zeros(n, bool) for g, n in sizes.items()}
    scores = {g: np.arange(n, dtype=float) for g, n in sizes.items()}
    pairs = select_pairs(rho, quotas, frozen, scores)
    assert {g: len(p) for g, p in pairs.items()} == quotas
    for g, ps in pairs.items():
        channels = [c for pair in ps for c in pair]
        assert len(channels) == len(set(channels))  # disjoint
    assert pairs[0][0] == (5, 2) and pairs[0][1] == (9, 7)  # highest |rho| first (sign ignored); lower score goes
    strengths = [abs(rho[1][a, b]) for a, b in pairs[1]]
    assert strengths == sorted(strengths, reverse=True)


def test_pairs_never_drop_a_frozen_channel_nor_empty_a_group():
    rho = {0: _symmetric(4, 3, {(0, 1): 0.9, (2, 3): 0.8}), 1: _symmetric(3, 4)}
    frozen = {0: np.array([True, True, False, False]), 1: np.array([False, True, False])}
    scores = {0: np.array([0.0, 0.0, 5.0, 9.0]), 1: np.array([0.0, 0.0, 9.0])}
    pairs = select_pairs(rho, {0: 4, 1: 4}, frozen, scores)
    assert pairs[0] == [(3, 2)]  # (0, 1) are both frozen: never a pair
    assert len(pairs[1]) == 1 and pairs[1][0][1] != 1  # the frozen one is kept even with the lower score
    with_none_left = select_pairs({0: _symmetric(2, 5)}, {0: 3}, {0: np.zeros(2, bool)}, {0: np.zeros(2)})
    assert len(with_none_left[0]) == 1  # a group of two gives one pair, then has nothing left


def test_a_group_without_a_quota_gives_no_pairs():
    rho = {0: _symmetric(6, 6), 1: _symmetric(6, 7)}
    frozen, scores = {0: np.zeros(6, bool), 1: np.zeros(6, bool)}, {0: np.zeros(6), 1: np.zeros(6)}
    assert list(select_pairs(rho, {0: 0, 1: 2}, frozen, scores)) == [1]
    assert select_pairs(rho, {}, frozen, scores) == {}


def test_a_residual_stream_loses_the_same_share_as_the_other_groups():
    """The paper's FLOPs-proportional pair counts cut ResNet-20's streams hardest; the allocation does not."""
    from falf_fx.flops import count_cost, macs_by_module
    from falf_fx.methods import Round
    from falf_fx.models import resnet20
    from falf_fx.planning import MacsModel, channel_mac_costs
    from falf_fx.passes.analysis import analyze_graph
    x = torch.randn(1, 3, 32, 32)
    gm = falf_fx.trace(resnet20().eval(), x)
    analysis = analyze_graph(gm)
    per_module, total = macs_by_module(gm, x), count_cost(gm, x).macs
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 3, 32, 32),
                                                                        torch.randint(0, 10, (8,))), batch_size=4)
    round_ = Round(gm, analysis, loader, CE, 10, 0, 0, macs_to_remove=0.5 * total, total_macs=total,
                   costs=channel_mac_costs(analysis, per_module), macs_model=MacsModel(analysis, per_module, total),
                   progress=False)
    proposal = Correlation(raise_epochs=0).propose(round_)
    shares = {g.id: len(proposal.plan.removals.get(g.id, ())) / g.size for g in analysis.prunable_groups}
    streams = [g.id for g in analysis.prunable_groups if len(g.producers) > 2]
    assert streams and max(shares[g] for g in streams) <= max(s for g, s in shares.items() if g not in streams)


# -- the regulariser --------------------------------------------------------------------------------


def test_the_papers_exp_of_a_sum_vanishes_and_the_per_pair_forms_do_not():
    gradients = {}
    for form in ("paper", "exp", "linear"):
        rho = torch.full((50,), 0.3, requires_grad=True)
        correlation_penalty(rho, form).backward()
        gradients[form] = rho.grad.abs().min().item()
    assert gradients["paper"] < 1e-6
    assert gradients["exp"] == pytest.approx(np.exp(-0.3))
    assert gradients["linear"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="penalty must be one of"):
        correlation_penalty(torch.zeros(2), "log")
    with pytest.raises(ValueError, match="penalty must be one of"):
        Correlation(penalty="log")
    with pytest.raises(ValueError, match="raise_epochs must be a whole number"):
        Correlation(raise_epochs=-1)

# -- compress end to end ----------------------------------------------------------------------------


def tiny_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
                         nn.Conv2d(12, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def small_digits():
    """8 px digits, 6 training batches of 64: a round takes a second or two."""
    train_loader, val_loader = digits_loaders(image_size=8, batch_size=64, seed=0)
    subset = Subset(train_loader.dataset, range(384))
    return DataLoader(subset, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)), val_loader


@pytest.fixture(scope="module")
def data():
    return small_digits()


@pytest.fixture(scope="module")
def trained(data):
    return pretrained_state(tiny_net, data[0], epochs=10)


def _model(state) -> nn.Sequential:
    return with_state(tiny_net, state)


def test_compress_cuts_macs_and_the_raising_phase_raises_the_pairs_correlation(data, trained):
    result = falf_fx.compress(_model(trained), data[0], method="correlation", val_loader=data[1], target_macs=0.5,
                              rounds=1, progress=False)
    record = result.history[0]
    assert result.report["macs_ratio"] <= 0.55 and record["kept"] and record["method"] == "correlation"
    assert record["channels_removed"] == record["pairs"] > 0
    assert record["rho_after"] > record["rho_before"] + 0.2
    assert result.model(next(iter(data[1]))[0]).shape[1] == 10
    without = falf_fx.compress(_model(trained), data[0], method=Correlation(raise_epochs=0), val_loader=data[1],
                               target_macs=0.5, rounds=1, progress=False)
    assert without.history[0]["rho_after"] == without.history[0]["rho_before"]
    assert without.history[0]["pairs"] == record["pairs"]  # the same pairs, only the raising differs


def test_tolerance_keeps_only_rounds_inside_it(data, trained):
    result = falf_fx.compress(_model(trained), data[0], method="correlation", val_loader=data[1], tolerance=0.02,
                              rounds=2, step=0.5, progress=False)
    base = result.report["before"]["metric"]
    assert all(base - h["metric"] <= 0.02 for h in result.history if h["kept"])
    assert base - result.report["after"]["metric"] <= 0.02
    assert result.report["after"]["macs"] <= result.report["before"]["macs"]


def test_a_killed_correlation_run_resumes_to_the_same_result(data, trained, tmp_path):
    options = dict(method="correlation", val_loader=data[1], target_macs=0.4, rounds=2, seed=1, finetune_epochs=2,
                   progress=False)
    uninterrupted = falf_fx.compress(_model(trained), data[0], **options)

    class Killed(BaseException):  # a crash (like KeyboardInterrupt), not a loss error
        pass

    calls = []

    def dies_in_round_two(out, batch):  # 6 batches an epoch, 2 epochs a round: round 2's fine-tuning
        calls.append(1)
        if len(calls) == 21:
            raise Killed
        return CE(out, batch)

    with pytest.raises(Killed):
        falf_fx.compress(_model(trained), data[0], loss_fn=dies_in_round_two, checkpoint_dir=tmp_path, **options)
    assert (tmp_path / "round1-correlate.pt").exists()
    resumed = falf_fx.compress(_model(trained), data[0], loss_fn=CE, checkpoint_dir=tmp_path, resume=True, **options)
    assert resumed.history == uninterrupted.history
    for a, b in zip(resumed.model.state_dict().values(), uninterrupted.model.state_dict().values()):
        assert torch.equal(a, b)


def test_cli_compress_takes_the_method_and_its_options(tmp_path):
    report = tmp_path / "report.json"
    with contextlib.redirect_stdout(io.StringIO()):
        status = main(["compress", "tests.test_correlation:tiny_net", "--data",
                       "tests.test_correlation:small_digits", "--pretrain-epochs", "4", "--method", "correlation",
                       "--method-option", "mu=0.5", "--method-option", "penalty=linear", "--target-macs", "0.6", "--rounds", "1",
                       "--out", str(tmp_path / "slim.pt"), "--report", str(report)])
    assert status == 0
    saved = json.loads(report.read_text())
    assert saved["settings"]["method_options"] == {"mu": 0.5, "penalty": "linear"}
    assert saved["history"][0]["method"] == "correlation" and saved["macs_ratio"] < 0.66
