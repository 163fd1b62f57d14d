"""MemberIndex (vectorised runs of one group) agrees with splitting every axis by group one position at a time."""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import falf_fx
from falf_fx.passes.analysis import MemberIndex


def _naive(axes, channel_of, group_of, index_in_group, n_groups):
    """Per group, per axis in order: the positions whose channel is in the group, ascending."""
    found = {g: [] for g in range(n_groups)}
    for kind, name, dim, atoms in axes:
        gids = group_of[channel_of[atoms]]
        for g in range(n_groups):
            positions = np.flatnonzero(gids == g)
            if positions.size:
                found[g].append((kind, name, dim, positions.tolist(),
                                 index_in_group[channel_of[atoms[positions]]].tolist()))
    return found


@st.composite
def _problems(draw):
    n_atoms = draw(st.integers(1, 30))
    n_channels = draw(st.integers(1, n_atoms))
    channel_of = np.array(draw(st.lists(st.integers(0, n_channels - 1), min_size=n_atoms, max_size=n_atoms)))
    n_groups = draw(st.integers(1, 5))
    group_of = np.array(draw(st.lists(st.integers(-1, n_groups - 1), min_size=n_channels, max_size=n_channels)))
    index_in_group = np.full(n_channels, -1)
    for g in range(n_groups):
        index_in_group[group_of == g] = np.arange(int((group_of == g).sum()))
    axes = [("param", f"p{i}", draw(st.integers(0, 2)),
             np.array(draw(st.lists(st.integers(0, n_atoms - 1), max_size=12)), dtype=np.int64))
            for i in range(draw(st.integers(0, 6)))]  # empty axes included: they must not shift the others
    return axes, channel_of, group_of, index_in_group, n_groups


@settings(max_examples=300, deadline=None)
@given(_problems())
def test_member_index_matches_the_naive_split(problem):
    axes, channel_of, group_of, index_in_group, _ = problem
    n_groups = int(group_of.max()) + 1  # the analysis numbers groups 0..max
    for lazy in (False, True):
        index = MemberIndex(lambda: axes, channel_of, group_of, index_in_group, lazy=lazy)
        for g in range(n_groups):
            got = [(m.kind, m.name, m.dim, m.positions.tolist(), m.channels.tolist()) for m in index(g)]
            assert got == _naive(axes, channel_of, group_of, index_in_group, n_groups)[g]
            assert all(not m.positions.flags.writeable and not m.channels.flags.writeable for m in index(g))


def test_members_say_what_they_are_to_their_layer():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ConvTranspose2d(8, 6, 2), nn.Flatten(),
                          nn.LazyLinear(5))
    x = torch.randn(1, 3, 8, 8)
    model(x)
    analysis = falf_fx.analyze(falf_fx.trace(model, x))
    roles = {(m.name, m.dim): m.role for g in analysis.groups for m in g.members if m.kind == "param"}
    assert roles[("0.weight", 0)] == "output" and roles[("0.bias", 0)] == "vector"
    assert roles[("1.running_var", 0)] == "vector" and roles[("2.weight", 0)] == "input"  # transposed: (in, out)
    assert roles[("2.weight", 1)] == "output" and roles[("4.weight", 1)] == "input"
    assert all(m.role == "activation" for g in analysis.groups for m in g.members if m.kind == "tensor")
