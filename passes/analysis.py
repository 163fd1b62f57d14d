"""The analysis pass: channel-dependency groups of a traced GraphModule.

Pure: reads ``node.meta["val"]`` (shapes from capture) and never changes the module.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from torch import fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from . import rules  # noqa: F401  (registers every rule)
from .channel_space import ChannelSpace, ParamAxis, components, first_seen_pairs
from .rule_registry import RuleContext, node_where, rule_for
from .rules.common import freeze_inputs, untracked_like
from .size_flow import combine_counts, freeze_counts, read_count

__all__ = ["Analysis", "AnalysisPass", "ChannelGroup", "GroupMember", "analyze_graph", "AUTO_LEAVES_KEY"]

AUTO_LEAVES_KEY = "falf_fx.auto_leaves"  # gm.meta entry written by capture: {module name: why}
ANALYSIS_KEY = "falf_fx.analysis"


@dataclass(frozen=True)
class GroupMember:
    """One axis (of a parameter or of a node's output) touched by a group, with its index map.

    ``positions[i]`` along ``dim`` belongs to the group's channel ``channels[i]``.
    """

    kind: str  # "param" or "tensor"
    name: str
    dim: int
    positions: np.ndarray
    channels: np.ndarray


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that are pruned together, indexed 0..size-1."""

    id: int
    channel_ids: np.ndarray
    frozen: np.ndarray  # bool per channel
    reasons: tuple[str, ...]
    producers: tuple[str, ...]
    param_members: tuple[GroupMember, ...]
    tensor_members_of: "TensorMembers" = field(repr=False, compare=False)

    @property
    def members(self) -> tuple[GroupMember, ...]:
        """Parameter axes first, then the axes of node outputs."""
        return self.param_members + self.tensor_members_of(self.id)

    @property
    def size(self) -> int:
        return int(self.channel_ids.size)

    @property
    def num_prunable(self) -> int:
        return int((~self.frozen).sum())

    @property
    def prunable(self) -> bool:
        return self.num_prunable > 0


class TensorMembers:
    """The node-output members of every group, built together on first use.

    Pruning only needs parameter members; a DenseNet's concatenations give
    quadratically many tensor members, so nobody pays for them unasked.
    """

    def __init__(self, layouts: dict[fx.Node, Any], channel_of: np.ndarray, group_of: np.ndarray,
                 index_in_group: np.ndarray) -> None:
        self._args = (layouts, channel_of, group_of, index_in_group)
        self._found: Optional[dict[int, tuple[GroupMember, ...]]] = None

    def __call__(self, gid: int) -> tuple[GroupMember, ...]:
        if self._found is None:
            layouts, channel_of, group_of, index_in_group = self._args
            found = _members(_tensor_axes(layouts), channel_of, group_of, index_in_group)
            self._found = {g: tuple(m) for g, m in found.items()}
        return self._found.get(gid, ())


@dataclass
class Analysis:
    graph_module: fx.GraphModule
    groups: tuple[ChannelGroup, ...]
    layouts: dict[str, Any]  # node name -> layout (dim -> atoms), tuple of layouts, or None
    param_axes: dict[ParamAxis, np.ndarray]
    param_aliases: dict[str, tuple[str, ...]]  # canonical name -> every qualified name of that tensor
    channel_of_atom: np.ndarray
    group_of_channel: np.ndarray
    index_in_group: np.ndarray
    auto_leaves: dict[str, str] = field(default_factory=dict)

    @property
    def prunable_groups(self) -> tuple[ChannelGroup, ...]:
        return tuple(g for g in self.groups if g.prunable)

    def channels_of(self, atoms: np.ndarray) -> np.ndarray:
        return self.channel_of_atom[atoms]


class AnalysisPass(PassBase):
    """torch.fx pass wrapper: stores the Analysis in ``gm.meta`` and on ``self.result``."""

    def __init__(self) -> None:
        self.result: Optional[Analysis] = None

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        self.result = analyze_graph(graph_module)
        graph_module.meta[ANALYSIS_KEY] = self.result
        return PassResult(graph_module, False)


def _param_aliases(gm: fx.GraphModule) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """Qualified name -> canonical name, so tied tensors are sliced once and alike."""
    first_name: dict[int, str] = {}
    aliases: dict[str, list[str]] = defaultdict(list)
    canonical: dict[str, str] = {}
    named = list(gm.named_parameters(remove_duplicate=False)) + list(gm.named_buffers(remove_duplicate=False))
    for name, tensor in named:
        key = first_name.setdefault(id(tensor), name)
        canonical[name] = key
        if name not in aliases[key]:
            aliases[key].append(name)
    return canonical, {k: tuple(v) for k, v in aliases.items()}


def _unknown_reason(node: fx.Node, auto_leaves: dict[str, str]) -> str:
    if node.op == "call_module" and node.target in auto_leaves:
        return "untraceable submodule kept as a leaf"
    return "op not understood by the analysis"


def _touches_tensors(node: fx.Node) -> bool:
    values = [node.meta.get("val")] + [n.meta.get("val") for n in node.all_input_nodes]
    found = []
    fx.node.map_aggregate(values, lambda v: found.append(v) if isinstance(v, torch.Tensor) else None)
    return bool(found)


def _propagate(gm: fx.GraphModule, space: ChannelSpace, canonical: dict[str, str],
               auto_leaves: dict[str, str]) -> dict[fx.Node, Any]:
    layouts: dict[fx.Node, Any] = {}
    counts: dict[fx.Node, Any] = {}  # int-valued nodes -> the channel counts they were computed from
    modules = dict(gm.named_modules(remove_duplicate=False))
    for node in gm.graph.nodes:
        if node.op == "placeholder" and "val" not in node.meta:
            raise ValueError(f"{node_where(node)} has no shape information: trace the model with "
                             "falf_fx.trace(model, example_inputs) before analysing it")
        ctx = RuleContext(node, space, layouts, gm, canonical)
        value = node.meta.get("val")
        if node.op in ("call_function", "call_method") and not _touches_tensors(node):
            layouts[node] = untracked_like(value)  # Python arithmetic on sizes and the like
            counts[node] = combine_counts(node, counts)
            if node.target is torch._assert:  # a check on a channel count fails once the count shrinks
                freeze_counts(space, node, counts, node_where(node))
        elif node.op == "placeholder":
            layouts[node] = untracked_like(value)
        elif node.op == "get_attr":
            if isinstance(value, torch.Tensor):
                name = canonical.get(str(node.target), str(node.target))
                layouts[node] = {d: space.param_atoms(ParamAxis(name, d), s)
                                 for d, s in enumerate(value.shape) if s > 1}
            else:
                layouts[node] = None
        elif node.op == "output":
            ctx.freeze_value([layouts.get(n) for n in node.all_input_nodes], "model output")
            freeze_counts(space, node, counts, "model output")
        else:
            rule = rule_for(node, modules)
            if rule is None or not rule.takes_sizes:
                freeze_counts(space, node, counts, ctx.where)
            if rule is None:
                layouts[node] = freeze_inputs(ctx, _unknown_reason(node, auto_leaves))
            else:
                layouts[node] = rule.propagate(ctx)
            counts[node] = read_count(node, layouts)
    return layouts


def _groups_of_channels(n_channels: int, channels: np.ndarray, owners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Channels linked through the layer that produced them form a group.

    ``channels[i]`` was produced by owner ``owners[i]``.  Returns the group of
    every channel (-1: produced by no layer) and its index in the group; groups
    are numbered by their first channel, channels in a group keep their order.
    """
    group_of = np.full(n_channels, -1, dtype=np.int64)
    index_in_group = np.full(n_channels, -1, dtype=np.int64)
    if channels.size == 0:
        return group_of, index_in_group
    labels = components(n_channels + int(owners.max()) + 1, channels, owners + n_channels)[:n_channels]
    produced = np.zeros(n_channels, dtype=bool)
    produced[channels] = True
    members = np.flatnonzero(produced)  # ascending channel ids
    _, first, gids = np.unique(labels[members], return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # number groups by their first channel
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    gids = rank[gids]
    group_of[members] = gids
    by_group = np.argsort(gids, kind="stable")
    starts = np.searchsorted(gids[by_group], gids[by_group], side="left")
    index_in_group[members[by_group]] = np.arange(members.size) - starts
    return group_of, index_in_group


def _frozen(space: ChannelSpace, channel_of: np.ndarray, group_of: np.ndarray,
            n_channels: int) -> tuple[np.ndarray, dict[int, list[str]]]:
    """Which channels are frozen, and each group's reasons (by channel, then in the order they were given)."""
    atoms, reason_ids, entries, texts = space.frozen_entries()
    frozen = np.zeros(n_channels, dtype=bool)
    channels = channel_of[atoms]
    frozen[channels] = True
    order = np.lexsort((entries, channels))
    reasons_of: dict[int, list[str]] = defaultdict(list)
    for gid, reason in first_seen_pairs(group_of[channels[order]], reason_ids[order]):
        if gid >= 0:
            reasons_of[gid].append(texts[reason])
    return frozen, reasons_of


def _members(axes: list[tuple[str, str, int, np.ndarray]], channel_of: np.ndarray, group_of: np.ndarray,
             index_in_group: np.ndarray) -> dict[int, list[GroupMember]]:
    """Split every axis by group, all axes at once; a group's members keep the order of ``axes``.

    Each member's arrays are read-only views into two shared arrays.
    """
    found: dict[int, list[GroupMember]] = defaultdict(list)
    if not axes:
        return found
    lengths = np.array([atoms.size for *_, atoms in axes], dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    axis_of = np.repeat(np.arange(len(axes)), lengths)
    position = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(starts, lengths)
    channels = channel_of[np.concatenate([atoms.ravel() for *_, atoms in axes])]
    gids = group_of[channels]
    order = np.lexsort((gids, axis_of))  # by axis, then group; positions stay ascending (stable)
    axis_of, gids, position = axis_of[order], gids[order], _readonly(position[order])
    in_group = _readonly(index_in_group[channels[order]])
    cuts = np.flatnonzero((axis_of[1:] != axis_of[:-1]) | (gids[1:] != gids[:-1])) + 1
    begins = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [order.size]])
    for begin, end, gid, axis in zip(begins.tolist(), ends.tolist(), gids[begins].tolist(), axis_of[begins].tolist()):
        if gid >= 0:
            kind, name, dim, _ = axes[axis]
            found[gid].append(GroupMember(kind, name, dim, position[begin:end], in_group[begin:end]))
    return found


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _tensor_axes(layouts: dict[fx.Node, Any]) -> list[tuple[str, str, int, np.ndarray]]:
    axes = []
    for node, layout in layouts.items():
        items = [(node.name, layout)] if isinstance(layout, dict) else [
            (f"{node.name}[{i}]", part) for i, part in enumerate(layout or ()) if isinstance(part, dict)]
        for name, part in items:
            axes.extend(("tensor", name, dim, atoms) for dim, atoms in sorted(part.items()))
    return axes


def analyze_graph(gm: fx.GraphModule) -> Analysis:
    """Build the channel-dependency groups of a shape-annotated GraphModule."""
    space = ChannelSpace()
    canonical, aliases = _param_aliases(gm)
    auto_leaves = dict(gm.meta.get(AUTO_LEAVES_KEY, {}))
    layouts = _propagate(gm, space, canonical, auto_leaves)

    channel_of = space.channel_of_atoms()
    n_channels = int(channel_of.max()) + 1 if channel_of.size else 0
    producer_atoms, owner_ids, owner_names = space.producer_atoms()
    group_of, index_in_group = _groups_of_channels(n_channels, channel_of[producer_atoms], owner_ids)
    n_groups = int(group_of.max()) + 1 if group_of.size else 0

    owners_of: dict[int, list[str]] = defaultdict(list)
    for gid, owner in first_seen_pairs(group_of[channel_of[producer_atoms]], owner_ids):
        owners_of[gid].append(owner_names[owner])
    frozen_channel, reasons_of = _frozen(space, channel_of, group_of, n_channels)

    param_axes = [("param", axis.name, axis.dim, atoms) for axis, atoms in space.param_axes.items()]
    members = _members(param_axes, channel_of, group_of, index_in_group)
    tensor_members = TensorMembers(layouts, channel_of, group_of, index_in_group)

    grouped = np.argsort(group_of, kind="stable")[int((group_of < 0).sum()):]  # by group, channels ascending
    channels_of = np.split(grouped, np.cumsum(np.bincount(group_of[grouped], minlength=n_groups))[:-1]) \
        if n_groups else []
    groups = [ChannelGroup(gid, channels, frozen_channel[channels], tuple(reasons_of[gid]), tuple(owners_of[gid]),
                           tuple(members[gid]), tensor_members)
              for gid, channels in enumerate(channels_of)]
    return Analysis(gm, tuple(groups), {n.name: layouts.get(n) for n in gm.graph.nodes}, dict(space.param_axes),
                    aliases, channel_of, group_of, index_in_group, auto_leaves)
