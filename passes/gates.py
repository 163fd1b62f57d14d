"""Instrumentation: multiply a per-channel gate into a GraphModule for every prunable group.

Where the gate goes decides whether a gate of 0 means "removed".  A gate right
after a conv is undone by a following BatchNorm in training mode (it
renormalises the channel), and a gate on one branch of a residual sum leaves
the channel alive in the other.  So the gate sits where the channel *ends*:
on every edge into an op whose output no longer carries that channel (the
convs and linears that contract over it, or anything else that drops it).
Every value derived from the channel past those edges is then multiplied by
the gate, after every per-channel op (norm, activation, pooling, residual
add) of every producer chain.  A gate of 0 there computes exactly what the
slim network computes without the channel, in training and eval mode alike,
and all members of a group (every block of a residual stage) share the one
gate vector, as the analysis dictates.  Frozen channels are never gated.

The gated module takes one extra input per gated group, ``gate_<group id>``,
of shape ``(batch, group size)`` or ``(group size,)``, after the original
inputs; it shares every parameter with the original.  ``remove_gates`` gives
back the original graph.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import fx, nn
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from .analysis import Analysis
from .instrument import _shared_root

__all__ = ["ChannelGate", "GateSite", "InsertGates", "gate_sites", "gated_groups", "remove_gates",
           "GATE_PREFIX", "GATED_GROUPS_KEY"]

GATE_PREFIX = "npn_gate_"
GATED_GROUPS_KEY = "falf_fx.gated_groups"  # gm.meta: group ids, in the order of the gate inputs


class ChannelGate(nn.Module):
    """Multiplies one axis of a tensor by a group's gates through an index map.

    ``index[p]`` is the group channel at position ``p`` of the axis, or the
    group's size for positions that stay ungated (other groups, frozen channels).
    """

    def __init__(self, dim: int, index: torch.Tensor, group_size: int) -> None:
        super().__init__()
        self.dim = dim
        self.group_size = group_size
        self.register_buffer("index", index.long(), persistent=False)

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        gate = gate.unsqueeze(0) if gate.dim() == 1 else gate
        padded = torch.cat([gate, gate.new_ones(gate.shape[0], 1)], dim=1)
        per_position = padded.index_select(1, self.index).to(x.dtype)
        shape = [per_position.shape[0]] + [1] * (x.dim() - 1)
        shape[self.dim] = per_position.shape[1]
        return x * per_position.view(shape)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, group_size={self.group_size}"


@dataclass(frozen=True)
class GateSite:
    """Gate group ``group_id`` on the edge ``source -> consumer``, along ``dim`` of ``source``."""

    consumer: str
    source: str
    group_id: int
    dim: int
    index: np.ndarray


def _channels_of(layout, analysis: Analysis) -> set[int]:
    parts = [layout] if isinstance(layout, dict) else [p for p in (layout or ()) if isinstance(p, dict)]
    out: set[int] = set()
    for part in parts:
        for atoms in part.values():
            out.update(analysis.channel_of_atom[atoms].tolist())
    return out


def _yields_tensors(node: fx.Node) -> bool:
    found = []
    fx.node.map_aggregate(node.meta.get("val"), lambda v: found.append(v) if isinstance(v, torch.Tensor) else None)
    return bool(found)


def gate_sites(analysis: Analysis) -> list[GateSite]:
    """Every edge where channels of a prunable group end, with the index map of the gate there."""
    prunable = {g.id: g for g in analysis.prunable_groups}
    sites = []
    for node in analysis.graph_module.graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method") or not _yields_tensors(node):
            continue
        survivors = _channels_of(analysis.layouts.get(node.name), analysis)
        for source in dict.fromkeys(node.all_input_nodes):
            layout = analysis.layouts.get(source.name)
            if not isinstance(layout, dict):
                continue
            for dim, atoms in sorted(layout.items()):
                channels = analysis.channel_of_atom[atoms]
                groups = analysis.group_of_channel[channels]
                ending = ~np.isin(channels, list(survivors))
                for gid in np.unique(groups[ending]).tolist():
                    if gid not in prunable:
                        continue
                    index_in_group = analysis.index_in_group[channels]
                    here = ending & (groups == gid)
                    here[here] = ~prunable[gid].frozen[index_in_group[here]]
                    if here.any():
                        index = np.full(channels.size, prunable[gid].size, dtype=np.int64)
                        index[here] = index_in_group[here]
                        sites.append(GateSite(node.name, source.name, gid, dim, index))
    return sites


def gated_groups(sites: list[GateSite]) -> tuple[int, ...]:
    """Groups that get a gate; a group gated along the batch axis (dim 0) cannot be, and is left out."""
    batch_axis = {s.group_id for s in sites if s.dim == 0}
    return tuple(sorted({s.group_id for s in sites} - batch_axis))


class InsertGates(PassBase):
    """torch.fx pass: the module with ``ChannelGate`` s at every gate site of the analysis."""

    def __init__(self, analysis: Analysis) -> None:
        self.analysis = analysis

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        self.analysis.for_module(graph_module)  # refuses a module of another graph
        sites = gate_sites(self.analysis)
        groups = gated_groups(sites)
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        graph.output(graph.graph_copy(graph_module.graph, env))
        by_name = {n.name: n for n in graph.nodes}
        root = _shared_root(graph_module, keep=lambda name: True)
        inputs = {}
        last = [n for n in graph.nodes if n.op == "placeholder"][-1]
        for gid in groups:
            with graph.inserting_after(last):
                last = inputs[gid] = graph.placeholder(f"gate_{gid}")
        edges: dict[tuple[str, str], fx.Node] = {}
        for number, site in enumerate(s for s in sites if s.group_id in inputs):
            consumer = by_name[site.consumer]
            gated = edges.get((site.consumer, site.source), by_name[site.source])
            name = f"{GATE_PREFIX}{number}"
            root.add_module(name, ChannelGate(site.dim, torch.as_tensor(site.index),
                                              self.analysis.groups[site.group_id].size))
            with graph.inserting_before(consumer):
                edges[(site.consumer, site.source)] = graph.call_module(name, (gated, inputs[site.group_id]))
        for (consumer, source), gated in edges.items():
            by_name[consumer].replace_input_with(by_name[source], gated)
        graph.lint()
        result = fx.GraphModule(root, graph, f"{type(graph_module).__name__}Gated")
        result.meta.update(graph_module.meta)
        result.meta[GATED_GROUPS_KEY] = groups
        result.train(graph_module.training)
        return PassResult(result, True)


def remove_gates(gated: fx.GraphModule) -> fx.GraphModule:
    """The module without its gates: the original graph, sharing the (trained) parameters."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    graph.output(graph.graph_copy(gated.graph, env))
    for node in list(graph.nodes):
        if node.op == "call_module" and str(node.target).startswith(GATE_PREFIX):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    gate_inputs = {f"gate_{gid}" for gid in gated.meta.get(GATED_GROUPS_KEY, ())}
    for node in list(graph.nodes):
        if node.op == "placeholder" and node.target in gate_inputs:
            graph.erase_node(node)
    root = _shared_root(gated, keep=lambda name: not name.startswith(GATE_PREFIX))
    plain = fx.GraphModule(root, graph, type(gated).__name__.removesuffix("Gated"))
    plain.meta.update({k: v for k, v in gated.meta.items() if k != GATED_GROUPS_KEY})
    plain.train(gated.training)
    return plain
