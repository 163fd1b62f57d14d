"""Matrix products and attention: the contracted axis is one channel set on both sides.

``a @ b`` sums over ``a``'s last and ``b``'s second-to-last axis, so a position removed
from both removes a zero term (exact); the rows of ``a`` and the columns of ``b`` pass
to the output, and the batch axes broadcast as in an elementwise op.  Scaled dot-product
attention contracts the query and key features (exact only when ``scale`` is given: the
default ``1/sqrt(E)`` follows the feature count), passes the value features to the
output, and normalises over the key positions (never sliced).
"""
from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch
from torch.nn import functional as F

from ..rule_registry import Layout, RuleContext, register_rule
from .common import couple_axes

__all__: list[str] = []


def _contract(ctx: RuleContext, a: Optional[np.ndarray], b: Optional[np.ndarray]) -> None:
    if a is not None and b is not None:
        ctx.space.unite(a, b)
    else:
        for atoms in (a, b):
            if atoms is not None:
                ctx.space.freeze(atoms, f"contracted with a tensor whose channels cannot be sliced ({ctx.where})")


def _freeze_all(ctx: RuleContext, nodes: Sequence[object], why: str) -> Layout:
    for node in nodes:
        ctx.freeze(ctx.layout(node), why)
    return {}


def _matmul(ctx: RuleContext) -> Layout:
    a, b = ctx.node.args[0], ctx.node.args[1]
    shape_a, shape_b, out_shape = ctx.shape(a), ctx.shape(b), ctx.out_shape
    if shape_a is None or shape_b is None or out_shape is None or len(shape_a) < 2 or len(shape_b) < 2:
        return _freeze_all(ctx, (a, b), "a matrix product with a vector")
    layout_a, layout_b = dict(ctx.layout(a) or {}), dict(ctx.layout(b) or {})
    rank_a, rank_b, rank = len(shape_a), len(shape_b), len(out_shape)
    _contract(ctx, layout_a.pop(rank_a - 1, None), layout_b.pop(rank_b - 2, None))
    out: Layout = {}
    if (rows := layout_a.pop(rank_a - 2, None)) is not None:
        out[rank - 2] = rows
    if (columns := layout_b.pop(rank_b - 1, None)) is not None:
        out[rank - 1] = columns
    out.update(couple_axes(ctx, [(shape_a[:-2], layout_a), (shape_b[:-2], layout_b)], out_shape[:-2]))
    return out


def _attention(ctx: RuleContext) -> Layout:
    query, key, value = ctx.node.args[:3]
    mask = ctx.arg(3, "attn_mask")
    shapes = [ctx.shape(t) for t in (query, key, value)]
    out_shape = ctx.out_shape
    if any(s is None or len(s) < 2 for s in shapes) or out_shape is None:
        return _freeze_all(ctx, (query, key, value, mask), "attention on operands of unknown rank")
    shape_mask, layout_mask = ctx.shape(mask), dict(ctx.layout(mask) or {})
    has_mask = shape_mask is not None and len(shape_mask) >= 2
    for d in (-2, -1):  # the mask's query and key positions: never sliced
        if has_mask and (atoms := layout_mask.pop(len(shape_mask) + d, None)) is not None:
            ctx.space.freeze(atoms, f"an attention mask over the token positions ({ctx.where})")
    layout_q, layout_k, layout_v = (dict(ctx.layout(t) or {}) for t in (query, key, value))
    (rank_q, rank_k, rank_v), rank = (len(s) for s in shapes), len(out_shape)
    features_q, features_k = layout_q.pop(rank_q - 1, None), layout_k.pop(rank_k - 1, None)
    if ctx.node.kwargs.get("scale") is None:
        for atoms in (features_q, features_k):
            if atoms is not None:
                ctx.space.freeze(atoms, f"attention scaled by 1/sqrt of this size: pass scale= to prune it "
                                        f"({ctx.where})")
    else:
        _contract(ctx, features_q, features_k)
    for atoms in (layout_k.pop(rank_k - 2, None), layout_v.pop(rank_v - 2, None)):
        if atoms is not None:
            ctx.space.freeze(atoms, f"softmax over the key positions ({ctx.where})")
    out: Layout = {}
    if (rows := layout_q.pop(rank_q - 2, None)) is not None:
        out[rank - 2] = rows
    if (features_v := layout_v.pop(rank_v - 1, None)) is not None:
        out[rank - 1] = features_v
    batch = [(s[:-2], layout) for s, layout in zip(shapes, (layout_q, layout_k, layout_v))]
    if has_mask:  # the mask (a relative position bias) broadcasts too
        batch.append((shape_mask[:-2], layout_mask))
    if ctx.node.kwargs.get("enable_gqa"):  # fewer key heads than query heads: the head axes do not align
        for _, layout in batch:
            ctx.freeze(layout, "grouped-query attention heads")
        return out
    out.update(couple_axes(ctx, batch, out_shape[:-2]))
    return out


register_rule(torch.matmul, operator.matmul, torch.bmm, "matmul", "bmm", propagate=_matmul)
register_rule(F.scaled_dot_product_attention, propagate=_attention)
