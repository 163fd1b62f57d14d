"""Ops that move, join, cut or regroup axes: channels follow their positions."""
from __future__ import annotations

import operator
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import fx, nn

from ..reshape_map import map_reshape
from ..rule_registry import Layout, RuleContext, SlimView, register_rule
from .common import couple, freeze_inputs, normalize_dim, untracked_like


def _readonly(atoms: np.ndarray) -> np.ndarray:
    atoms = np.ascontiguousarray(atoms)
    atoms.flags.writeable = False
    return atoms


# -- view / reshape / flatten / unflatten / squeeze / unsqueeze -----------------------


def _shape_args(node: fx.Node) -> tuple[Optional[list], Optional[str]]:
    """The target-shape list of a view-like node, and where it sits in the args."""
    if node.target in ("view", "reshape", "expand") and node.op == "call_method":
        rest = list(node.args[1:])
        if len(rest) == 1 and isinstance(rest[0], (tuple, list, torch.Size)):
            return list(rest[0]), "packed"
        if len(rest) == 1 and isinstance(rest[0], fx.Node):
            return _whole_shape(node, rest[0])
        return rest, "varargs"
    if node.target is torch.reshape:
        shape = node.args[1] if len(node.args) > 1 else node.kwargs["shape"]
        return _whole_shape(node, shape) if isinstance(shape, fx.Node) else (list(shape), "packed")
    if node.target == "unflatten" or node.target is torch.unflatten:
        return None, None
    return None, None


def _whole_shape(node: fx.Node, shape: fx.Node) -> tuple[list, str]:
    """``x.view(y.size())``: one run-time value stands for every size."""
    return [shape] * node.meta["val"].dim(), "node"


def _is_dynamic(size: Any) -> bool:
    return not isinstance(size, int) or size == -1


def _reshape(ctx: RuleContext) -> Layout:
    x = ctx.node.args[0]
    sizes, _ = _shape_args(ctx.node)
    dynamic = [_is_dynamic(s) for s in sizes] if sizes is not None else None
    out = map_reshape(ctx.space, ctx.layout(x) or {}, ctx.shape(x), ctx.out_shape, ctx.where, dynamic)
    _tie_sizes_read_elsewhere(ctx, sizes, out)
    return out


def _same_channels_lineage(ctx: RuleContext, node: fx.Node) -> set[str]:
    """``node`` and the tensors it is computed from without a layer that makes new channels in between
    (a module with parameters, or a call reading one: the counts before it are of other channels)."""
    seen, stack = set(), [node]
    while stack:
        current = stack.pop()
        if current.name in seen:
            continue
        seen.add(current.name)
        if current.op == "call_module" and any(True for _ in ctx.modules[current.target].parameters()):
            continue
        if any(n.op == "get_attr" for n in current.all_input_nodes):
            continue
        stack.extend(n for n in current.all_input_nodes if isinstance(n.meta.get("val"), torch.Tensor))  # not sizes
    return seen


def _tie_sizes_read_elsewhere(ctx: RuleContext, sizes: Optional[list], out: Layout) -> None:
    """``b.view(n, a.shape[1], h, w)``: a size read from another tensor's channels must shrink with this axis.

    A count of the viewed tensor's own channels (read from it, or from a tensor it is
    computed from with no layer making new channels in between) follows it as today
    (ShuffleNet's ``x.view(n, g, c // g, h, w)`` and the view back after the transpose).  A count of other channels (DPT reshapes a
    projection's output to the shape of the projection's input) ties those channels
    to the output axis it sizes (one group, so a frozen side freezes the other), or
    freezes them when the two cannot be matched position by position (YOLO11's attention
    views its heads and head features back into the channels of its input).
    """
    if sizes is None:
        return
    own: Optional[np.ndarray] = None  # the viewed tensor's channel atoms, gathered only when a size carries some
    lineage: Optional[set[str]] = None
    for d, size in enumerate(sizes):
        count = ctx.counts.get(size) if isinstance(size, fx.Node) else None
        if isinstance(count, tuple):  # x.view(y.size()): one value holds every size
            count = count[d] if d < len(count) else None
        parts = [a for a in getattr(count, "atoms", ()) if a.size]
        if not parts:
            continue
        read = np.concatenate([a.ravel() for a in parts])
        if own is None:
            layout = ctx.layout(ctx.node.args[0]) or {}
            own = np.concatenate([np.asarray(a).ravel() for a in layout.values()] or [np.zeros(0, np.int64)])
        if np.isin(read, own).all():
            continue
        lineage = lineage if lineage is not None else _same_channels_lineage(ctx, ctx.node.args[0])
        if count.sources <= lineage:
            continue
        target = out.get(d)
        # several tracked axes may merge into d, or one tiled over an untracked one: no position-by-position match
        merged = len(ctx.layout(ctx.node.args[0]) or {}) > 1 or (
            target is not None and np.unique(target).size != target.size)
        if target is not None and target.size == read.size and not merged:
            ctx.space.unite(read, target)
        else:
            ctx.space.freeze(read, f"its channel count sizes another tensor's view ({ctx.where})")
            if target is not None:
                ctx.freeze({d: target}, "sized by another tensor's channel count")


def _rewrite_shape_args(node: fx.Node, slim: SlimView) -> None:
    sizes, form = _shape_args(node)
    if sizes is None:
        return
    new_shape = slim.slim_value(node.name)
    new_sizes = [s if _is_dynamic(s) else int(new_shape[i]) for i, s in enumerate(sizes)]
    if new_sizes == sizes:
        return
    if form == "varargs":
        node.args = (node.args[0], *new_sizes)
    elif node.op == "call_method":
        node.args = (node.args[0], tuple(new_sizes))
    else:
        node.args = (node.args[0], tuple(new_sizes), *node.args[2:])


register_rule("view", "reshape", torch.reshape, propagate=_reshape, rewrite_args=_rewrite_shape_args,
              takes_sizes=True)
register_rule(torch.flatten, "flatten", nn.Flatten, torch.squeeze, torch.unsqueeze, "squeeze", "unsqueeze",
              propagate=_reshape)


def _unflatten(ctx: RuleContext) -> Layout:
    x = ctx.node.args[0]
    return map_reshape(ctx.space, ctx.layout(x) or {}, ctx.shape(x), ctx.out_shape, ctx.where)


def _rewrite_unflatten(node: fx.Node, slim: SlimView) -> None:
    dim = node.args[1] if len(node.args) > 1 else node.kwargs["dim"]
    sizes = node.args[2] if len(node.args) > 2 else node.kwargs["sizes"]
    new_shape = slim.slim_value(node.name)
    dim = normalize_dim(dim, len(new_shape) - len(sizes) + 1)
    new_sizes = tuple(int(s) for s in new_shape[dim: dim + len(sizes)])
    node.args = (node.args[0], node.args[1], new_sizes)
    node.kwargs = {}


def _refresh_unflatten(module: nn.Unflatten, in_shape, out_shape) -> None:
    dim = normalize_dim(module.dim, len(in_shape))
    module.unflattened_size = tuple(int(s) for s in out_shape[dim: dim + len(module.unflattened_size)])


register_rule("unflatten", torch.unflatten, propagate=_unflatten, rewrite_args=_rewrite_unflatten)
register_rule(nn.Unflatten, propagate=_unflatten, refresh_module=_refresh_unflatten)

# -- expand: size-1 axes grow; channel axes keep their size --------------------------


def _expand(ctx: RuleContext) -> Layout:
    x = ctx.node.args[0]
    sizes, _ = _shape_args(ctx.node)
    layout = couple(ctx, [x], ctx.out_shape)
    for d in layout:
        if sizes is not None and not isinstance(sizes[d], int):
            ctx.freeze({d: layout[d]}, "expanded to a size computed at run time")
    return {d: a for d, a in layout.items() if sizes is None or isinstance(sizes[d], int)}


register_rule("expand", propagate=_expand, rewrite_args=_rewrite_shape_args)

# -- axis permutations ------------------------------------------------------------------


def _permutation(ctx: RuleContext) -> Optional[list[int]]:
    """out_dim -> in_dim for permute/transpose/movedim/t, or None."""
    node = ctx.node
    rank = len(ctx.shape(node.args[0]))
    order = list(range(rank))
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    args = list(node.args[1:])
    if name == "permute":
        dims = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
        dims = dims or node.kwargs.get("dims")
        return [normalize_dim(d, rank) for d in dims]
    if name in ("transpose", "swapaxes", "swapdims"):
        a, b = (normalize_dim(d, rank) for d in args[:2])
        order[a], order[b] = order[b], order[a]
        return order
    if name == "t":
        return order[::-1]
    if name in ("movedim", "moveaxis"):
        src, dst = args[:2]
        src = [src] if isinstance(src, int) else list(src)
        dst = [dst] if isinstance(dst, int) else list(dst)
        src = [normalize_dim(d, rank) for d in src]
        dst = [normalize_dim(d, rank) for d in dst]
        rest = iter(d for d in range(rank) if d not in src)
        mapping = dict(zip(dst, src))
        return [mapping[o] if o in mapping else next(rest) for o in range(rank)]
    return None


def _permute(ctx: RuleContext) -> Layout:
    layout = ctx.layout(ctx.node.args[0]) or {}
    order = _permutation(ctx)
    return {out_dim: layout[in_dim] for out_dim, in_dim in enumerate(order) if in_dim in layout}


def _flip(ctx: RuleContext) -> Layout:
    """Reversing an axis reverses its atoms: a permutation, exact."""
    x = ctx.node.args[0]
    rank = len(ctx.shape(x))
    dims = ctx.arg(1, "dims")
    dims = [dims] if isinstance(dims, int) else list(dims)
    layout = dict(ctx.layout(x) or {})
    for d in (normalize_dim(d, rank) for d in dims):
        if d in layout:
            layout[d] = _readonly(layout[d][::-1])
    return layout


register_rule("flip", torch.flip, propagate=_flip)
register_rule("permute", torch.permute, "transpose", torch.transpose, "swapaxes", "swapdims", "t", torch.t,
              "movedim", torch.movedim, "moveaxis", torch.moveaxis, propagate=_permute)

# -- concatenation and stacking ------------------------------------------------------------


def _tensor_list(ctx: RuleContext) -> Optional[list]:
    """The tensors of a cat or stack, or None when they arrive as one value (``torch.cat(x.split(4, 1))``)."""
    tensors = ctx.arg(0, "tensors")
    return list(tensors) if isinstance(tensors, (list, tuple)) else None


def _cat(ctx: RuleContext) -> Layout:
    tensors = _tensor_list(ctx)
    if tensors is None:
        return freeze_inputs(ctx, "concatenates a sequence held in one value")
    out_shape = ctx.out_shape
    dim = normalize_dim(ctx.arg(1, "dim", 0), len(out_shape))
    layouts = [ctx.layout(t) or {} for t in tensors]
    out = couple(ctx, tensors, out_shape, skip_dims=(dim,))
    if any(dim in layout for layout in layouts):
        pieces = []
        for t, layout in zip(tensors, layouts):
            atoms = layout.get(dim)
            if atoms is None:
                atoms = ctx.space.new_atoms(ctx.shape(t)[dim])
                ctx.space.freeze(atoms, f"concatenated with a tensor whose channels cannot be sliced ({ctx.where})")
            pieces.append(atoms)
        out[dim] = _readonly(np.concatenate(pieces))
    return out


register_rule(torch.cat, torch.concat, torch.concatenate, propagate=_cat)


def _stack(ctx: RuleContext) -> Layout:
    tensors = _tensor_list(ctx)
    if tensors is None:
        return freeze_inputs(ctx, "stacks a sequence held in one value")
    out_shape = ctx.out_shape
    dim = normalize_dim(ctx.arg(1, "dim", 0), len(out_shape))
    out = couple(ctx, tensors, [s for i, s in enumerate(out_shape) if i != dim])
    return {(d if d < dim else d + 1): atoms for d, atoms in out.items()}


register_rule(torch.stack, propagate=_stack)

# -- cutting one axis into parts ------------------------------------------------------------


def _parts(ctx: RuleContext, dim_index: int) -> Any:
    """split/chunk: each part takes its slice of the channel atoms."""
    x = ctx.node.args[0]
    rank = len(ctx.shape(x))
    dim = normalize_dim(ctx.arg(dim_index, "dim", 0), rank)
    layout = ctx.layout(x) or {}
    parts = ctx.node.meta["val"]
    out, start = [], 0
    for part in parts:
        length = part.shape[dim]
        piece = {d: a for d, a in layout.items() if d != dim}
        if dim in layout:
            piece[dim] = layout[dim][start: start + length]
        out.append(piece)
        start += length
    return tuple(out)


def _split(ctx: RuleContext) -> Any:
    sizes = ctx.arg(1, "split_size_or_sections")
    if sizes is None:
        sizes = ctx.arg(1, "split_size")
    if not (isinstance(sizes, int) or (isinstance(sizes, (tuple, list)) and all(isinstance(s, int) for s in sizes))):
        return freeze_inputs(ctx, "split by sizes computed at run time")
    return _parts(ctx, 2)


def _chunk(ctx: RuleContext) -> Any:
    return _parts(ctx, 2)


def _rewrite_parts(node: fx.Node, slim: SlimView) -> None:
    """Both split and chunk become a split with explicit slim sizes."""
    x = node.args[0]
    rank = len(x.meta["val"].shape)
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    dim = normalize_dim(dim, rank)
    if slim.kept(x.name, dim) is None:
        return
    sizes = [int(part[dim]) for part in slim.slim_value(node.name)]
    if node.op == "call_method":
        node.target = "split"
    else:
        node.target = torch.split
    node.args = (x, sizes, dim)
    node.kwargs = {}


register_rule("split", torch.split, propagate=_split, rewrite_args=_rewrite_parts)
register_rule("chunk", torch.chunk, propagate=_chunk, rewrite_args=_rewrite_parts)


def _unbind(ctx: RuleContext) -> Any:
    x = ctx.node.args[0]
    dim = normalize_dim(ctx.arg(1, "dim", 0), len(ctx.shape(x)))
    layout = ctx.layout(x) or {}
    if dim in layout:
        ctx.freeze({dim: layout[dim]}, "unbinds the channel axis")
    piece = {(d if d < dim else d - 1): a for d, a in layout.items() if d != dim}
    return tuple(dict(piece) for _ in ctx.node.meta["val"])


register_rule("unbind", torch.unbind, propagate=_unbind)

# -- indexing ---------------------------------------------------------------------------------


def _index_items(index: Any, rank: int) -> Optional[list[tuple[Any, Optional[int]]]]:
    """Pair each index item with the input dim it consumes (None for new axes)."""
    items = list(index) if isinstance(index, tuple) else [index]
    if any(isinstance(it, (fx.Node, list, torch.Tensor)) and not _is_int_node(it) for it in items):
        return None
    consuming = sum(1 for it in items if it is not None and it is not Ellipsis)
    expanded: list[Any] = []
    for it in items:
        if it is Ellipsis:
            expanded.extend([slice(None)] * (rank - consuming))
        else:
            expanded.append(it)
    expanded.extend([slice(None)] * (rank - sum(1 for it in expanded if it is not None)))
    paired, in_dim = [], 0
    for it in expanded:
        if it is None:
            paired.append((it, None))
        else:
            paired.append((it, in_dim))
            in_dim += 1
    return paired


def _is_int_node(value: Any) -> bool:
    return isinstance(value, fx.Node) and isinstance(value.meta.get("val"), int)


def _literal_slice(item: Any) -> bool:
    return _constant_slice(item) and item.step in (None, 1)


def _constant_slice(item: Any) -> bool:
    """A slice of constant bounds and step (``::2``; torch has no negative steps)."""
    return (isinstance(item, slice) and all(v is None or isinstance(v, int) for v in (item.start, item.stop, item.step))
            and item.step != 0)


def _one_strided_slice(paired: list[tuple[Any, Optional[int]]]) -> bool:
    """A strided slice may become a list index in the slim model: exact when it is the index's only
    advanced item (no integers, no second strided slice), since NumPy rules then keep the axis in place."""
    strided = sum(1 for item, _ in paired if _constant_slice(item) and not _literal_slice(item))
    ints = any(isinstance(item, int) or _is_int_node(item) for item, _ in paired)
    return strided == 1 and not ints


def _getitem(ctx: RuleContext) -> Any:
    source, index = ctx.node.args
    held = ctx.layouts.get(source) if isinstance(source, fx.Node) else None
    if isinstance(held, tuple):
        return held[index] if isinstance(index, int) else freeze_inputs(ctx, "indexed at run time")
    if not isinstance(held, dict):
        return untracked_like(ctx.node.meta.get("val"))
    paired = _index_items(index, len(ctx.shape(source)))
    if paired is None:
        return freeze_inputs(ctx, "indexed by a tensor or list")
    out: Layout = {}
    out_dim = 0
    for item, in_dim in paired:
        atoms = held.get(in_dim) if in_dim is not None else None
        if item is None:
            out_dim += 1
            continue
        if isinstance(item, int) or _is_int_node(item):
            if atoms is not None:
                ctx.space.freeze(atoms, f"picks one position of the channel axis ({ctx.where})")
            continue
        if atoms is not None:
            if _literal_slice(item) or (_constant_slice(item) and _one_strided_slice(paired)):
                out[out_dim] = _readonly(atoms[item])
            else:
                ctx.space.freeze(atoms, f"slices the channel axis by run-time bounds, or with a step beside an "
                                        f"integer or another step ({ctx.where})")
        out_dim += 1
    return out


def _slim_slice(item: slice, kept: np.ndarray) -> slice:
    start, stop, _ = item.indices(kept.size)
    stop = max(stop, start)
    new_start = int(kept[:start].sum())
    return slice(new_start, new_start + int(kept[start:stop].sum()), None)


def _slim_strided(item: slice, kept: np.ndarray) -> Union[slice, list[int]]:
    """The kept positions a strided slice selects, as positions of the slim axis: a slice when they are
    evenly spaced, else a list (the only advanced index of its getitem, see ``_one_strided_slice``)."""
    chosen = np.arange(kept.size)[item]
    rank = np.cumsum(kept) - 1
    new = rank[chosen[kept[chosen]]]
    if new.size <= 1:
        start = int(new[0]) if new.size else 0
        return slice(start, start + new.size)
    steps = np.diff(new)
    if (steps == steps[0]).all():
        return slice(int(new[0]), int(new[-1] + steps[0]), int(steps[0]))
    return [int(i) for i in new]


def _rewrite_getitem(node: fx.Node, slim: SlimView) -> None:
    source, index = node.args
    if not isinstance(source, fx.Node) or not isinstance(source.meta.get("val"), torch.Tensor):
        return
    paired = _index_items(index, source.meta["val"].dim())
    if paired is None:
        return
    items = list(index) if isinstance(index, tuple) else [index]
    if Ellipsis in items:
        items = [it for it, _ in paired]
    changed = False
    for pos, (item, in_dim) in enumerate(paired):
        kept = slim.kept(source.name, in_dim) if in_dim is not None else None
        if kept is not None and _literal_slice(item) and item != slice(None):
            items[pos] = _slim_slice(item, kept)
            changed = True
        elif kept is not None and _constant_slice(item) and not _literal_slice(item):
            items[pos] = _slim_strided(item, kept)
            changed = True
    if changed:
        node.args = (source, tuple(items) if isinstance(index, tuple) or len(items) > 1 else items[0])


register_rule(operator.getitem, propagate=_getitem, rewrite_args=_rewrite_getitem)


def _narrow(ctx: RuleContext) -> Layout:
    x = ctx.node.args[0]
    dim = normalize_dim(ctx.arg(1, "dim"), len(ctx.shape(x)))
    start, length = ctx.arg(2, "start"), ctx.arg(3, "length")
    layout = dict(ctx.layout(x) or {})
    if dim in layout:
        if isinstance(start, int) and isinstance(length, int):
            layout[dim] = _readonly(layout[dim][start: start + length])
        else:
            ctx.freeze({dim: layout.pop(dim)}, "narrows the channel axis by run-time bounds")
    return layout


def _rewrite_narrow(node: fx.Node, slim: SlimView) -> None:
    x = node.args[0]
    dim = normalize_dim(node.args[1], x.meta["val"].dim())
    kept = slim.kept(x.name, dim)
    if kept is None:
        return
    new = _slim_slice(slice(node.args[2], node.args[2] + node.args[3]), kept)
    node.args = (x, node.args[1], new.start, new.stop - new.start)


register_rule("narrow", torch.narrow, propagate=_narrow, rewrite_args=_rewrite_narrow)

# -- values that are not tensors ---------------------------------------------------------------


def _not_a_tensor(ctx: RuleContext) -> Any:
    if isinstance(ctx.node.meta.get("val"), torch.Tensor):  # e.g. getattr(x, "data")
        return freeze_inputs(ctx, "an attribute read of a tensor")
    return untracked_like(ctx.node.meta.get("val"))


register_rule("size", "dim", "numel", getattr, len, propagate=_not_a_tensor)
