"""Ops that act position by position, reductions, pooling and softmax-like ops."""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..rule_registry import Layout, RuleContext, SlimView, register_rule
from .common import couple, first_tensor, parse_dims, tensor_operands

# -- one tensor in, same channels out --------------------------------------------
UNARY_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
    nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.Hardtanh, nn.Tanhshrink,
    nn.Softsign, nn.LogSigmoid, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.AlphaDropout, nn.FeatureAlphaDropout, nn.Threshold,
)
UNARY_FUNCTIONS = (
    F.relu, F.relu_, F.relu6, F.gelu, F.silu, F.sigmoid, F.tanh, F.hardswish, F.hardsigmoid,
    F.leaky_relu, F.elu, F.selu, F.celu, F.mish, F.softplus, F.hardtanh, F.dropout, F.dropout1d,
    F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout, F.threshold, F.logsigmoid,
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.exp, torch.log, torch.sqrt, torch.rsqrt,
    torch.abs, torch.neg, torch.square, torch.sign, torch.erf, torch.sin, torch.cos,
    torch.nn.functional.hardtanh_, torch.dropout, torch.reciprocal,
    operator.neg, operator.pos, operator.abs, operator.invert, torch.logical_not,
)
UNARY_METHODS = (
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "log", "sqrt", "rsqrt", "abs",
    "neg", "square", "sign", "erf", "reciprocal", "contiguous", "clone", "detach", "float", "double",
    "half", "bfloat16", "to", "type", "type_as", "cpu", "cuda", "requires_grad_", "hardswish", "sin",
    "cos", "__neg__",
)


def _same_as_first(ctx: RuleContext) -> Layout:
    return couple(ctx, [first_tensor(ctx)], ctx.out_shape)


register_rule(*UNARY_MODULES, *UNARY_FUNCTIONS, *UNARY_METHODS, propagate=_same_as_first)

# -- several tensors combined position by position, with broadcasting -------------
BINARY_FUNCTIONS = (
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub,
    operator.imul, operator.itruediv, operator.floordiv,
    torch.add, torch.sub, torch.subtract, torch.mul, torch.multiply, torch.div, torch.divide,
    torch.true_divide, torch.maximum, torch.minimum, torch.where, torch.lerp, torch.addcmul,
    torch.addcdiv, torch.pow, torch.clamp, torch.clip, operator.pow,
    operator.gt, operator.lt, operator.ge, operator.le, operator.eq, operator.ne, operator.and_, operator.or_,
    torch.gt, torch.lt, torch.ge, torch.le, torch.eq, torch.ne, torch.logical_and, torch.logical_or,
)
BINARY_METHODS = (
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "truediv", "maximum", "minimum",
    "masked_fill", "masked_fill_", "lerp", "addcmul", "addcdiv", "expand_as", "__add__", "__mul__",
    "__sub__", "__truediv__", "__radd__", "__rmul__", "pow", "pow_", "clamp", "clamp_", "clip",
    "clamp_min", "clamp_max", "gt", "lt", "ge", "le", "eq", "ne",
)


def _elementwise(ctx: RuleContext) -> Layout:
    return couple(ctx, tensor_operands(ctx), ctx.out_shape)


register_rule(*BINARY_FUNCTIONS, *BINARY_METHODS, propagate=_elementwise)

# -- PReLU: one slope per channel, or one for all ---------------------------------


def _prelu(ctx: RuleContext) -> Layout:
    x = ctx.node.args[0]
    layout = couple(ctx, [x], ctx.out_shape)
    if ctx.module.num_parameters > 1:
        ctx.bind(ctx.module_param("weight"), 0, layout.get(1))
    return layout


def _refresh_prelu(module: nn.PReLU, in_shape, out_shape) -> None:
    module.num_parameters = module.weight.numel()


register_rule(nn.PReLU, propagate=_prelu, refresh_module=_refresh_prelu)

# -- ops that mix positions along one axis: fine unless that axis is a channel axis


def _along_dim(dim_index: int):
    def propagate(ctx: RuleContext) -> Layout:
        x = first_tensor(ctx)
        rank = len(ctx.shape(x))
        dim = ctx.arg(dim_index, "dim", None)
        if ctx.node.op == "call_module":
            dim = ctx.module.dim
        layout = dict(ctx.layout(x) or {})
        dims = parse_dims(dim, rank) if dim is not None else None
        if dims is None:
            ctx.freeze(layout, "mixes positions along an axis it computes at run time")
            return {}
        for d in dims:
            if d in layout:
                ctx.freeze({d: layout.pop(d)}, "mixes the channels of one tensor")
        return layout

    return propagate


register_rule(nn.Softmax, nn.LogSoftmax, nn.Softmin, F.softmax, F.log_softmax, F.softmin,
              torch.softmax, torch.log_softmax, torch.cumsum, "softmax", "log_softmax", "cumsum",
              propagate=_along_dim(dim_index=1))
register_rule(F.normalize, propagate=_along_dim(dim_index=2))

# -- reductions: a sum over channels is exact (removed channels add zero), and a mean over the original count;
# others are not


def _reduction(exact_over_channels: bool, dim_index: int = 1):
    def propagate(ctx: RuleContext) -> Layout:
        x = first_tensor(ctx)
        rank = len(ctx.shape(x))
        dims = parse_dims(ctx.arg(dim_index, "dim", None), rank)
        keepdim = len(ctx.out_shape) == rank
        layout = dict(ctx.layout(x) or {})
        if dims is None:
            ctx.freeze(layout, "reduces over axes computed at run time")
            return {}
        out: Layout = {}
        for d, atoms in layout.items():
            if d in dims:
                if not exact_over_channels:
                    ctx.space.freeze(atoms, f"reduces over the channel axis ({ctx.where})")
                continue
            out[d if keepdim else d - sum(1 for r in dims if r < d)] = atoms
        return out

    return propagate


def _mean_over_the_original_count(node: fx.Node, view: SlimView) -> None:
    """A mean over a pruned axis is the kept values' sum over the *original* count: in the masked original the
    removed channels are zeros that still count (ConvNeXt-V2's global response norm divides by the mean
    over channels).  So the slim mean is scaled by kept / original."""
    x = next((a for a in node.all_input_nodes if isinstance(a.meta.get("val"), torch.Tensor)), None)
    if x is None:
        return
    shape = x.meta["val"].shape
    dims = parse_dims(node.args[1] if len(node.args) > 1 else node.kwargs.get("dim"), len(shape))
    scale = 1.0
    for d in dims or ():
        keep = view.kept(x.name, d)
        if keep is not None and int(keep.sum()) < shape[d]:
            scale *= int(keep.sum()) / shape[d]
    if scale == 1.0:
        return
    with node.graph.inserting_after(node):
        scaled = node.graph.call_function(operator.mul, (node, scale))
    node.replace_all_uses_with(scaled, delete_user_cb=lambda user: user is not scaled)


register_rule(torch.sum, "sum", propagate=_reduction(exact_over_channels=True))
register_rule(torch.mean, "mean", propagate=_reduction(exact_over_channels=True),
              rewrite_args=_mean_over_the_original_count)
register_rule(torch.amax, torch.amin, torch.std, torch.var, torch.prod, torch.logsumexp,
              "amax", "amin", "std", "var", "prod", "logsumexp",
              propagate=_reduction(exact_over_channels=False))
# torch.linalg.vector_norm(x, ord, dim, keepdim): a norm over the spatial axes is one value per channel
register_rule(torch.linalg.vector_norm, propagate=_reduction(exact_over_channels=False, dim_index=2))

# -- pooling and resizing: mix the trailing spatial axes only ----------------------


def _spatial(n_spatial: int | None):
    def propagate(ctx: RuleContext) -> Layout:
        x = first_tensor(ctx)
        rank = len(ctx.shape(x))
        if not isinstance(ctx.node.meta.get("val"), torch.Tensor):
            ctx.freeze(ctx.layout(x), "returns more than one tensor")
            return {}
        k = n_spatial if n_spatial is not None else rank - 2
        layout = dict(ctx.layout(x) or {})
        for d in list(layout):
            if d >= rank - k:
                ctx.freeze({d: layout.pop(d)}, "pools or resizes along a channel axis")
        return layout

    return propagate


for _n, _mods, _funcs in (
    (1, (nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d, nn.LPPool1d),
     (F.max_pool1d, F.avg_pool1d, F.adaptive_avg_pool1d, F.adaptive_max_pool1d, torch.max_pool1d,
      torch.avg_pool1d, torch.adaptive_avg_pool1d)),
    (2, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d),
     (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch.max_pool2d)),
    (3, (nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d),
     (F.max_pool3d, F.avg_pool3d, F.adaptive_avg_pool3d, F.adaptive_max_pool3d)),
):
    register_rule(*_mods, *_funcs, propagate=_spatial(_n))
register_rule(nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, F.interpolate, F.upsample,
              propagate=_spatial(None))


def _pad(ctx: RuleContext) -> Layout:
    x = ctx.node.args[0]
    rank = len(ctx.shape(x))
    pad = ctx.arg(1, "pad")
    layout = dict(ctx.layout(x) or {})
    if not isinstance(pad, (tuple, list)) or not all(isinstance(p, int) for p in pad):
        ctx.freeze(layout, "pads by amounts computed at run time")
        return {}
    for i in range(0, len(pad), 2):
        d = rank - 1 - i // 2
        if d in layout and (pad[i] or pad[i + 1]):
            ctx.freeze({d: layout.pop(d)}, "pads a channel axis")
    return layout


register_rule(F.pad, propagate=_pad)

# padding modules: the trailing ``2 * spatial`` axes are padded, never the channels (dim 1 of a batched map)
_PAD_MODULES = (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
                nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d, nn.ReplicationPad2d,
                nn.ReplicationPad3d, nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d)


def _pad_module(ctx: RuleContext) -> Layout:
    x = ctx.node.args[0]
    rank, padded = len(ctx.shape(x)), len(ctx.module.padding) // 2
    layout = dict(ctx.layout(x) or {})
    for d in range(rank - padded, rank):
        if d in layout:
            ctx.freeze({d: layout.pop(d)}, "pads a channel axis")
    return layout


register_rule(*_PAD_MODULES, propagate=_pad_module)

# -- new tensors shaped like their input: same channel positions ------------------------
register_rule(torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like, torch.rand_like,
              torch.randn_like, propagate=_same_as_first)

# -- x.new_full(size, v) and kin: a new tensor of the given size; x lends only its dtype and device


def _new_tensor(ctx: RuleContext) -> Layout:
    return {}  # sizes counted from channels are frozen where they are read (takes_sizes is off)


register_rule("new_full", "new_zeros", "new_ones", "new_empty", "new_tensor", propagate=_new_tensor)

try:  # torchvision's stochastic depth scales whole samples (or the whole batch): channels pass through
    from torchvision.ops import stochastic_depth
except ImportError:  # torchvision is optional for falf_fx
    stochastic_depth = None
if stochastic_depth is not None:
    register_rule(stochastic_depth, propagate=_same_as_first)
