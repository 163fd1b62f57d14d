"""Layers with weights: producers/consumers (conv, linear) and per-channel followers (norms)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch.nn.functional as F
from torch import fx, nn

from ..rule_registry import Layout, RuleContext, SlimView, register_rule
from .common import freeze_inputs

# -- convolutions -------------------------------------------------------------------


def conv_channels(ctx: RuleContext, x: fx.Node, weight: str, bias: Optional[str], groups: int,
                  transposed: bool, n_spatial: int, owner: str) -> Layout:
    """Channel flow of any convolution, module or functional, plain, grouped or depthwise.

    weight is ``(C_out, C_in/g, *k)``, or ``(C_in, C_out/g, *k)`` when transposed.
    """
    in_shape, out_shape = ctx.shape(x), ctx.out_shape
    cdim = len(in_shape) - n_spatial - 1
    layout = ctx.layout(x) or {}
    for d, atoms in layout.items():
        if d != cdim:
            ctx.space.freeze(atoms, f"convolved along a channel axis ({ctx.where})")
    x_atoms = layout.get(cdim)
    c_in, c_out = in_shape[cdim], out_shape[cdim]
    in_dim, out_dim = (0, 1) if transposed else (1, 0)

    if groups == 1:
        ctx.bind(weight, in_dim, x_atoms)
        out_atoms = ctx.producer(weight, out_dim, c_out, owner)
    elif c_in // groups == 1:
        # depthwise: input channel i owns output channels i*m .. i*m+m-1
        if x_atoms is None:
            out_atoms = ctx.space.new_atoms(c_out)
            ctx.space.mark_producer(out_atoms, owner)
            ctx.space.freeze(out_atoms, f"depthwise conv over channels that cannot be sliced ({ctx.where})")
        else:
            out_atoms = np.repeat(x_atoms, c_out // groups)
            out_atoms.flags.writeable = False
            ctx.bind(weight, 0, x_atoms if transposed else out_atoms)
    else:
        # grouped: every group must keep the same width, on both sides
        if x_atoms is not None:
            first_block = ctx.space.unite_blocks(x_atoms, groups)
            ctx.bind(weight, in_dim, x_atoms if transposed else first_block)
        out_atoms = ctx.space.new_atoms(c_out)
        ctx.space.mark_producer(out_atoms, owner)
        first_block = ctx.space.unite_blocks(out_atoms, groups)
        ctx.bind(weight, out_dim, first_block if transposed else out_atoms)
    ctx.bind(bias, 0, out_atoms)
    return {cdim: out_atoms}


_CONVS = {nn.Conv1d: (1, False), nn.Conv2d: (2, False), nn.Conv3d: (3, False),
          nn.ConvTranspose1d: (1, True), nn.ConvTranspose2d: (2, True), nn.ConvTranspose3d: (3, True)}


def _conv_module(ctx: RuleContext) -> Layout:
    module = ctx.module
    n_spatial, transposed = _CONVS[type(module)]
    return conv_channels(ctx, ctx.node.args[0], ctx.module_param("weight"), ctx.module_param("bias"),
                         module.groups, transposed, n_spatial, owner=str(ctx.node.target))


def _refresh_conv(module: nn.Module, in_shape: Sequence[int], out_shape: Sequence[int]) -> None:
    n_spatial, _ = _CONVS[type(module)]
    cdim = len(in_shape) - n_spatial - 1
    if module.groups > 1 and module.in_channels == module.groups:
        module.groups = in_shape[cdim]
    module.in_channels, module.out_channels = in_shape[cdim], out_shape[cdim]


register_rule(*_CONVS, propagate=_conv_module, refresh_module=_refresh_conv)


def _param_of(ctx: RuleContext, value) -> Optional[str]:
    if isinstance(value, fx.Node) and value.op == "get_attr":
        return ctx.param_name(str(value.target))
    return None


def _functional(n_spatial: int, transposed: bool):
    def propagate(ctx: RuleContext):
        x, w, b = ctx.arg(0, "input"), ctx.arg(1, "weight"), ctx.arg(2, "bias")
        groups = ctx.arg(6, "groups", 1)  # the 7th argument of both conv and conv_transpose
        weight, bias = _param_of(ctx, w), _param_of(ctx, b)
        if weight is None or (b is not None and bias is None) or not isinstance(groups, int):
            return freeze_inputs(ctx, "weights that are not parameters of the model")
        return conv_channels(ctx, x, weight, bias, groups, transposed, n_spatial, owner=weight)

    return propagate


def _rewrite_functional(n_spatial: int):
    """A depthwise call's literal ``groups`` follows its slim input channels, as ``_refresh_conv`` does for modules.

    Arguments are positional here (``normalize_args``): ``groups`` is the 7th of conv and conv_transpose alike.
    """
    def rewrite(node: fx.Node, slim: SlimView) -> None:
        x = node.args[0]
        if len(node.args) < 7 or not isinstance(node.args[6], int) or node.args[6] == 1:
            return
        cdim = x.meta["val"].dim() - n_spatial - 1
        if node.args[6] == x.meta["val"].shape[cdim]:  # depthwise: one group per input channel
            node.args = (*node.args[:6], slim.slim_value(x.name)[cdim], *node.args[7:])

    return rewrite


for _fn, (_n, _t) in {F.conv1d: (1, False), F.conv2d: (2, False), F.conv3d: (3, False),
                      F.conv_transpose1d: (1, True), F.conv_transpose2d: (2, True),
                      F.conv_transpose3d: (3, True)}.items():
    register_rule(_fn, propagate=_functional(_n, _t), rewrite_args=_rewrite_functional(_n))

# -- linear -------------------------------------------------------------------------


def linear_channels(ctx: RuleContext, x: fx.Node, weight: str, bias: Optional[str], owner: str) -> Layout:
    """Linear acts on the last axis; any other channel axis passes through."""
    layout = ctx.layout(x) or {}
    last = len(ctx.shape(x)) - 1
    out = {d: atoms for d, atoms in layout.items() if d != last}
    ctx.bind(weight, 1, layout.get(last))
    out_atoms = ctx.producer(weight, 0, ctx.out_shape[-1], owner)
    ctx.bind(bias, 0, out_atoms)
    out[last] = out_atoms
    return out


def _linear_module(ctx: RuleContext) -> Layout:
    return linear_channels(ctx, ctx.node.args[0], ctx.module_param("weight"), ctx.module_param("bias"),
                           owner=str(ctx.node.target))


def _refresh_linear(module: nn.Linear, in_shape, out_shape) -> None:
    module.in_features, module.out_features = in_shape[-1], out_shape[-1]


def _linear_functional(ctx: RuleContext) -> Layout:
    x, w, b = ctx.arg(0, "input"), ctx.arg(1, "weight"), ctx.arg(2, "bias")
    weight, bias = _param_of(ctx, w), _param_of(ctx, b)
    if weight is None or (b is not None and bias is None):
        return freeze_inputs(ctx, "weights that are not parameters of the model")
    return linear_channels(ctx, x, weight, bias, owner=weight)


register_rule(nn.Linear, propagate=_linear_module, refresh_module=_refresh_linear)
register_rule(F.linear, propagate=_linear_functional)

# -- per-channel followers ----------------------------------------------------------

_NORM_PARAMS = ("weight", "bias", "running_mean", "running_var")


def norm_channels(ctx: RuleContext, x: fx.Node, params: Sequence[Optional[str]], cdim: int) -> Layout:
    """A norm with statistics per channel of ``cdim``: its parameters are sliced with those channels."""
    layout = dict(ctx.layout(x) or {})
    for d in list(layout):
        if d != cdim:
            ctx.freeze({d: layout.pop(d)}, "normalised over a channel axis")
    for name in params:
        ctx.bind(name, 0, layout.get(cdim))
    return layout


def _per_channel_norm(n_spatial: Optional[int]):
    """BatchNorm/InstanceNorm: statistics per channel, over batch and space."""

    def propagate(ctx: RuleContext) -> Layout:
        x = ctx.node.args[0]
        cdim = 1 if n_spatial is None else len(ctx.shape(x)) - n_spatial - 1
        return norm_channels(ctx, x, [ctx.module_param(name) for name in _NORM_PARAMS], cdim)

    return propagate


def _batch_norm_functional(ctx: RuleContext) -> Layout:
    """F.batch_norm(x, running_mean, running_var, weight, bias, ...) with the model's own tensors."""
    names = ("running_mean", "running_var", "weight", "bias")  # positional order of F.batch_norm
    values = [ctx.arg(i, name) for i, name in enumerate(names, start=1)]
    params = [_param_of(ctx, v) for v in values]
    if any(v is not None and p is None for v, p in zip(values, params)):
        return freeze_inputs(ctx, "statistics that are not parameters of the model")
    return norm_channels(ctx, ctx.arg(0, "input"), params, cdim=1)


def _refresh_norm(n_spatial: Optional[int]):
    def refresh(module: nn.Module, in_shape, out_shape) -> None:
        cdim = 1 if n_spatial is None else len(in_shape) - n_spatial - 1
        module.num_features = in_shape[cdim]

    return refresh


register_rule(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
              propagate=_per_channel_norm(None), refresh_module=_refresh_norm(None))
register_rule(F.batch_norm, propagate=_batch_norm_functional)
for _n, _cls in ((1, nn.InstanceNorm1d), (2, nn.InstanceNorm2d), (3, nn.InstanceNorm3d)):
    register_rule(_cls, propagate=_per_channel_norm(_n), refresh_module=_refresh_norm(_n))


def _group_norm(ctx: RuleContext) -> Layout:
    """GroupNorm is exact when whole normalisation groups go: unite each group's channels."""
    x = ctx.node.args[0]
    module = ctx.module
    layout = dict(ctx.layout(x) or {})
    for d in list(layout):
        if d != 1:
            ctx.freeze({d: layout.pop(d)}, "normalised over a channel axis")
    if 1 in layout:
        for block in layout[1].reshape(module.num_groups, -1):
            ctx.space.unite_all(block)
    for name in ("weight", "bias"):
        ctx.bind(ctx.module_param(name), 0, layout.get(1))
    return layout


def _refresh_group_norm(module: nn.GroupNorm, in_shape, out_shape) -> None:
    per_group = module.num_channels // module.num_groups
    module.num_channels = in_shape[1]
    module.num_groups = in_shape[1] // per_group


register_rule(nn.GroupNorm, propagate=_group_norm, refresh_module=_refresh_group_norm)


def _layer_norm(ctx: RuleContext) -> Layout:
    """LayerNorm over a channel axis would change the kept channels' statistics: frozen."""
    x = ctx.node.args[0]
    rank = len(ctx.shape(x))
    if ctx.node.op == "call_module":
        normalized = len(ctx.module.normalized_shape)
    else:
        shape = ctx.val(ctx.arg(1, "normalized_shape"))  # x.shape[-2:] arrives as one node
        normalized = len(shape) if isinstance(shape, (tuple, list)) else 1
    layout = dict(ctx.layout(x) or {})
    for d in list(layout):
        if d >= rank - normalized:
            ctx.freeze({d: layout.pop(d)}, "LayerNorm normalises over the channel axis")
    return layout


register_rule(nn.LayerNorm, F.layer_norm, propagate=_layer_norm)
