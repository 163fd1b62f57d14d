"""The analysis pass: channel-dependency groups of a traced GraphModule.

Pure: reads ``node.meta["val"]`` (shapes from capture) and never changes the module.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Optional

import networkx as nx
import numpy as np
import torch
from torch import fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from . import rules  # noqa: F401  (registers every rule)
from .channel_space import ChannelSpace, ParamAxis
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
    members: tuple[GroupMember, ...]

    @property
    def size(self) -> int:
        return int(self.channel_ids.size)

    @property
    def num_prunable(self) -> int:
        return int((~self.frozen).sum())

    @property
    def prunable(self) -> bool:
        return self.num_prunable > 0

    @property
    def param_members(self) -> tuple[GroupMember, ...]:
        return tuple(m for m in self.members if m.kind == "param")


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
            rule = rule_for(node, gm)
            if rule is None or not rule.takes_sizes:
                freeze_counts(space, node, counts, ctx.where)
            if rule is None:
                layouts[node] = freeze_inputs(ctx, _unknown_reason(node, auto_leaves))
            else:
                layouts[node] = rule.propagate(ctx)
            counts[node] = read_count(node, layouts)
    return layouts


def _groups_of_channels(space: ChannelSpace, channel_of: np.ndarray) -> list[list[int]]:
    """Channels linked through the layer that produced them form a group."""
    by_owner: dict[str, list[int]] = defaultdict(list)
    for atom, owner in space.producer_owner.items():
        by_owner[owner].append(atom)
    graph = nx.Graph()
    for atoms in by_owner.values():
        channels = np.unique(channel_of[np.asarray(atoms)]).tolist()
        graph.add_nodes_from(channels)
        nx.add_path(graph, channels)
    components = [sorted(c) for c in nx.connected_components(graph)]
    return sorted(components, key=lambda c: c[0])


def _members(axes: list[tuple[str, str, int, np.ndarray]], channel_of: np.ndarray, group_of: np.ndarray,
             index_in_group: np.ndarray) -> dict[int, list[GroupMember]]:
    found: dict[int, list[GroupMember]] = defaultdict(list)
    for kind, name, dim, atoms in axes:
        channels = channel_of[atoms]
        gids = group_of[channels]
        for gid in np.unique(gids).tolist():
            if gid < 0:
                continue
            positions = np.flatnonzero(gids == gid)
            found[gid].append(GroupMember(kind, name, dim, positions, index_in_group[channels[positions]]))
    return found


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
    components = _groups_of_channels(space, channel_of)
    group_of = np.full(n_channels, -1, dtype=np.int64)
    index_in_group = np.full(n_channels, -1, dtype=np.int64)
    for gid, channels in enumerate(components):
        group_of[channels] = gid
        index_in_group[channels] = np.arange(len(channels))

    reasons_of: dict[int, list[str]] = defaultdict(list)
    for atom, reasons in space.frozen.items():
        bucket = reasons_of[int(channel_of[atom])]
        bucket.extend(r for r in reasons if r not in bucket)
    owners_of: dict[int, list[str]] = defaultdict(list)
    for atom, owner in space.producer_owner.items():
        gid = int(group_of[channel_of[atom]])
        if owner not in owners_of[gid]:
            owners_of[gid].append(owner)

    param_axes = [("param", axis.name, axis.dim, atoms) for axis, atoms in space.param_axes.items()]
    members = _members(param_axes + _tensor_axes(layouts), channel_of, group_of, index_in_group)

    groups = []
    for gid, channels in enumerate(components):
        frozen = np.array([c in reasons_of for c in channels], dtype=bool)
        reasons: list[str] = []
        for c in channels:
            reasons.extend(r for r in reasons_of.get(c, ()) if r not in reasons)
        groups.append(ChannelGroup(gid, np.asarray(channels, dtype=np.int64), frozen, tuple(reasons),
                                   tuple(owners_of[gid]), tuple(members[gid])))
    return Analysis(gm, tuple(groups), {n.name: layouts.get(n) for n in gm.graph.nodes}, dict(space.param_axes),
                    aliases, channel_of, group_of, index_in_group, auto_leaves)
