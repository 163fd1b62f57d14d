"""The analysis pass: channel-dependency groups of a traced GraphModule.

Pure: reads ``node.meta["val"]`` (shapes from capture) and never changes the module.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field, replace
from collections.abc import Iterable
from typing import Any, Callable, NamedTuple, Optional

import numpy as np
import torch
from torch import fx, nn
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from . import rules  # noqa: F401  (registers every rule)
from .channel_space import ChannelSpace, ParamAxis, components, first_seen_pairs
from .rule_registry import RuleContext, node_where, rule_for
from .rules.common import freeze_inputs, untracked_like
from .size_flow import combine_counts, freeze_counts, read_count
from .errors import FalfValueError

__all__ = ["Analysis", "AnalysisPass", "ChannelGroup", "GroupMember", "analyze_graph", "tensor_named",
           "AUTO_LEAVES_KEY"]

AUTO_LEAVES_KEY = "falf_fx.auto_leaves"  # gm.meta entry written by capture: {module name: why}
ANALYSIS_KEY = "falf_fx.analysis"


Axis = tuple[str, str, int, np.ndarray]  # (kind, name, dim, atoms): one axis of a parameter or node output


class GroupMember(NamedTuple):
    """One axis (of a parameter or of a node's output) touched by a group, with its index map.

    ``positions[i]`` along ``dim`` belongs to the group's channel ``channels[i]``.
    """

    kind: str  # "param" or "tensor"
    name: str
    dim: int
    positions: np.ndarray
    channels: np.ndarray
    role: str = "activation"  # MEMBER_ROLES: what the axis is to the layer that owns it


# "output": the channels a weight makes (a conv's dim 0, a transposed conv's dim 1); "input": the channels a
# weight reads; "vector": a 1-D parameter or buffer (bias, norm affine, running statistics); "activation": a
# node's output; "other": any further axis of a weight that a group spans (an attention matrix's).
MEMBER_ROLES = ("output", "input", "vector", "activation", "other")


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that are pruned together, indexed 0..size-1."""

    id: int
    channel_ids: np.ndarray
    frozen: np.ndarray  # bool per channel
    reasons: tuple[str, ...]
    producers: tuple[str, ...]
    param_index: "MemberIndex" = field(repr=False, compare=False)
    tensor_index: "MemberIndex" = field(repr=False, compare=False)

    @property
    def param_members(self) -> tuple[GroupMember, ...]:
        """The parameter axes this group slices, in the order the parameters were first read."""
        return self.param_index(self.id)

    @property
    def members(self) -> tuple[GroupMember, ...]:
        """Parameter axes first, then the axes of node outputs."""
        return self.param_members + self.tensor_index(self.id)

    @property
    def size(self) -> int:
        return int(self.channel_ids.size)

    @property
    def num_prunable(self) -> int:
        return int((~self.frozen).sum())

    @property
    def prunable(self) -> bool:
        return self.num_prunable > 0


class MemberIndex:
    """Where each group lies on a list of axes; a group's GroupMembers are made when first read.

    A DenseNet's concatenations make (axis, group) pairs quadratic in depth (every
    layer's input axis spans each earlier layer's group): they are found in one
    vectorised pass over the axes' positions as runs of one group, and objects are
    only made for the groups somebody reads.  A ``lazy`` index calls ``axes_of`` on
    first use (node-output members: nobody pays for them unasked).
    """

    def __init__(self, axes_of: Callable[[], list[Axis]], channel_of: np.ndarray, group_of: np.ndarray,
                 index_in_group: np.ndarray, *, lazy: bool = False,
                 roles: Optional[dict[tuple[str, int], str]] = None) -> None:
        self._axes_of = axes_of
        self._roles = roles or {}
        self._maps = (channel_of, group_of, index_in_group)
        self._axes: Optional[list[Axis]] = None
        self._made: dict[int, tuple[GroupMember, ...]] = {}
        if not lazy:
            self._index()

    def __call__(self, gid: int) -> tuple[GroupMember, ...]:
        made = self._made.get(gid)
        if made is None:
            if self._axes is None:
                self._index()
            made = self._made[gid] = self._make(gid)
        return made

    def _index(self) -> None:
        axes = self._axes_of()
        channel_of, group_of, index_in_group = self._maps
        lengths = np.array([atoms.size for *_, atoms in axes], dtype=np.int64)
        starts = np.cumsum(lengths) - lengths
        total = int(lengths.sum())
        flat = np.concatenate([atoms.ravel() for *_, atoms in axes]) if total else np.zeros(0, dtype=np.int64)
        gids = group_of[channel_of][flat]  # through per-atom tables: one gather over 10^7 positions, not two
        self._in_group = index_in_group[channel_of].astype(np.int32)[flat]
        starts_run = np.ones(total, dtype=bool)
        np.not_equal(gids[1:], gids[:-1], out=starts_run[1:])
        starts_run[starts[lengths > 0]] = True  # every axis starts a run
        begins = np.flatnonzero(starts_run)
        ends = np.append(begins[1:], total)
        grouped = gids[begins] >= 0
        begins, ends, run_gid = begins[grouped], ends[grouped], gids[begins[grouped]]
        run_axis = np.searchsorted(starts, begins, side="right") - 1  # empty axes share the next one's start
        order = np.lexsort((run_axis, run_gid))  # by group, then axis; stable: positions stay ascending
        self._begins, self._ends = begins[order], ends[order]
        self._run_axis, run_gid = run_axis[order], run_gid[order]
        new_member = np.ones(order.size, dtype=bool)
        new_member[1:] = (run_gid[1:] != run_gid[:-1]) | (self._run_axis[1:] != self._run_axis[:-1])
        self._member_first_run = np.append(np.flatnonzero(new_member), order.size)
        member_gid = run_gid[self._member_first_run[:-1]]
        self._group_first_member = np.searchsorted(member_gid, np.arange(int(group_of.max(initial=-1)) + 2))
        self._starts = starts
        self._axes = axes

    def _make(self, gid: int) -> tuple[GroupMember, ...]:
        """All of a group's members from one gather; each member's arrays are read-only views into it."""
        first, last = self._group_first_member[gid], self._group_first_member[gid + 1]
        member_runs = self._member_first_run[first:last + 1] - self._member_first_run[first]  # + the end
        runs = slice(self._member_first_run[first], self._member_first_run[last])
        begins, lengths, axis = self._begins[runs], self._ends[runs] - self._begins[runs], self._run_axis[runs]
        run_offset = np.repeat(begins - (np.cumsum(lengths) - lengths), lengths)
        flat = np.arange(int(lengths.sum()), dtype=np.int64) + run_offset  # positions over all axes
        positions = _readonly(flat - np.repeat(self._starts[axis], lengths))
        channels = _readonly(self._in_group[flat].astype(np.int64))
        bounds = np.append(0, np.cumsum(lengths)[member_runs[1:] - 1]).tolist()
        made = []
        for lo, hi, a in zip(bounds[:-1], bounds[1:], axis[member_runs[:-1]].tolist()):
            kind, name, dim, _ = self._axes[a]
            made.append(GroupMember(kind, name, dim, positions[lo:hi], channels[lo:hi],
                                    self._roles.get((name, dim), "activation")))
        return tuple(made)


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
    fingerprint: str = ""  # graph_fingerprint of the module analysed: a plan applies to that graph only

    @property
    def prunable_groups(self) -> tuple[ChannelGroup, ...]:
        return tuple(g for g in self.groups if g.prunable)

    def channels_of(self, atoms: np.ndarray) -> np.ndarray:
        return self.channel_of_atom[atoms]

    def for_module(self, gm: fx.GraphModule) -> "Analysis":
        """This analysis, pointed at another module with the very same graph (a trained or folded copy)."""
        found = graph_fingerprint(gm)
        if found != self.fingerprint:
            raise FalfValueError(f"this analysis was made for another graph (fingerprint {self.fingerprint[:12]}, "
                                 f"the module's is {found[:12]}): analyse the module itself")
        return replace(self, graph_module=gm)


def graph_fingerprint(gm: fx.GraphModule) -> str:
    """A digest of what a plan depends on: every node (name, op, target, inputs) and every tensor's shape.

    Weights' values are left out: a trained or folded copy of the module takes the same plan.
    """
    digest = hashlib.sha256()
    for node in gm.graph.nodes:
        inputs = ",".join(n.name for n in node.all_input_nodes)
        digest.update(f"{node.name}|{node.op}|{getattr(node.target, '__name__', node.target)}|{inputs};".encode())
    for name, tensor in [*gm.named_parameters(remove_duplicate=False), *gm.named_buffers(remove_duplicate=False)]:
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
    return digest.hexdigest()


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


def _holds_tensor(value: Any) -> bool:
    found = []
    fx.node.map_aggregate(value, lambda v: found.append(v) if isinstance(v, torch.Tensor) else None)
    return bool(found)


def _touches_tensors(node: fx.Node) -> bool:
    """Whether the node makes or reads a tensor (stops at the first: a DenseNet concatenation reads hundreds)."""
    return any(_holds_tensor(n.meta.get("val")) for n in (node, *node.all_input_nodes))


def _propagate(gm: fx.GraphModule, space: ChannelSpace, canonical: dict[str, str],
               auto_leaves: dict[str, str]) -> dict[fx.Node, Any]:
    layouts: dict[fx.Node, Any] = {}
    counts: dict[fx.Node, Any] = {}  # int-valued nodes -> the channel counts they were computed from
    modules = dict(gm.named_modules(remove_duplicate=False))
    for node in gm.graph.nodes:
        if node.op == "placeholder" and "val" not in node.meta:
            raise FalfValueError(f"{node_where(node)} has no shape information: trace the model with "
                             "falf_fx.trace(model, example_inputs) before analysing it")
        ctx = RuleContext(node, space, layouts, gm, canonical, modules, counts)
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


def _param_roles(gm: fx.GraphModule, axes: Iterable[ParamAxis]) -> dict[tuple[str, int], str]:
    """What each parameter axis is to its layer, decided once here instead of by every reader."""
    roles = {}
    for axis in axes:
        tensor = tensor_named(gm, axis.name)
        if tensor.dim() < 2:
            roles[(axis.name, axis.dim)] = "vector"
            continue
        owner = axis.name.rpartition(".")[0]
        transposed = isinstance(gm.get_submodule(owner), nn.modules.conv._ConvTransposeNd)
        output, read = (1, 0) if transposed else (0, 1)
        roles[(axis.name, axis.dim)] = "output" if axis.dim == output else "input" if axis.dim == read else "other"
    return roles


def tensor_named(root: nn.Module, name: str) -> torch.Tensor:
    """The parameter or buffer of ``root`` at a qualified name (a member's ``name``)."""
    owner, _, attr = name.rpartition(".")
    return getattr(root.get_submodule(owner), attr)


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _tensor_axes(layouts: dict[fx.Node, Any]) -> list[Axis]:
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
    param_index = MemberIndex(lambda: param_axes, channel_of, group_of, index_in_group,
                              roles=_param_roles(gm, space.param_axes))
    tensor_index = MemberIndex(lambda: _tensor_axes(layouts), channel_of, group_of, index_in_group, lazy=True)

    grouped = np.argsort(group_of, kind="stable")[int((group_of < 0).sum()):]  # by group, channels ascending
    channels_of = np.split(grouped, np.cumsum(np.bincount(group_of[grouped], minlength=n_groups))[:-1]) \
        if n_groups else []
    groups = [ChannelGroup(gid, channels, frozen_channel[channels], tuple(reasons_of[gid]), tuple(owners_of[gid]),
                           param_index, tensor_index)
              for gid, channels in enumerate(channels_of)]
    return Analysis(gm, tuple(groups), {n.name: layouts.get(n) for n in gm.graph.nodes}, dict(space.param_axes),
                    aliases, channel_of, group_of, index_in_group, auto_leaves, graph_fingerprint(gm))
