"""Small helpers shared by the rule modules."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import torch
from torch import fx

from ..rule_registry import Layout, RuleContext

__all__ = ["freeze_inputs", "untracked_like", "couple", "couple_axes", "tensor_operands", "normalize_dim", "first_tensor", "parse_dims"]


def untracked_like(value: Any) -> Any:
    """A layout with no channel axes, shaped like a node's value."""
    if isinstance(value, torch.Tensor):
        return {}
    if isinstance(value, (tuple, list)):
        return tuple(untracked_like(v) for v in value)
    return None


def normalize_dim(dim: Any, rank: int) -> int:
    """A dim as a non-negative int; one computed at run time (``1 - x.dim()``) by its traced value: ranks are static."""
    if isinstance(dim, fx.Node):
        dim = dim.meta.get("val")
    if not isinstance(dim, int):
        raise RuntimeError(f"internal: a dim that is not an integer reached a rule: {dim!r}")
    return dim + rank if dim < 0 else dim


def parse_dims(dims: Any, rank: int) -> Optional[list[int]]:
    """Reduction dims as a sorted list (None = all dims); None also for run-time values."""
    if dims is None:
        return list(range(rank))
    if isinstance(dims, int):
        return [normalize_dim(dims, rank)]
    if isinstance(dims, (tuple, list)) and all(isinstance(d, int) for d in dims):
        return sorted(normalize_dim(d, rank) for d in dims)
    return None


def tensor_operands(ctx: RuleContext) -> list[fx.Node]:
    """Every fx argument of the node whose value is a tensor, in order (each once)."""
    return [n for n in ctx.node.all_input_nodes if isinstance(n.meta.get("val"), torch.Tensor)]


def first_tensor(ctx: RuleContext) -> fx.Node:
    operands = tensor_operands(ctx)
    if not operands:
        raise RuntimeError(f"internal: a tensor rule was applied to {ctx.where}, which has no tensor input")
    return operands[0]


def couple(ctx: RuleContext, operands: Sequence[fx.Node], out_shape: Sequence[int],
           skip_dims: Sequence[int] = ()) -> Layout:
    """Broadcasting elementwise semantics: equal positions must go together.

    * two tracked axes meeting at one output axis are united position by position;
    * a tracked axis meeting an axis whose channels cannot be sliced is frozen;
    * a size-1 axis broadcast over many positions does not couple, but if it is a
      tracked single channel it is frozen (removing it would change the shape).
    """
    return couple_axes(ctx, [(ctx.shape(operand), ctx.layout(operand) or {}) for operand in operands], out_shape,
                       skip_dims)


def couple_axes(ctx: RuleContext, seen: Sequence[tuple[Sequence[int], Layout]], out_shape: Sequence[int],
                skip_dims: Sequence[int] = ()) -> Layout:
    """:func:`couple` on given (shape, layout) pairs: the batch axes of matrix operands, their last two set apart."""
    rank = len(out_shape)
    out: Layout = {}
    # only output dims some operand tracks can unite or freeze anything (a DenseNet concatenation
    # has many operands and tracks one dim)
    dims = sorted({d + rank - len(shape) for shape, layout in seen for d in layout} - set(skip_dims))
    for od in dims:
        if not 0 <= od < rank:
            continue
        size = out_shape[od]
        tracked: list[np.ndarray] = []
        blocked = False
        for shape, layout in seen:
            idim = od - (rank - len(shape))
            if idim < 0:
                continue
            atoms = layout.get(idim)
            if shape[idim] == size:
                if atoms is not None:
                    tracked.append(atoms)
                else:
                    blocked = True
            elif atoms is not None:
                ctx.space.freeze(atoms, f"a single channel broadcast over many ({ctx.where})")
        if not tracked:
            continue
        if blocked:
            for atoms in tracked:
                ctx.space.freeze(atoms, f"combined with a tensor whose channels cannot be sliced ({ctx.where})")
            continue
        for atoms in tracked[1:]:
            ctx.space.unite(tracked[0], atoms)
        out[od] = tracked[0]
    return out


def freeze_inputs(ctx: RuleContext, why: str) -> Any:
    """The rule for anything not understood: freeze every input, track nothing out."""

    for value in ctx.node.all_input_nodes:
        ctx.freeze_value(ctx.layouts.get(value), why)
        if value.op == "get_attr":
            ctx.space.freeze_param(ctx.param_name(str(value.target)), f"{why} ({ctx.where})")
    if ctx.node.op == "call_module":
        prefix = f"{ctx.node.target}."
        for name, _ in ctx.module.named_parameters():
            ctx.space.freeze_param(ctx.param_name(prefix + name), f"{why} ({ctx.where})")
        for name, _ in ctx.module.named_buffers():
            ctx.space.freeze_param(ctx.param_name(prefix + name), f"{why} ({ctx.where})")
    return untracked_like(ctx.node.meta.get("val"))
