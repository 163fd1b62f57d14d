"""The fx graph as Graphviz views of the module hierarchy, for the HTML report.

A whole ResNet-152 or DenseNet-201 in one drawing is a grey smear, so the graph is
cut by the module tree the tracer recorded (``node.meta["nn_module_stack"]``): a
view shows one module, its submodules drawn as clusters while the view stays under
``node_budget`` boxes, deeper ones as collapsed boxes that link to their own view.
ResNet-18 fits whole in the first view; a DenseNet opens block by block.  Graphviz
(``dot``) does every layout: the ``graphviz`` package writes DOT and runs the
Debian/Homebrew binary.
"""
from __future__ import annotations

import html
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Optional

import networkx as nx
from torch import fx

from falf_fx.passes.analysis import Analysis

from .errors import FalfError
from .text_report import FROZEN_COLOUR, NodeSummary, dot_quote, graph_nodes, group_colour, shape_label

__all__ = ["GraphView", "ModuleTree", "Scope", "render_views"]

_COLLAPSED_FILL = "#eef2f8"
_EXTERNAL_CAP = 6  # more outside inputs (a DenseNet layer reads every earlier one) merge into one box
_DENSE_EDGES = 2  # more edges per box than this: draw the transitive reduction


@dataclass(eq=False)  # compared by identity: a scope is one place in one tree
class Scope:
    """One called module: the fx nodes it ran itself and the submodules it called, in call order."""

    path: str  # qualified name, "" for the model itself
    type_name: str
    depth: int
    parent: Optional["Scope"] = None
    items: list = field(default_factory=list)  # NodeSummary or Scope, in first-call order
    size: int = 0  # fx nodes in the whole subtree

    @property
    def children(self) -> list["Scope"]:
        return [item for item in self.items if isinstance(item, Scope)]

    @property
    def title(self) -> str:
        return f"{self.path or 'model'} ({self.type_name})"


def _scope_chain(node: fx.Node) -> list[tuple[str, str]]:
    """(path, type name) of the modules around ``node``, outermost first; a module call is not inside itself."""
    stack = node.meta.get("nn_module_stack") or {}
    chain = []
    for value in stack.values():
        path, kind = value if isinstance(value, tuple) else (str(value), "")
        chain.append((str(path), getattr(kind, "__name__", str(kind))))
    if node.op == "call_module" and chain and chain[-1][0] == str(node.target):
        chain.pop()
    return chain


class ModuleTree:
    """The module hierarchy of a traced model with its fx nodes at the leaves."""

    def __init__(self, gm: fx.GraphModule, nodes: Sequence[NodeSummary], model_type: Optional[str] = None) -> None:
        self.root = Scope("", model_type or type(gm).__name__, 0)
        self.scope_of: dict[str, Scope] = {}  # fx node name -> its innermost scope
        self.users: dict[str, list[str]] = defaultdict(list)  # fx node name -> the nodes that read it
        self.scopes: dict[str, Scope] = {"": self.root}
        summary = {n.name: n for n in nodes}
        for node in gm.graph.nodes:
            scope = self.root
            for path, kind in _scope_chain(node):
                if path not in self.scopes:
                    child = Scope(path, kind, scope.depth + 1, scope)
                    self.scopes[path] = child
                    scope.items.append(child)
                scope = self.scopes[path]
            scope.items.append(summary[node.name])
            self.scope_of[node.name] = scope
            for source in summary[node.name].inputs:
                self.users[source].append(node.name)
        self._count(self.root)

    def _count(self, scope: Scope) -> int:
        scope.size = sum(self._count(item) if isinstance(item, Scope) else 1 for item in scope.items)
        return scope.size

    def ancestors(self, node_name: str) -> list[Scope]:
        """Scopes from the root down to the node's own, inclusive."""
        chain, scope = [], self.scope_of[node_name]
        while scope is not None:
            chain.append(scope)
            scope = scope.parent
        return chain[::-1]

    def composite(self) -> list[Scope]:
        """Every scope worth a view of its own (it holds more than one node), root first."""
        return [s for s in self.scopes.values() if s.size > 1]


@dataclass(frozen=True)
class GraphView:
    """One Graphviz drawing: a module, with some submodules open as clusters."""

    key: str  # DOM id of the view
    scope_path: str
    title: str
    parent_key: Optional[str]
    svg: str
    nodes: tuple[str, ...]  # fx nodes drawn as their own box
    groups: tuple[int, ...]  # channel groups of those nodes
    note: str = ""  # what the drawing leaves out, if anything


def _open_scopes(scope: Scope, budget: int) -> set[str]:
    """Submodules opened as clusters: breadth first, smallest first, while the boxes fit the budget."""
    opened, boxes = {scope.path}, len(scope.items)
    frontier = sorted(scope.children, key=lambda s: s.size)
    while frontier:
        nxt = []
        for child in frontier:
            grow = len(child.items) - 1
            if child.size > 1 and boxes + grow <= budget:
                opened.add(child.path)
                boxes += grow
                nxt.extend(child.children)
        frontier = sorted(nxt, key=lambda s: (s.depth, s.size))
    return opened


def _short(node: NodeSummary, scope: Scope) -> str:
    name = node.target.split(" (")[0] if node.op == "call_module" else node.name
    if node.op == "call_module" and scope.path and name.startswith(scope.path + "."):
        name = name[len(scope.path) + 1:]
    return name


def _kind(node: NodeSummary) -> str:
    if node.op == "call_module":
        return node.target.rpartition("(")[2].rstrip(")")
    if node.op in ("placeholder", "output"):
        return "input" if node.op == "placeholder" else "output"
    return node.target.rpartition(".")[2]


class _ViewBuilder:
    """DOT for one scope's view; a node's box is itself, or the closed scope it lies in."""

    def __init__(self, tree: ModuleTree, analysis: Analysis, scope: Scope, key: str, budget: int,
                 view_keys: dict[str, str]) -> None:
        self.tree, self.scope, self.key, self.view_keys = tree, scope, key, view_keys
        self.frozen = {g.id for g in analysis.groups if not g.prunable}
        self.reasons = {g.id: g.reasons for g in analysis.groups}
        self.opened = _open_scopes(scope, budget)
        self.box_ids: dict[str, str] = {}
        self.tooltips: dict[str, str] = {}
        self.drawn_nodes: list[str] = []
        self.drawn_groups: set[int] = set()
        self.lines: list[str] = []
        self.note = ""

    def box_of(self, node_name: str) -> Optional[str]:
        """DOT id of the box that stands for an fx node in this view, None outside the scope."""
        chain = self.tree.ancestors(node_name)
        if self.scope not in chain:
            return None
        for s in chain[chain.index(self.scope) + 1:]:
            if s.path not in self.opened:
                return self._id("s:" + s.path)
        return self._id("n:" + node_name)

    def _id(self, name: str) -> str:
        return self.box_ids.setdefault(name, f"b{len(self.box_ids)}")

    def build(self) -> str:
        self.lines = [f'digraph {dot_quote(self.scope.title)} {{', f'  id="{self.key}-graph";', "  rankdir=TB;",
                      "  nodesep=0.25; ranksep=0.3;",
                      '  node [shape=box, style="rounded,filled", fillcolor=white, fontname="Helvetica", '
                      'fontsize=10, height=0.3, margin="0.08,0.03"];',
                      '  edge [color="#666666", arrowsize=0.6];']
        self._items(self.scope, "  ")
        self._edges()
        self.lines.append("}")
        return "\n".join(self.lines) + "\n"

    def _items(self, scope: Scope, indent: str) -> None:
        for item in scope.items:
            if isinstance(item, NodeSummary):
                self._node(item, scope, indent)
            elif item.path in self.opened:
                cid = self._id("c:" + item.path)
                self.lines.append(f"{indent}subgraph cluster_{cid} {{")
                href = self.view_keys.get(item.path)
                self.lines.append(f'{indent}  id="{self.key}-{cid}"; class="module"; label={dot_quote(item.title)};'
                                  f' style="rounded,dashed"; color="#8899aa"; fontname="Helvetica"; fontsize=10;'
                                  + (f' href="#{href}"; tooltip={dot_quote(f"open {item.path} on its own")};'
                                     if href else ""))
                self._items(item, indent + "  ")
                self.lines.append(f"{indent}}}")
            else:
                self._collapsed(item, indent)

    def _node(self, node: NodeSummary, scope: Scope, indent: str) -> None:
        bid = self.box_of(node.name)
        short, kind = _short(node, scope), _kind(node)
        label = [short if short == kind else f"{short} · {kind}"]
        shape = shape_label(node.shape)
        if shape:
            label.append(shape)
        classes, fill, style = ["fx"], "white", "rounded,filled"
        tip = [f"{node.name}: {node.op} {node.target}", f"output {shape or '-'}"]
        if node.groups:
            label.append("group " + ", ".join(map(str, node.groups[:3])) + (" …" if len(node.groups) > 3 else ""))
            classes += [f"g-{g}" for g in node.groups]
            self.drawn_groups.update(node.groups)
            live = [g for g in node.groups if g not in self.frozen]
            if live:
                fill = group_colour(live[0])
                tip.append("channel groups " + ", ".join(map(str, node.groups)))
            else:
                fill, style = FROZEN_COLOUR, "rounded,filled,dashed"
                classes.append("frozen")
            for g in node.groups:
                if g in self.frozen:
                    tip.append(f"group {g} frozen: " + "; ".join(self.reasons[g]))
        self.drawn_nodes.append(node.name)
        self.tooltips[bid] = "\n".join(tip)
        self.lines.append(f'{indent}{bid} [id="{self.key}-{node.name}", class="{" ".join(classes)}", '
                          f'label={dot_quote(chr(10).join(label))}, fillcolor="{fill}", style="{style}"];')

    def _collapsed(self, scope: Scope, indent: str) -> None:
        bid = self._id("s:" + scope.path)
        href = self.view_keys.get(scope.path)
        name = scope.path.rpartition(".")[2] if self.scope.path else scope.path
        label = f"{name}\n{scope.type_name}\n{scope.size} ops ▸"
        self.tooltips[bid] = f"{scope.title}: {scope.size} fx nodes; click to open"
        self.lines.append(f'{indent}{bid} [id="{self.key}-m-{bid}", class="module collapsed", '
                          f'label={dot_quote(label)}, '
                          f'shape=box3d, style=filled, fillcolor="{_COLLAPSED_FILL}"'
                          + (f', href="#{href}"' if href else "") + "];")

    def _edges(self) -> None:
        inner, outer_in, outer_out = set(), defaultdict(set), defaultdict(set)
        for node in _iter_nodes(self.scope):
            name, dst = node.name, self.box_of(node.name)
            for source in node.inputs:
                src = self.box_of(source)
                if src is None:
                    outer_in[dst].add(source)
                elif src != dst:
                    inner.add((src, dst))
            for user in self.tree.users[name]:
                if self.box_of(user) is None:
                    outer_out[dst].add(user)
        self._outside(outer_in, "from", incoming=True)
        self._outside(outer_out, "to", incoming=False)
        self.lines.extend(f"  {a} -> {b};" for a, b in sorted(self._thinned(inner)))

    def _thinned(self, edges: set[tuple[str, str]]) -> set[tuple[str, str]]:
        """Dense connections (a DenseNet block: every layer reads every earlier one) as their transitive reduction.

        Thousands of edges are no drawing anyone can read, and they cost dot a minute;
        the edges a chain already implies are left out and the view says how many.
        A view whose boxes form a cycle keeps every edge.
        """
        boxes = {b for edge in edges for b in edge}
        if len(edges) <= _DENSE_EDGES * max(len(boxes), 1):
            return edges
        graph = nx.DiGraph(edges)
        if not nx.is_directed_acyclic_graph(graph):
            return edges
        kept = set(nx.transitive_reduction(graph).edges)
        self.note = (f"{len(edges) - len(kept):,} of {len(edges):,} edges between boxes are left out: each is implied "
                     "by a path through other boxes (dense connections); open a box to see all its inputs")
        return kept

    def _outside(self, links: dict[str, set[str]], word: str, incoming: bool) -> None:
        outside = sorted({n for names in links.values() for n in names})
        shown = outside[:_EXTERNAL_CAP]
        merged = f"x{word}_more"
        for name in shown:
            self.lines.append(f'  x{word}_{name} [label={dot_quote(f"{word} {name}")}, shape=plaintext, style="", '
                              f'fontcolor="#666666"];')
        if len(outside) > len(shown):
            self.lines.append(f'  {merged} [label="{word} {len(outside) - len(shown)} more outside", '
                              f'shape=plaintext, style="", fontcolor="#666666"];')
        pairs = set()
        for box, names in links.items():
            for name in names:
                ext = f"x{word}_{name}" if name in shown else merged
                pairs.add((ext, box) if incoming else (box, ext))
        self.lines.extend(f'  {a} -> {b} [style=dashed];' for a, b in sorted(pairs))


def _iter_nodes(scope: Scope) -> Iterable[NodeSummary]:
    for item in scope.items:
        if isinstance(item, Scope):
            yield from _iter_nodes(item)
        else:
            yield item


_TITLE = re.compile(r"<title>(b\d+)</title>")


def _svg(dot: str, tooltips: dict[str, str]) -> str:
    """Lay out with Graphviz; each box's <title> (the browser's hover text) becomes its description."""
    try:
        import graphviz
    except ImportError:
        raise FalfError("the HTML report needs the graphviz package: pip install 'falf_fx[report]'") from None
    try:
        svg = graphviz.Source(dot).pipe(format="svg", engine="dot").decode()
    except graphviz.ExecutableNotFound:
        raise FalfError("the HTML report lays graphs out with Graphviz's dot, which is not installed: "
                        "apt-get install graphviz (Debian/Ubuntu) or brew install graphviz (macOS)") from None
    svg = svg[svg.index("<svg"):]  # drop the XML prolog and doctype: the SVG sits inside HTML
    return _TITLE.sub(lambda m: f"<title>{html.escape(tooltips.get(m.group(1), ''))}</title>", svg)


def render_views(gm: fx.GraphModule, analysis: Analysis, node_budget: int = 90,
                 model_type: Optional[str] = None) -> tuple[GraphView, ...]:
    """One view per module that holds more than one node, the whole model first.

    ``model_type`` names the root when ``gm`` is a rewritten GraphModule (the model's class is gone).
    """
    tree = ModuleTree(gm, graph_nodes(analysis), model_type)
    scopes = tree.composite()
    keys = {s.path: f"view-{i}" for i, s in enumerate(scopes)}
    views = []
    for scope in scopes:
        builder = _ViewBuilder(tree, analysis, scope, keys[scope.path], node_budget, keys)
        dot = builder.build()
        views.append(GraphView(keys[scope.path], scope.path, scope.title,
                               keys[scope.parent.path] if scope.parent is not None else None,
                               _svg(dot, builder.tooltips), tuple(builder.drawn_nodes),
                               tuple(sorted(builder.drawn_groups)), builder.note))
    return tuple(views)
