"""reshape_chunks and map_reshape on their own: the index maps of flatten, unflatten and channel shuffle."""
from __future__ import annotations

import numpy as np
import pytest

from falf_fx.passes.channel_space import ChannelSpace
from falf_fx.passes.reshape_map import map_reshape, reshape_chunks


def _pairs(in_shape, out_shape):
    return [(tuple(i), tuple(o)) for i, o in reshape_chunks(in_shape, out_shape)]


def test_chunks_of_a_channel_shuffle_view():
    assert _pairs((2, 12, 5, 5), (2, 3, 4, 5, 5)) == [((0,), (0,)), ((1,), (1, 2)), ((2,), (3,)), ((3,), (4,))]


def test_chunks_of_a_flatten():
    assert _pairs((2, 6, 4, 4), (2, 96)) == [((0,), (0,)), ((1, 2, 3), (1,))]


def test_chunks_of_unsqueeze_join_the_new_axis_to_the_next_run():
    assert _pairs((2, 6), (2, 1, 6)) == [((0,), (0,)), ((1,), (1, 2))]
    assert _pairs((2, 6), (2, 6, 1)) == [((0,), (0,)), ((1,), (1,)), ((), (2,))]


def test_chunks_of_shapes_with_different_sizes():
    with pytest.raises(RuntimeError, match=r"reshape from \(2, 6\) to \(2, 5\) changes the number of elements"):
        reshape_chunks((2, 6), (2, 5))


def _producer(space: ChannelSpace, count: int) -> np.ndarray:
    atoms = space.new_atoms(count)
    space.mark_producer(atoms, "conv")
    return atoms


def test_flatten_gives_each_channel_a_block_of_features():
    space = ChannelSpace()
    atoms = _producer(space, 6)
    out = map_reshape(space, {1: atoms}, (2, 6, 4, 4), (2, 96), "flatten")
    np.testing.assert_array_equal(out[1], np.repeat(atoms, 16))
    assert len(set(space.channel_of_atoms().tolist())) == 6  # nothing united
    assert not space.frozen


def test_unflatten_of_features_unites_each_block_into_a_channel():
    space = ChannelSpace()
    atoms = _producer(space, 96)
    out = map_reshape(space, {1: atoms}, (2, 96), (2, 16, 2, 3), "view")
    np.testing.assert_array_equal(out[1], atoms[::6])
    channel_of = space.channel_of_atoms()
    np.testing.assert_array_equal(channel_of, np.repeat(np.arange(16), 6))


def test_shuffle_view_picks_the_run_time_dim_and_unites_across_groups():
    space = ChannelSpace()
    atoms = _producer(space, 8)
    out = map_reshape(space, {1: atoms}, (2, 8, 5, 5), (2, 4, 2, 5, 5), "view",
                      dynamic_out=[True, False, True, True, True])  # view(n, 4, c // 4, h, w)
    assert list(out) == [2]  # c // 4 carries the channels: the literal 4 stays right after slimming
    np.testing.assert_array_equal(out[2], atoms[:2])
    np.testing.assert_array_equal(space.channel_of_atoms(), [0, 1] * 4)
    assert not space.frozen


def test_all_literal_view_picks_the_largest_dim():
    space = ChannelSpace()
    atoms = _producer(space, 8)
    out = map_reshape(space, {1: atoms}, (2, 8), (2, 4, 2), "view")
    assert list(out) == [1]
    np.testing.assert_array_equal(space.channel_of_atoms(), np.repeat(np.arange(4), 2))


def test_view_prefers_a_dim_that_needs_no_new_coupling():
    space = ChannelSpace()
    atoms = _producer(space, 2)
    features = np.repeat(atoms, 6)  # a flattened (2 channels x 6) tensor
    out = map_reshape(space, {1: features}, (3, 12), (3, 2, 6), "view")
    np.testing.assert_array_equal(out[1], atoms)
    assert len(set(space.channel_of_atoms().tolist())) == 2


def test_run_time_sizes_on_both_sides_of_the_channels_freeze_them():
    space = ChannelSpace()
    atoms = _producer(space, 8)
    out = map_reshape(space, {1: atoms}, (2, 8), (2, 4, 2), "node 'view'", dynamic_out=[False, True, True])
    assert out == {}
    assert space.frozen[int(atoms[0])] == ["reshape with a run-time size beside the channel axis (node 'view')"]


def test_a_single_channel_reshaped_away_is_frozen():
    space = ChannelSpace()
    atoms = _producer(space, 1)
    assert map_reshape(space, {1: atoms}, (2, 1, 5), (2, 5), "squeeze") == {}
    assert space.frozen[int(atoms[0])] == ["a single channel reshaped away (squeeze)"]


def test_merging_two_channel_axes_freezes_the_inner_one():
    space = ChannelSpace()
    outer, inner = _producer(space, 2), _producer(space, 3)
    out = map_reshape(space, {1: outer, 2: inner}, (4, 2, 3), (4, 6), "flatten")
    np.testing.assert_array_equal(out[1], np.repeat(outer, 3))
    assert set(space.frozen) == set(inner.tolist())
    assert all(r == ["two channel axes merged by a reshape (flatten)"] for r in space.frozen.values())
