"""NPN: the gate pass, the pruner network, the gate arithmetic, and the method end to end."""
from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
import torch
from torch import nn

import falf_fx
from falf_fx.cli import main
from falf_fx.data import digits_loaders
from falf_fx.methods.pruner_network import (PrunerNetwork, as_removals, gate_spread, removal_order,
                                            threshold_removals)
from falf_fx.models import lenet5, resnet20
from falf_fx.passes.gates import GATE_PREFIX, GATED_GROUPS_KEY, InsertGates, remove_gates
from falf_fx.passes.plan import PruningPlan
from falf_fx.passes.pruner_network import HEADS_NAME, BuildPrunerNetwork, gate_features
from falf_fx.passes.rewrite import slim_graph_module
from tests.conftest import pretrained_state, randomize_norms, with_state

CE = lambda out, batch: nn.functional.cross_entropy(out, batch[1])  # noqa: E731


def _traced(make, shape):
    model = randomize_norms(make(), seed=1)
    gm = falf_fx.trace(model, torch.randn(1, *shape))
    return gm, falf_fx.analyze(gm)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    gm, analysis = _traced(resnet20, (3, 8, 8))
    return gm, analysis, InsertGates(analysis)(gm).graph_module


# -- the gate pass ----------------------------------------------------------------------------------


def test_every_prunable_group_gets_one_gate_input(resnet):
    gm, analysis, gated = resnet
    groups = gated.meta[GATED_GROUPS_KEY]
    assert groups == tuple(g.id for g in analysis.prunable_groups) and len(groups) == 12
    inputs = [n.target for n in gated.graph.nodes if n.op == "placeholder"]
    assert inputs == ["x"] + [f"gate_{gid}" for gid in groups]


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_all_open_gates_compute_the_original_exactly(resnet, mode):
    gm, analysis, gated = resnet
    gm.train(mode == "train")
    gated.train(mode == "train")
    x = torch.randn(4, 3, 8, 8)
    ones = [torch.ones(analysis.groups[gid].size) for gid in gated.meta[GATED_GROUPS_KEY]]
    assert torch.equal(gated(x, *ones), gm(x))


@pytest.mark.parametrize("make, shape", [(resnet20, (3, 8, 8)), (lenet5, (1, 28, 28))])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_closed_gates_compute_what_the_slim_model_computes(make, shape, mode):
    """Gates sit where channels end, so a gate of 0 is removal, BatchNorm in training mode included."""
    gm, analysis = _traced(make, shape)
    gated = InsertGates(analysis)(gm).graph_module
    rng = np.random.default_rng(0)
    removals = {g.id: sorted(rng.choice(g.size, g.size // 2, replace=False).tolist())
                for g in analysis.prunable_groups}
    slim = slim_graph_module(gm, PruningPlan.build(analysis, removals))
    gates = []
    for gid in gated.meta[GATED_GROUPS_KEY]:
        gate = torch.ones(3, analysis.groups[gid].size)
        gate[:, removals[gid]] = 0.0
        gates.append(gate)
    gated.train(mode == "train")
    slim.train(mode == "train")
    x = torch.randn(3, *shape)
    torch.testing.assert_close(gated(x, *gates), slim(x), rtol=1e-5, atol=1e-5)


def test_a_residual_stage_shares_one_gate(resnet):
    """Stage 1's block outputs and skips are one group: every reader of the stream takes the same gate."""
    gm, analysis, gated = resnet
    stage = next(g.id for g in analysis.groups if "layer1.0.conv2" in g.producers)
    gates_of_stage = [n for n in gated.graph.nodes if n.op == "call_module"
                      and str(n.target).startswith(GATE_PREFIX) and n.args[1].target == f"gate_{stage}"]
    readers = {user.target for gate in gates_of_stage for user in gate.users}
    assert readers == {"layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1", "layer2.0.conv1", "layer2.0.shortcut.0"}
    x = torch.randn(2, 3, 8, 8)
    gates = [torch.rand(2, analysis.groups[gid].size) for gid in gated.meta[GATED_GROUPS_KEY]]
    before = gated(x, *gates)
    gates[gated.meta[GATED_GROUPS_KEY].index(stage)][:, 3] = 0.0
    assert not torch.equal(gated(x, *gates), before)


def test_removing_the_gates_restores_the_original(resnet):
    gm, analysis, gated = resnet
    plain = remove_gates(gated)
    assert plain.code == gm.code
    assert not [name for name, _ in plain.named_modules() if name.startswith(GATE_PREFIX)]
    assert plain.get_submodule("layer1.0.conv1").weight is gm.get_submodule("layer1.0.conv1").weight  # shared


# -- the pruner network -------------------------------------------------------------------------------


def test_the_pruner_has_one_head_per_gated_group(resnet):
    gm, analysis, gated = resnet
    sizes = [analysis.groups[gid].size for gid in gated.meta[GATED_GROUPS_KEY]]
    pruner = BuildPrunerNetwork(sizes, init_gate=0.9)(gm).graph_module
    gates = pruner(torch.randn(5, 3, 8, 8))
    assert [tuple(g.shape) for g in gates] == [(5, s) for s in sizes]
    assert all(((g > 0.85) & (g < 0.95)).all() for g in gates)  # every gate starts near init_gate
    heads = pruner.get_submodule(HEADS_NAME)
    assert [h.in_features for h in heads.heads] == [64] * len(sizes)  # the classifier's input features
    assert "fc" not in dict(pruner.named_modules())
    assert pruner.get_submodule("conv1").weight is not gm.get_submodule("conv1").weight  # its own copy
    assert torch.equal(pruner.get_submodule("conv1").weight, gm.get_submodule("conv1").weight)


def test_the_pruner_reads_what_the_classifier_read():
    gm, _ = _traced(lenet5, (1, 28, 28))
    assert gate_features(gm).name == "_8"  # ReLU after the 800 -> 500 layer
    with pytest.raises(ValueError, match="features='nope' is not a node"):
        BuildPrunerNetwork([20], features="nope")(gm)
    segmenter = falf_fx.trace(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 1)), torch.randn(1, 1, 6, 6))
    assert gate_features(segmenter).name == "_2"  # no classifier: the last feature map
    flat = falf_fx.trace(nn.Sequential(nn.Flatten(), nn.ReLU()), torch.randn(1, 1, 6, 6))
    with pytest.raises(ValueError, match="neither a classifier.*features="):
        gate_features(flat)


# -- gate arithmetic ----------------------------------------------------------------------------------


def test_threshold_removes_closed_gates_and_keeps_every_group_alive():
    gates = {0: np.array([0.1, 0.9, 0.4, 0.6]), 1: np.array([0.2, 0.01, 0.3]), 2: np.array([0.2, 0.1])}
    frozen = {0: np.array([False, False, False, False]), 1: np.array([False, False, False]),
              2: np.array([True, False])}
    removals = threshold_removals(gates, frozen, threshold=0.5)
    assert removals == {0: [0, 2], 1: [1, 0], 2: [1]}  # group 1 keeps its most open; group 2's frozen stays
    assert threshold_removals(gates, frozen, threshold=0.05) == {1: [1]}


def test_removal_order_is_global_and_every_prefix_is_valid():
    gates = {0: np.array([0.3, 0.05]), 1: np.array([0.2, 0.9, 0.01])}
    frozen = {0: np.zeros(2, bool), 1: np.array([False, True, False])}
    order = removal_order(gates, frozen)
    assert order == [(1, 2), (0, 1), (1, 0)]  # group 0's last channel never listed; frozen (1, 1) neither
    assert as_removals(order) == {1: [2, 0], 0: [1]}


def test_spread_is_zero_at_the_start_and_ignores_frozen_channels():
    frozen = {0: np.array([False, False, True])}
    assert gate_spread({0: np.array([0.9, 0.9, 0.0])}, frozen) == 0.0
    assert gate_spread({0: np.array([0.9, 0.1, 0.5])}, frozen) == pytest.approx(0.4)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="threshold is a gate value"):
        PrunerNetwork(threshold=1.5)
    with pytest.raises(ValueError, match="lam > 0"):
        PrunerNetwork(lam=0.0)


# -- the method end to end ---------------------------------------------------------------------------


def tiny_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
                         nn.Conv2d(12, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


@pytest.fixture(scope="module")
def data():
    return digits_loaders(image_size=8, batch_size=64, seed=0)


@pytest.fixture(scope="module")
def trained(data):
    return pretrained_state(tiny_net, data[0], epochs=4)


def _model(state) -> nn.Sequential:
    return with_state(tiny_net, state)


NPN_FAST = dict(epochs=2, max_batches=4, gate_batches=2, search_trials=2, pruner_lr=0.05)
FAST = dict(method=PrunerNetwork(**NPN_FAST), finetune_epochs=1, progress=False)


RESUMABLE = dict(target_macs=0.5, seed=1, **FAST)


@pytest.fixture(scope="module")
def uninterrupted(data, trained):
    return falf_fx.compress(_model(trained), data[0], val_loader=data[1], **RESUMABLE)


def test_npn_reaches_a_macs_target_in_one_round(data, uninterrupted):
    result = uninterrupted
    record = result.history[0]
    assert len(result.history) == 1 and record["method"] == "pruner_network" and record["kept"]
    assert 0.4 <= result.report["macs_ratio"] <= 0.5
    assert [t["lam"] for t in record["lambda_search"]][:1] == [0.002] and record["gates_from"] == "val_loader"
    assert copy.deepcopy(result.model).eval()(next(iter(data[1]))[0]).shape[1] == 10  # the fixture stays as run


def test_npn_without_a_target_prunes_by_its_gates_inside_the_tolerance(data, trained):
    result = falf_fx.compress(_model(trained), data[0], val_loader=data[1], tolerance=0.05,
                              **{**FAST, "method": PrunerNetwork(**{**NPN_FAST, "lam": 0.05, "max_batches": 8})})
    record = result.history[0]
    assert "lambda_search" not in record and record["channels_removed"] == record["threshold_removed"] > 0
    if record["kept"]:
        assert result.report["macs_ratio"] < 1.0
    assert result.report["before"]["metric"] - result.report["after"]["metric"] <= 0.05


def test_without_a_val_loader_the_gates_come_from_held_out_training_data(data, trained):
    result = falf_fx.compress(_model(trained), data[0], target_macs=0.6,
                              **{**FAST, "method": PrunerNetwork(**{**NPN_FAST, "search_trials": 1})})
    assert result.history[0]["gates_from"] == "train_heldout" and result.report["macs_ratio"] <= 0.6


def test_a_killed_npn_run_resumes_to_the_same_result(data, trained, uninterrupted, tmp_path):
    options = dict(val_loader=data[1], **RESUMABLE)

    class Killed(BaseException):  # a crash (like KeyboardInterrupt), not a loss error
        pass

    calls = []

    def dies_in_the_second_trial(out, batch):
        calls.append(1)
        if len(calls) == 11:  # two epochs of four batches in the first trial, then three into the second
            raise Killed
        return CE(out, batch)

    with pytest.raises(Killed):
        falf_fx.compress(_model(trained), data[0], loss_fn=dies_in_the_second_trial, checkpoint_dir=tmp_path,
                         **options)
    assert (tmp_path / "round0-npn-trial0-epoch1.pt").exists()
    resumed = falf_fx.compress(_model(trained), data[0], loss_fn=CE, checkpoint_dir=tmp_path, resume=True, **options)
    assert resumed.history == uninterrupted.history
    for a, b in zip(resumed.model.state_dict().values(), uninterrupted.model.state_dict().values()):
        assert torch.equal(a, b)


def test_cli_compress_with_the_pruner_network(tmp_path):
    report = tmp_path / "report.json"
    with contextlib.redirect_stdout(io.StringIO()):
        status = main(["compress", "tests.test_pruner_network:tiny_net", "--data", "digits",
                       "--input-shape", "1,1,8,8", "--pretrain-epochs", "1", "--target-macs", "0.5",
                       "--method", "pruner_network", "--method-option", "epochs=1", "--method-option",
                       "max_batches=2", "--method-option", "search_trials=1", "--report", str(report),
                       "--out", str(tmp_path / "slim.pt")])
    assert status == 0
    written = json.loads(report.read_text())
    assert written["method"] == "pruner_network" and written["macs_ratio"] <= 0.5


def test_the_fill_beyond_closed_gates_spreads_over_groups():
    # open gates sit near 1; group 0's are a hair lower everywhere, which must not empty it first
    gates = {0: np.array([0.97, 0.971, 0.972, 0.973]), 1: np.array([0.99, 0.991, 0.992, 0.993, 0.1])}
    frozen = {0: np.zeros(4, bool), 1: np.zeros(5, bool)}
    order = removal_order(gates, frozen)
    assert order[0] == (1, 4)  # the closed gate first
    assert {gid for gid, _ in order[1:3]} == {0, 1}  # then one open channel from each group
