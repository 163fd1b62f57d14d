"""Every catalogue model is exact under several plans, and its groups have the shape the rules promise."""
from __future__ import annotations

import functools
import operator
import warnings

import numpy as np
import pytest
import torch

import falf_fx
from falf_fx import EquivalenceError, PlanError, PruningPlan
from falf_fx.testing import check_equivalence
from tests.catalog import CASES, make


@functools.cache
def _analyse(name: str):
    """Model, inputs and analysis of a case, shared by its tests (analysing and slimming never modify them)."""
    model, inputs = make(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the auto-leaf warning is asserted in its own test
        analysis = falf_fx.analyze(falf_fx.trace(model, inputs))
    return model, inputs, analysis


def _group(analysis, producer: str):
    found = [g for g in analysis.groups if producer in g.producers]
    assert len(found) == 1, f"{producer} produces into {len(found)} groups"
    return found[0]


def _member(group, name: str, dim: int):
    found = [m for m in group.members if m.kind == "param" and m.name == name and m.dim == dim]
    assert len(found) == 1, f"{name}[dim {dim}] is bound {len(found)} times in group {group.id}"
    return found[0]


def _prune(name: str, ratio: float = 0.5):
    model, inputs = make(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return falf_fx.prune(model, inputs, ratio=ratio), model, inputs


def _plans(analysis):
    """Two random plans and a greedy one that takes 3/4 of every prunable group."""
    yield from (falf_fx.random_plan(analysis, seed) for seed in range(2))
    yield falf_fx.plan_by_ratio(analysis, falf_fx.group_importance(analysis, "l1"), 0.75)


# -- exactness of every case -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_slim_equals_masked_original(name):
    model, inputs, analysis = _analyse(name)
    removed = 0
    for plan in _plans(analysis):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            check_equivalence(model, inputs, plan)
        removed += plan.num_removed
    assert removed > 0  # every case has something prunable: an empty plan would prove nothing


# -- producers, consumers, followers ---------------------------------------------------------

FOLLOWER_CASES = [
    # case, producer, its norm, the next layer, that layer's input-channel dim, the producer's width
    ("conv1d", "0", "1", "4", 1, 8),
    ("conv2d", "0.0", "0.1", "1", 1, 8),
    ("conv3d", "0", "1", "3", 1, 6),
    ("conv_transpose1d", "0", "1", "3", 0, 8),
    ("conv_transpose3d", "0", "1", "3", 0, 6),
    ("linear", "0", "1", "3", 1, 12),
    ("instance_norm", "0", "1", "3", 1, 8),
]


@pytest.mark.parametrize("name, producer, norm, consumer, in_dim, width", FOLLOWER_CASES)
def test_followers_are_sliced_with_their_producer(name, producer, norm, consumer, in_dim, width):
    _, _, analysis = _analyse(name)
    group = _group(analysis, producer)
    assert group.size == width and not group.frozen.any()
    for param in ("weight", "bias", "running_mean", "running_var"):
        assert _member(group, f"{norm}.{param}", 0).positions.size == width
    assert _member(group, f"{consumer}.weight", in_dim).positions.size == width
    (output_group,) = [g for g in analysis.groups if g.frozen.all()]
    assert any("model output" in r for r in output_group.reasons)

    slim, _, _ = _prune(name)
    norm_module = slim.get_submodule(norm)
    assert norm_module.num_features == width // 2 and norm_module.running_var.shape == (width // 2,)


def test_instance_norm_without_running_statistics_is_sliced_too():
    _, _, analysis = _analyse("instance_norm")
    group = _group(analysis, "3")
    assert group.size == 6 and not group.frozen.any()
    _member(group, "4.weight", 0)
    slim, _, _ = _prune("instance_norm")
    assert slim.get_submodule("4").num_features == 3 and slim.get_submodule("4").weight.shape == (3,)


def test_depthwise_conv1d_keeps_groups_equal_to_channels():
    slim, _, _ = _prune("conv1d")
    depthwise = slim.get_submodule("3")
    assert (depthwise.in_channels, depthwise.out_channels, depthwise.groups) == (4, 4, 4)


def test_grouped_conv_transpose_unites_positions_across_its_groups():
    _, _, analysis = _analyse("conv_transpose2d")
    first = _group(analysis, "0")  # feeds a 2-group ConvTranspose: channel p and p+4 go together
    assert first.size == 4
    np.testing.assert_array_equal(_member(first, "0.weight", 1).channels, [0, 1, 2, 3, 0, 1, 2, 3])
    grouped = _group(analysis, "3")
    assert grouped.size == 4 and not grouped.frozen.any()
    _member(grouped, "5.weight", 0)  # the depthwise transposed conv follows its input channels

    slim, _, _ = _prune("conv_transpose2d")
    assert (slim.get_submodule("3").in_channels, slim.get_submodule("3").out_channels) == (4, 4)
    assert slim.get_submodule("5").groups == 4 and slim.get_submodule("6").in_channels == 4


def test_group_norm_loses_whole_normalisation_groups():
    _, _, analysis = _analyse("group_norm")
    group = _group(analysis, "0")
    assert group.size == 4  # 16 channels in 4 normalisation groups of 4
    np.testing.assert_array_equal(_member(group, "1.weight", 0).channels, np.repeat(np.arange(4), 4))

    slim, _, _ = _prune("group_norm")
    norm = slim.get_submodule("1")
    assert (norm.num_groups, norm.num_channels) == (2, 8)
    assert slim.get_submodule("0").out_channels == 8


def test_a_mean_over_channels_is_pruned_and_counts_the_removed_ones():
    _, _, analysis = _analyse("mean_over_channels")
    group = _group(analysis, "expand")
    assert not group.frozen.any()
    slim = falf_fx.slim(analysis.graph_module, PruningPlan.build(analysis, {group.id: [0, 1, 2, 3, 4]}))
    scales = [n.args[1] for n in slim.graph.nodes if n.op == "call_function" and n.target is operator.mul
              and isinstance(n.args[1], float)]
    assert scales == [3 / 8]  # the mean of the 3 kept channels, over the 8 the original had


def test_layer_norm_over_channels_is_frozen_with_its_reason():
    _, _, analysis = _analyse("layer_norm")
    for producer, norm in (("conv", "module 'norm2d'"), ("fc1", "module 'norm'"), ("whole", "(layer_norm)")):
        group = _group(analysis, producer)
        assert group.frozen.all()
        assert any("LayerNorm normalises over the channel axis" in r and norm in r for r in group.reasons)
    spatial = _group(analysis, "spatial")  # LayerNorm over (H, W) leaves channels alone
    assert not spatial.frozen.any() and spatial.size == 6
    assert [g.producers for g in analysis.prunable_groups] == [("spatial",)]


def test_prelu_slopes_per_channel_are_sliced_and_a_shared_slope_is_not():
    _, _, analysis = _analyse("prelu")
    _member(_group(analysis, "conv1"), "act1.weight", 0)
    assert not any(m.name == "act2.weight" for g in analysis.groups for m in g.members)

    slim, _, _ = _prune("prelu")
    assert slim.act1.weight.shape == (4,) and slim.act1.num_parameters == 4
    assert slim.act2.weight.shape == (1,)


def test_pass_through_ops_keep_one_free_group():
    _, _, analysis = _analyse("pass_through")
    assert [(g.producers, g.size) for g in analysis.prunable_groups] == [(("conv1",), 8)]
    assert not analysis.prunable_groups[0].frozen.any()
    slim, _, _ = _prune("pass_through")
    assert slim.conv2.in_channels == 4


def test_couplers_put_every_operand_in_one_group():
    _, _, analysis = _analyse("couplers")
    group = _group(analysis, "a")
    assert set(group.producers) == {"a", "b", "c", "d", "e"} and group.size == 8 and not group.frozen.any()
    slim, _, _ = _prune("couplers")
    assert {slim.get_submodule(n).out_channels for n in "abcde"} == {4}


def test_broadcast_size_one_channel_axis_does_not_couple():
    _, _, analysis = _analyse("broadcast")
    gate = _group(analysis, "spatial_gate")
    assert gate.size == 1 and gate.frozen.all()
    assert any("single channel broadcast" in r for r in gate.reasons)
    body = _group(analysis, "body")  # the (N, C, 1, 1) excitation multiplies channel by channel
    assert set(body.producers) == {"body", "excite"} and body.size == 8 and not body.frozen.any()
    assert "spatial_gate" not in body.producers


def test_concat_split_chunk_narrow_and_slices_map_offsets():
    _, _, analysis = _analyse("concat_split")
    a, b = _group(analysis, "a"), _group(analysis, "b")
    assert a is not b and (a.size, b.size) == (6, 10)
    np.testing.assert_array_equal(_member(b, "r.weight", 1).channels, np.arange(2, 10))  # narrow(1, 2, 8)
    np.testing.assert_array_equal(_member(b, "s.weight", 1).channels, [8, 9])  # y[:, 14:]
    np.testing.assert_array_equal(_member(b, "t.weight", 1).channels, [6, 7, 8])  # right[:, 1:4]
    q_from_b, q_from_a = _member(b, "q.weight", 1), _member(a, "q.weight", 1)
    np.testing.assert_array_equal(q_from_b.positions, [0, 1, 2])
    np.testing.assert_array_equal(q_from_a.positions, [3, 4, 5])
    np.testing.assert_array_equal(q_from_a.channels, [3, 4, 5])

    model, inputs = make("concat_split")
    plan = PruningPlan.build(analysis, {b.id: [0, 8], a.id: [4]})
    check_equivalence(model, inputs, plan)
    slim = falf_fx.slim(analysis.graph_module, plan)
    assert (slim.r.in_channels, slim.s.in_channels, slim.t.in_channels, slim.q.in_channels) == (7, 1, 2, 4)


def test_flatten_maps_one_channel_to_a_block_of_features():
    _, _, analysis = _analyse("flatten_linear")
    fc_in = _member(_group(analysis, "conv"), "fc.weight", 1)
    np.testing.assert_array_equal(fc_in.channels, np.repeat(np.arange(6), 16))
    slim, _, _ = _prune("flatten_linear")
    assert slim.fc.in_features == 3 * 16


def test_channel_shuffle_keeps_the_shuffle_groups_even():
    _, _, analysis = _analyse("channel_shuffle")
    first = _group(analysis, "conv1")  # 3 shuffle groups of 4: channels j, 4+j, 8+j go together
    assert first.size == 4 and not first.frozen.any()
    np.testing.assert_array_equal(_member(first, "conv1.weight", 0).channels, np.tile(np.arange(4), 3))
    second = _group(analysis, "conv2")  # 4 shuffle groups of 2: the run-time width c // 4 shrinks
    assert second.size == 2 and not second.frozen.any()
    np.testing.assert_array_equal(_member(second, "conv2.weight", 0).channels, np.tile(np.arange(2), 4))

    slim, model, inputs = _prune("channel_shuffle")
    assert (slim.conv1.out_channels, slim.depthwise.groups, slim.conv2.out_channels) == (6, 6, 4)
    assert slim(*inputs).shape == model(*inputs).shape


def test_grouped_and_depthwise_convs_keep_every_conv_group_the_same_width():
    _, _, analysis = _analyse("grouped_depthwise")
    assert _group(analysis, "conv1").size == 8  # 32 channels seen by 4 conv groups of 8
    grouped = _group(analysis, "grouped")
    assert grouped.size == 8
    per_position = np.tile(np.arange(8), 4)  # position p of each of the 4 conv groups is one channel
    np.testing.assert_array_equal(_member(grouped, "depthwise.weight", 0).channels, per_position)
    np.testing.assert_array_equal(_member(grouped, "expand.weight", 0).channels, np.repeat(per_position, 2))

    slim, _, _ = _prune("grouped_depthwise")
    shapes = {n: (m.in_channels, m.out_channels, m.groups) for n, m in slim.named_children() if hasattr(m, "groups")}
    assert shapes == {"conv1": (3, 16, 1), "grouped": (16, 16, 4), "depthwise": (16, 16, 16),
                      "expand": (16, 32, 16), "head": (32, 4, 1)}


@pytest.mark.parametrize("name, frozen, free, words", [
    ("distance_boundary", ("q", "k"), "free", ("not understood", "cdist")),
    ("custom_function", ("conv1",), "conv2", ("not understood", "cube")),
    ("input_residual", ("conv1",), "conv2", ("cannot be sliced", "add")),
    ("channel_count_as_value", ("conv1",), "conv2", ("channel count", "truediv")),
    ("channel_count_as_value", ("side",), "conv2", ("channel count", "_assert")),
])
def test_boundaries_are_frozen_with_a_reason(name, frozen, free, words):
    _, _, analysis = _analyse(name)
    for producer in frozen:
        group = _group(analysis, producer)
        assert group.frozen.all()
        assert any(all(w in r for w in words) for r in group.reasons), group.reasons
    assert not _group(analysis, free).frozen.any()


# -- composite patterns ------------------------------------------------------------------------


def test_residual_blocks_share_groups_along_the_skip_path():
    _, _, analysis = _analyse("residual")
    assert len(analysis.prunable_groups) == 9
    for producers in (("stem.0", "block1.conv2"), ("block2.downsample.0", "block2.conv2"),
                      ("block3.downsample.0", "block3.expand.0", "block4.expand.0")):
        assert set(_group(analysis, producers[0]).producers) == set(producers)
    for inner in ("block1.conv1", "block2.conv1", "block3.reduce.0", "block3.conv.0", "block4.conv.0"):
        assert _group(analysis, inner).producers == (inner,)
    _member(_group(analysis, "block3.expand.0"), "fc.weight", 1)

    slim, _, _ = _prune("residual")
    width = {name: slim.get_submodule(name).out_channels for name in ("block2.downsample.0", "block2.conv2",
                                                                    "block4.expand.0")}
    assert width == {"block2.downsample.0": 6, "block2.conv2": 6, "block4.expand.0": 8}
    assert slim.fc.in_features == 8


def test_nested_concat_offsets():
    _, _, analysis = _analyse("nested_concat")
    assert len(analysis.prunable_groups) == 6
    offsets = {"stem.0": 0, "b1": 4, "b2": 6, "b3": 10, "b6": 16}
    for producer, start in offsets.items():
        group = _group(analysis, producer)
        np.testing.assert_array_equal(_member(group, "bn.weight", 0).positions, start + np.arange(group.size))
    np.testing.assert_array_equal(_member(_group(analysis, "dense"), "head.weight", 1).positions, 28 + np.arange(6))

    slim, _, _ = _prune("nested_concat")
    assert slim.bn.num_features == 2 + 1 + 2 + 3 + 6 and slim.head.in_channels == 14 + 3


def test_module_called_on_two_split_parts_ties_them():
    _, _, analysis = _analyse("shared_on_split")
    group = _group(analysis, "conv0")
    assert group.size == 12  # parts 0..3 and 4..7 both feed self.shared: one channel each
    np.testing.assert_array_equal(_member(group, "conv0.weight", 0).channels[:8], [0, 1, 2, 3] * 2)

    model, inputs = make("shared_on_split")
    plan = PruningPlan.build(analysis, {group.id: [1]})
    check_equivalence(model, inputs, plan)
    slim = falf_fx.slim(analysis.graph_module, plan)
    assert (slim.conv0.out_channels, slim.shared.in_channels, slim.head.in_channels) == (14, 3, 20)


def test_split_cat_residual_is_one_group():
    _, _, analysis = _analyse("split_cat_residual")
    (group,) = analysis.prunable_groups
    assert set(group.producers) == {"stem.0", "left.0", "right.0"} and group.size == 8


def test_spatial_cat_and_split_do_not_couple_channels():
    _, _, analysis = _analyse("spatial_cat_split")
    stem = _group(analysis, "stem.0")
    assert stem.producers == ("stem.0",) and stem.size == 8
    assert set(_group(analysis, "up").producers) == {"up", "down"}  # cat along H: same channel axis
    assert len(analysis.prunable_groups) == 4  # stem, up+down, top, bottom (summed over C: exact)


def test_linear_view_conv_transpose_flatten_linear():
    _, _, analysis = _analyse("linear_to_conv_transpose")
    group = _group(analysis, "fc_in")
    assert group.size == 16
    np.testing.assert_array_equal(_member(group, "fc_in.weight", 0).channels, np.repeat(np.arange(16), 4))
    _member(group, "deconv.weight", 0)

    slim, _, inputs = _prune("linear_to_conv_transpose")
    assert (slim.fc_in.out_features, slim.deconv.in_channels, slim.fc_out.in_features) == (32, 8, 4 * 16)
    assert slim(*inputs).shape == (4, 5)


def test_single_output_channel_conv_cannot_lose_it():
    _, _, analysis = _analyse("single_channel_conv")
    group = _group(analysis, "conv1")
    assert group.size == 1
    with pytest.raises(PlanError, match="would lose all 1 channels"):
        PruningPlan.build(analysis, {group.id: [0]})
    slim, _, _ = _prune("single_channel_conv")
    assert (slim.conv1.out_channels, slim.conv2.in_channels, slim.conv2.out_channels) == (1, 1, 3)


def test_batch_norm_after_concat_is_split_between_the_producers():
    _, _, analysis = _analyse("bn_after_concat")
    np.testing.assert_array_equal(_member(_group(analysis, "a"), "bn.weight", 0).positions, np.arange(6))
    np.testing.assert_array_equal(_member(_group(analysis, "b"), "bn.weight", 0).positions, 6 + np.arange(4))
    slim, _, _ = _prune("bn_after_concat")
    assert slim.bn.num_features == 3 + 2 == slim.head.in_channels


def test_two_inputs_three_outputs():
    _, _, analysis = _analyse("two_in_three_out")
    assert set(_group(analysis, "image.0").producers) == {"image.0", "mask.0"}
    assert not _group(analysis, "mix").frozen.any()  # its outputs are a conv, a linear and a sum over C
    assert _group(analysis, "seg").frozen.all() and _group(analysis, "cls").frozen.all()

    slim, model, inputs = _prune("two_in_three_out")
    assert slim.mix.out_channels == 3
    assert [tuple(t.shape) for t in slim(*inputs)] == [(2, 2, 6, 6), (2, 5), (2, 6, 6)]


def test_untraceable_submodule_becomes_a_frozen_leaf():
    model, inputs = make("untraceable_submodule")
    with pytest.warns(UserWarning) as caught:
        gm = falf_fx.trace(model, inputs)
    assert any("submodule 'gate' cannot be traced" in str(w.message) for w in caught)
    analysis = falf_fx.analyze(gm)
    assert "gate" in analysis.auto_leaves
    before = _group(analysis, "conv1.0")
    assert before.frozen.all() and any("untraceable submodule" in r and "'gate'" in r for r in before.reasons)
    assert [g.producers for g in analysis.prunable_groups] == [("conv2.0",)]


def test_call_function_and_call_method_forms_are_sliced_like_modules():
    _, _, analysis = _analyse("call_forms")
    group = _group(analysis, "weight")  # F.conv2d with self.weight, added to self.conv(x)
    assert set(group.producers) == {"weight", "conv"} and not group.frozen.any()
    for name in ("bias", "bn.running_mean", "bn.running_var", "bn.weight", "bn.bias", "conv.bias"):
        _member(group, name, 0)
    np.testing.assert_array_equal(_member(group, "fc_weight", 1).channels, np.repeat(np.arange(8), 4))
    _member(_group(analysis, "fc_weight"), "fc.weight", 1)

    slim, _, _ = _prune("call_forms")
    assert slim.weight.shape == (4, 3, 3, 3) and slim.bn.running_mean.shape == (4,)
    assert slim.fc_weight.shape == (3, 16) and slim.fc.in_features == 3


def test_free_parameters_are_sliced_with_their_group():
    _, _, analysis = _analyse("free_parameters")
    group = _group(analysis, "conv1")
    _member(group, "scale", 0)
    _member(group, "shift", 1)
    slim, _, _ = _prune("free_parameters")
    assert slim.scale.shape == (4, 1, 1) and slim.shift.shape == (1, 4, 1, 1)


# -- the oracle itself -----------------------------------------------------------------------------


def test_oracle_catches_a_changed_weight(monkeypatch):
    model, inputs, analysis = _analyse("conv2d")
    plan = falf_fx.random_plan(analysis, 0)
    real_slim = falf_fx.testing.slim_graph_module

    def slim_and_corrupt(gm, plan):
        slim = real_slim(gm, plan)
        with torch.no_grad():
            slim.get_submodule("1").weight[0] += 1e-3  # one output filter of the last conv
        return slim

    monkeypatch.setattr(falf_fx.testing, "slim_graph_module", slim_and_corrupt)
    with pytest.raises(EquivalenceError, match="output 0 differs"):
        check_equivalence(model, inputs, plan)


def test_oracle_catches_slimming_other_channels_than_the_reference_masks(monkeypatch):
    model, inputs, analysis = _analyse("conv2d")
    group = _group(analysis, "0.0")
    masked, slimmed = (PruningPlan.build(analysis, {group.id: idx}) for idx in ([0, 1, 2, 3], [4, 5, 6, 7]))
    real_slim = falf_fx.testing.slim_graph_module
    monkeypatch.setattr(falf_fx.testing, "slim_graph_module", lambda gm, plan: real_slim(gm, slimmed))
    with pytest.raises(EquivalenceError, match="output 0 differs"):
        check_equivalence(model, inputs, masked)
