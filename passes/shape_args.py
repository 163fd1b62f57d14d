"""Shapes built by Python arithmetic become one explicit list of sizes.

``x.reshape(y.size()[:-2] + (all_head_size,))`` (Hugging Face attention) passes one
run-time value for the whole shape, so the view rule cannot tell that its last size
is the constant 64, which must shrink with the channels it counts.  This pass writes
such a shape as ``x.reshape([getitem(s, 0), getitem(s, 1), 64])``: every size is its
own node or constant, as in ``x.view(b, n, 64)``, and the rules see each one.  An item
of such a sum (``x.view(*shape)`` unpacks it) becomes the size it names.  It
runs after shape propagation, which gives every size its value.
"""
from __future__ import annotations

import operator
from typing import Any, Optional

import torch
from torch import fx

__all__ = ["flatten_shape_arguments"]


def _sizes(value: Any, graph: fx.Graph, before: fx.Node) -> Optional[list]:
    """The sizes a shape value holds, one int or node each; None where they cannot be told apart."""
    if isinstance(value, (tuple, list)) and not isinstance(value, torch.Size):
        return list(value) if all(isinstance(v, (int, fx.Node)) for v in value) else None
    if not isinstance(value, fx.Node):
        return None
    if value.op == "call_function" and value.target is operator.add and len(value.args) == 2 and not value.kwargs:
        left, right = (_sizes(a, graph, before) for a in value.args)
        return left + right if left is not None and right is not None else None
    known = value.meta.get("val")
    if not (isinstance(known, tuple) and all(isinstance(v, int) for v in known)):
        return None
    sizes = []
    for i, size in enumerate(known):
        with graph.inserting_before(before):
            item = graph.call_function(operator.getitem, (value, i))
        item.meta["val"] = size
        sizes.append(item)
    return sizes


def _shape_position(node: fx.Node) -> Optional[int]:
    """Where a view-like call holds its shape as one node, if it does."""
    if node.op == "call_method" and node.target in ("view", "reshape") and len(node.args) == 2:
        return 1 if isinstance(node.args[1], fx.Node) else None
    if node.op == "call_function" and node.target is torch.reshape and len(node.args) == 2:
        return 1 if isinstance(node.args[1], fx.Node) else None
    return None


def _is_tuple_sum(node: Any) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target is operator.add \
        and isinstance(node.meta.get("val"), tuple)


def _fold_items_of_sums(gm: fx.GraphModule) -> bool:
    """``(size[:-2] + (64,))[2]`` is the constant 64 (``view(*shape)`` unpacks a sum into such items)."""
    changed = False
    for node in list(gm.graph.nodes):
        if not (node.op == "call_function" and node.target is operator.getitem and _is_tuple_sum(node.args[0])
                and isinstance(node.args[1], int)):
            continue
        sizes = _sizes(node.args[0], gm.graph, node)
        if sizes is None or not -len(sizes) <= node.args[1] < len(sizes):
            continue
        size = sizes[node.args[1]]
        for user in list(node.users):  # the item may be a constant, which replace_all_uses_with does not take
            user.args, user.kwargs = (fx.node.map_aggregate(a, lambda v: size if v is node else v)
                                      for a in (user.args, user.kwargs))
        changed = True
    return changed


def flatten_shape_arguments(gm: fx.GraphModule) -> bool:
    """Rewrite every view or reshape whose shape is a sum of tuples; True (and recompiled) if any changed."""
    changed = _fold_items_of_sums(gm)
    for node in list(gm.graph.nodes):
        position = _shape_position(node)
        if position is None:
            continue
        shape = node.args[position]
        if not _is_tuple_sum(shape):
            continue  # a whole size read (x.view(y.size())) is understood as it is
        sizes = _sizes(shape, gm.graph, node)
        if sizes is None:
            continue
        node.args = (*node.args[:position], sizes)
        changed = True
    if changed:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return changed
