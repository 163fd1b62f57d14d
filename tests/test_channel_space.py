"""ChannelSpace on its own: atoms, unions, parameter bindings, freezing, channel numbering."""
from __future__ import annotations

import numpy as np
import pytest

from falf_fx.passes.channel_space import ChannelSpace, ParamAxis


def test_new_atoms_are_consecutive_and_read_only():
    space = ChannelSpace()
    first, second = space.new_atoms(3), space.new_atoms(2)
    np.testing.assert_array_equal(np.concatenate([first, second]), np.arange(5))
    with pytest.raises(ValueError):
        first[0] = 7


def test_unite_blocks_ties_position_p_of_every_block():
    space = ChannelSpace()
    atoms = space.new_atoms(8)
    first = space.unite_blocks(atoms, 2)
    np.testing.assert_array_equal(first, [0, 1, 2, 3])
    assert not first.flags.writeable
    np.testing.assert_array_equal(space.channel_of_atoms(), [0, 1, 2, 3, 0, 1, 2, 3])


def test_unite_needs_arrays_of_one_shape():
    space = ChannelSpace()
    with pytest.raises(RuntimeError, match=r"internal: a rule united atom arrays of shapes \(2,\) and \(3,\)"):
        space.unite(space.new_atoms(2), space.new_atoms(3))


def test_binding_a_parameter_twice_unites_the_two_call_sites():
    space = ChannelSpace()
    first_call, second_call = space.new_atoms(4), space.new_atoms(4)
    axis = ParamAxis("shared.weight", 1)
    assert space.bind_param(axis, first_call) is first_call
    np.testing.assert_array_equal(space.bind_param(axis, second_call), first_call)
    channel_of = space.channel_of_atoms()
    np.testing.assert_array_equal(channel_of[first_call], channel_of[second_call])
    assert len(set(channel_of.tolist())) == 4


def test_a_frozen_parameter_freezes_what_it_is_bound_to_before_and_after():
    space = ChannelSpace()
    before, after = space.new_atoms(2), space.new_atoms(2)
    space.bind_param(ParamAxis("leaf.weight", 0), before)
    space.freeze_param("leaf.weight", "inside a leaf")
    space.bind_param(ParamAxis("leaf.weight", 1), after)
    assert sorted(space.frozen) == [0, 1, 2, 3]
    assert space.frozen[3] == ["inside a leaf"]


def test_param_atoms_are_created_once():
    space = ChannelSpace()
    axis = ParamAxis("w", 0)
    atoms = space.param_atoms(axis, 3)
    assert space.param_atoms(axis, 3) is atoms and space.size == 3


def test_freeze_keeps_each_reason_once():
    space = ChannelSpace()
    atoms = space.new_atoms(2)
    space.freeze(atoms, "model output")
    space.freeze(atoms[:1], "model output")
    space.freeze(atoms[:1], "matmul")
    assert space.frozen == {0: ["model output", "matmul"], 1: ["model output"]}


def test_channel_ids_follow_the_first_atom_of_each_channel():
    space = ChannelSpace()
    atoms = space.new_atoms(5)
    space.unite(atoms[[4, 3]], atoms[[1, 0]])  # 4 joins 1, 3 joins 0
    np.testing.assert_array_equal(space.channel_of_atoms(), [0, 1, 2, 0, 1])
    space.unite_all(atoms[[2, 4]])
    np.testing.assert_array_equal(space.channel_of_atoms(), [0, 1, 1, 0, 1])


def test_producer_keeps_its_first_owner():
    space = ChannelSpace()
    atoms = space.new_atoms(2)
    space.mark_producer(atoms, "conv1")
    space.mark_producer(atoms, "conv1_again")
    assert space.producer_owner == {0: "conv1", 1: "conv1"}
