"""What the CLI shows: costs before/after, channel groups, the graph; as rich, JSON or DOT.

Costs follow fvcore's convention: a MAC is one multiply-accumulate, FLOPs = 2 x MACs.
Both are labelled everywhere because papers mix the two.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from rich.console import Group as RenderGroup
from rich.table import Table
from rich.text import Text
from rich.tree import Tree
from torch import fx

from falf_fx.passes.analysis import Analysis, ChannelGroup

from .capture import as_input_tuple
from .flops import Cost, count_cost, macs_by_module

__all__ = ["CONVENTION", "FROZEN_COLOUR", "compress_table", "dot_quote", "group_colour", "shape_label", "si", "CostReport", "GroupSummary", "GroupsReport", "NodeSummary", "graph_nodes",
           "graph_json", "graph_table", "to_dot"]

CONVENTION = "MACs = multiply-accumulates as counted by fvcore; FLOPs = 2 x MACs"
FROZEN_COLOUR = "#d9d9d9"
# ColorBrewer Set3 and Pastel1 without their greys: pale enough for black labels, distinct side by side.
_PALETTE = ("#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5",
            "#bc80bd", "#ccebc5", "#ffed6f", "#fbb4ae", "#b3cde3", "#decbe4", "#fed9a6", "#e5d8bd")


def group_colour(group_id: int) -> str:
    """The fill of a channel group, in the DOT output and the HTML report alike."""
    return _PALETTE[group_id % len(_PALETTE)]


def si(n: float) -> str:
    """12345678 -> '12.35 M': the SI prefix every table and the HTML report use."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:g}"


def _shape_text(shape: Sequence[int]) -> str:
    return "×".join(str(s) for s in shape)


def _cost_json(cost: Cost) -> dict[str, int]:
    return {"macs": cost.macs, "flops": cost.flops, "params": cost.params}


@dataclass(frozen=True)
class CostReport:
    """One model's cost, or before/after a rewrite, at one input shape."""

    model: str
    input_shape: tuple[int, ...]
    before: Cost
    after: Optional[Cost] = None

    def ratios(self) -> dict[str, float]:
        """after / before for MACs, FLOPs and parameters (empty without ``after``)."""
        if self.after is None:
            return {}
        pairs = {"macs": (self.after.macs, self.before.macs), "flops": (self.after.flops, self.before.flops),
                 "params": (self.after.params, self.before.params)}
        return {k: (a / b if b else 1.0) for k, (a, b) in pairs.items()}

    def to_json(self) -> dict[str, Any]:
        head = {"model": self.model, "input_shape": list(self.input_shape), "convention": CONVENTION}
        if self.after is None:
            return {**head, **_cost_json(self.before)}
        return {**head, "before": _cost_json(self.before), "after": _cost_json(self.after),
                "after_over_before": self.ratios()}

    def table(self) -> Table:
        title = f"{self.model} at input {_shape_text(self.input_shape)}"
        table = Table(title=Text(title), caption=CONVENTION, title_justify="left", caption_justify="left")
        table.add_column("")
        rows = [("MACs", "macs"), ("FLOPs", "flops"), ("Parameters", "params")]
        if self.after is None:
            table.add_column("Value", justify="right")
            table.add_column("Exact", justify="right", style="dim")
            for label, key in rows:
                value = getattr(self.before, key)
                table.add_row(label, si(value), f"{value:,}")
            return table
        for name in ("Before", "After", "After / before"):
            table.add_column(name, justify="right")
        ratios = self.ratios()
        for label, key in rows:
            r = ratios[key]
            table.add_row(label, si(getattr(self.before, key)), si(getattr(self.after, key)),
                          f"{r:.3f} ({(r - 1) * 100:+.1f}%)")
        return table


@dataclass(frozen=True)
class GroupSummary:
    """A channel group as a reader sees it: how big, how much is prunable, what it costs."""

    id: int
    channels: int
    prunable: int
    producers: tuple[str, ...]
    macs_share: float  # share of the model's MACs spent in the layers whose parameters it slices
    frozen_reasons: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "channels": self.channels, "prunable": self.prunable,
                "producers": list(self.producers), "macs_share": self.macs_share,
                "frozen_reasons": list(self.frozen_reasons)}


def _touched_modules(analysis: Analysis, group: ChannelGroup) -> set[str]:
    """Qualified names of the modules owning a parameter the group slices (every alias)."""
    names = set()
    for member in group.param_members:
        for alias in analysis.param_aliases.get(member.name, (member.name,)):
            names.add(alias.rpartition(".")[0])
    return names


@dataclass(frozen=True)
class GroupsReport:
    """Every channel group of a model, with its cost and what froze it."""

    model: str
    input_shape: tuple[int, ...]
    cost: Cost
    prunable_macs_share: float
    groups: tuple[GroupSummary, ...]
    auto_leaves: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, model: str, analysis: Analysis, example_inputs: Any) -> "GroupsReport":
        gm = analysis.graph_module
        cost = count_cost(gm, example_inputs)
        per_module = macs_by_module(gm, example_inputs)

        def share(modules: set[str]) -> float:
            return sum(per_module.get(m, 0) for m in modules) / cost.macs if cost.macs else 0.0

        summaries, prunable_modules = [], set()
        for group in analysis.groups:
            touched = _touched_modules(analysis, group)
            if group.prunable:
                prunable_modules |= touched
            summaries.append(GroupSummary(group.id, group.size, group.num_prunable, group.producers,
                                          share(touched), group.reasons))
        shape = tuple(as_input_tuple(example_inputs)[0].shape)
        return cls(model, shape, cost, share(prunable_modules), tuple(summaries), dict(analysis.auto_leaves))

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "input_shape": list(self.input_shape), "convention": CONVENTION,
                **_cost_json(self.cost), "prunable_macs_share": self.prunable_macs_share,
                "num_groups": len(self.groups), "num_prunable_groups": sum(g.prunable > 0 for g in self.groups),
                "auto_leaves": dict(self.auto_leaves), "groups": [g.to_json() for g in self.groups]}

    def renderable(self) -> RenderGroup:
        prunable = sum(g.prunable > 0 for g in self.groups)
        headline = Text.assemble(
            (self.model, "bold"), f" at input {_shape_text(self.input_shape)}: {len(self.groups)} channel groups, ",
            (f"{prunable} prunable", "green"), f"; {si(self.cost.macs)} MACs, {si(self.cost.params)} parameters; ",
            f"layers a prunable group can slim hold {self.prunable_macs_share:.1%} of MACs")
        parts: list[Any] = [headline, self._table()]
        tree = self._frozen_tree()
        if tree is not None:
            parts.append(tree)
        return RenderGroup(*parts)

    def _table(self) -> Table:
        table = Table(caption_justify="left",
                      caption="MACs share: MACs of the layers whose parameters the group slices "
                              "(a layer counts for its input and its output group)")
        for name, justify in (("Group", "right"), ("Channels", "right"), ("Prunable", "right"),
                              ("Producers", "left"), ("MACs share", "right"), ("Frozen because", "left")):
            table.add_column(name, justify=justify, overflow="fold")
        for g in self.groups:
            producers = "\n".join(g.producers[:3])
            if len(g.producers) > 3:
                producers += f"\n+{len(g.producers) - 3} more"
            style = "green" if g.prunable == g.channels else ("yellow" if g.prunable else "red")
            table.add_row(str(g.id), str(g.channels), Text(str(g.prunable), style=style), Text(producers or "-"),
                          f"{g.macs_share:.1%}", Text("; ".join(g.frozen_reasons) or "-"))
        return table

    def by_reason(self) -> dict[str, list[GroupSummary]]:
        """The groups with frozen channels, under each reason (in first-seen order)."""
        found: dict[str, list[GroupSummary]] = defaultdict(list)
        for g in self.groups:
            for reason in g.frozen_reasons:
                found[reason].append(g)
        return dict(found)

    def _frozen_tree(self) -> Optional[Tree]:
        by_reason = self.by_reason()
        if not by_reason and not self.auto_leaves:
            return None
        tree = Tree("[bold]Frozen channels, by reason[/bold]")
        for reason, groups in by_reason.items():
            branch = tree.add(Text(reason, style="red"))
            for g in groups:
                branch.add(Text(f"group {g.id} ({g.channels - g.prunable}/{g.channels} channels frozen): "
                                f"{', '.join(g.producers[:3]) or 'no producer'}"))
        if self.auto_leaves:
            leaves = tree.add(Text("untraceable submodules kept as leaves", style="red"))
            for name, why in self.auto_leaves.items():
                leaves.add(Text(f"{name}: {why}"))
        return tree


@dataclass(frozen=True)
class NodeSummary:
    """One fx node: what it computes, its output shape and the channel groups it carries."""

    name: str
    op: str
    target: str
    shape: Any  # list of ints, list of such lists for tuple outputs, or None
    groups: tuple[int, ...]
    inputs: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "op": self.op, "target": self.target, "shape": self.shape,
                "groups": list(self.groups), "inputs": list(self.inputs)}


def _target_text(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "call_module":
        return f"{node.target} ({type(gm.get_submodule(str(node.target))).__name__})"
    if node.op == "call_function":
        module = getattr(node.target, "__module__", None) or ""
        name = getattr(node.target, "__name__", str(node.target))
        return name if module in ("_operator", "operator", "builtins") else f"{module}.{name}".lstrip(".")
    return str(node.target)


def _shape_of(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return [int(s) for s in value.shape]
    if isinstance(value, (tuple, list)):
        shapes = [_shape_of(v) for v in value]
        return shapes if any(s is not None for s in shapes) else None
    return None


def _layout_atoms(layout: Any) -> list[np.ndarray]:
    if isinstance(layout, dict):
        return list(layout.values())
    if isinstance(layout, (tuple, list)):
        return [atoms for part in layout for atoms in _layout_atoms(part)]
    return []


def _groups_of_node(analysis: Analysis, name: str) -> tuple[int, ...]:
    atoms = _layout_atoms(analysis.layouts.get(name))
    if not atoms:
        return ()
    channels = analysis.channel_of_atom[np.concatenate(atoms).astype(np.int64)]
    gids = analysis.group_of_channel[channels]
    return tuple(int(g) for g in np.unique(gids) if g >= 0)


def graph_nodes(analysis: Analysis) -> tuple[NodeSummary, ...]:
    gm = analysis.graph_module
    return tuple(NodeSummary(n.name, n.op, _target_text(n, gm), _shape_of(n.meta.get("val")),
                             _groups_of_node(analysis, n.name), tuple(i.name for i in n.all_input_nodes))
                 for n in gm.graph.nodes)


def graph_json(model: str, input_shape: Sequence[int], nodes: Sequence[NodeSummary]) -> dict[str, Any]:
    return {"model": model, "input_shape": list(input_shape), "nodes": [n.to_json() for n in nodes]}


def shape_label(shape: Any) -> str:
    if shape is None:
        return ""
    if shape and isinstance(shape[0], list):
        return ", ".join(shape_label(s) for s in shape)
    return _shape_text(shape) if shape else "scalar"


def graph_table(model: str, nodes: Sequence[NodeSummary]) -> Table:
    table = Table(title=Text(f"{model}: {len(nodes)} fx nodes"), title_justify="left")
    for name in ("Node", "Op", "Target", "Output shape", "Groups"):
        table.add_column(name, overflow="fold")
    for n in nodes:
        table.add_row(*(Text(cell) for cell in (n.name, n.op, n.target, shape_label(n.shape),
                                                 ", ".join(map(str, n.groups)) or "-")))
    return table


def dot_quote(text: str) -> str:
    """A DOT string literal: quotes and backslashes escaped, newlines as DOT line breaks."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(analysis: Analysis, name: str = "model") -> str:
    """Graphviz DOT of the fx graph; a node is filled with the colour of its (first) channel group.

    Nodes whose groups are all frozen are grey and dashed; nodes with no group are white.
    """
    frozen = {g.id for g in analysis.groups if not g.prunable}
    lines = [f"digraph {dot_quote(name)} {{", "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fillcolor=white, fontname="Helvetica", fontsize=10];']
    for node in graph_nodes(analysis):
        label = f"{node.name}\n{node.op}: {node.target}"
        if node.shape is not None:
            label += f"\n{shape_label(node.shape)}"
        attrs = ""
        if node.groups:
            label += "\ngroup " + ", ".join(f"{g}{' (frozen)' if g in frozen else ''}" for g in node.groups)
            if all(g in frozen for g in node.groups):
                attrs = f', fillcolor="{FROZEN_COLOUR}", style="rounded,filled,dashed"'
            else:
                first = next(g for g in node.groups if g not in frozen)
                attrs = f', fillcolor="{group_colour(first)}"'
        lines.append(f"  {dot_quote(node.name)} [label={dot_quote(label)}{attrs}];")
        lines.extend(f"  {dot_quote(src)} -> {dot_quote(node.name)};" for src in node.inputs)
    lines.append("}")
    return "\n".join(lines) + "\n"


METRIC_LABELS = {"top1": "Top-1 accuracy", "miou": "mIoU", "map": "mAP (IoU 0.5:0.95)", "map50": "mAP@0.5"}


def metric_label(name: str) -> str:
    """How reports name a compress run's metric (a user's callable by its own name)."""
    return METRIC_LABELS.get(name, name)


def compress_table(report: dict[str, Any], title: str = "compress") -> Table:
    """Before/after of falf_fx.compress: the task metric, MACs, FLOPs, parameters, CPU latency."""
    table = Table(title=title, caption=CONVENTION)
    for column in ("", "Before", "After", "After / before"):
        table.add_column(column, justify="right" if column else "left")
    before, after = report["before"], report["after"]
    if before.get("metric") is not None:
        table.add_row(metric_label(report["metric"]), f"{before['metric']:.4f}", f"{after['metric']:.4f}",
                      f"{after['metric'] - before['metric']:+.4f}")
    for label, key in (("MACs", "macs"), ("FLOPs", "flops"), ("Parameters", "params")):
        table.add_row(label, si(before[key]), si(after[key]), f"{after[key] / before[key]:.3f}")
    if before.get("latency_ms") is not None:
        table.add_row("CPU latency (ms)", f"{before['latency_ms']:.3f}", f"{after['latency_ms']:.3f}",
                      f"{after['latency_ms'] / before['latency_ms']:.3f}")
    return table
