"""Shapes without real compute: every node gets ``node.meta["val"]`` (a tensor on the meta device).

Three tiers, cheapest first: meta tensors (the module's parameters swapped for
meta copies; no data, little dispatch overhead), fake tensors (FakeTensorMode's
decompositions cover ops without a meta kernel), and real tensors for leaves
whose forward reads tensor values.  Every tier stores meta tensors, so readers
see one kind of value whichever tier ran.
"""
from __future__ import annotations

import contextlib
import itertools
import operator
import warnings
from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch
from torch import fx, nn
from torch.nn import functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from .errors import FalfError
from .modes import eval_mode

__all__ = ["ShapePropagationError", "propagate_shapes", "fake_inputs_like", "meta_function_call", "meta_method_call",
           "meta_module_call", "meta_tensors", "to_meta"]


class ShapePropagationError(FalfError, RuntimeError):
    """The model cannot run on the given example inputs; names the node that failed.

    ``failure`` is that part alone (the node and what it raised), for callers that know
    the inputs are not to blame.
    """

    def __init__(self, message: str, failure: str = "") -> None:
        super().__init__(message)
        self.failure = failure or message


def _empty_like(value):
    """Empty tensors in place of the (meta) tensors inside a value, containers rebuilt as plain lists,
    tuples and dicts (a detector part takes a list of feature maps)."""
    if isinstance(value, torch.Tensor):
        return torch.empty(value.shape, dtype=value.dtype)
    if isinstance(value, list):  # fx's immutable_list too
        return [_empty_like(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_empty_like(v) for v in value)
    if isinstance(value, dict):
        return {k: _empty_like(v) for k, v in value.items()}
    return value


def fake_inputs_like(gm: fx.GraphModule) -> list:
    """Empty tensors with the placeholders' recorded shapes and dtypes (nested as the inputs were)."""
    return [_empty_like(n.meta["val"]) for n in gm.graph.nodes if n.op == "placeholder"]


def _empty_meta(value: torch.Tensor) -> torch.Tensor:
    """A new meta tensor like ``value`` (``empty_like`` on meta runs a Python reference, ~40x slower)."""
    return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device="meta")


def _meta_like(value: torch.Tensor) -> torch.Tensor:
    if value.is_meta and type(value) is torch.Tensor:
        return value
    return _empty_meta(value)


def to_meta(value):
    """Every tensor in a (nested) value as a meta tensor of the same shape, strides and dtype."""
    return fx.node.map_aggregate(value, lambda v: _meta_like(v) if isinstance(v, torch.Tensor) else v)


class _RecordingInterpreter(fx.Interpreter):
    """Runs the graph and records every node's value as meta tensors."""

    def run_node(self, n: fx.Node):
        result = super().run_node(n)
        n.meta["val"] = to_meta(result)
        return result


def _batch_norm_shape(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode batch norm keeps its input's shape; the checks are the ones the real kernel makes.

    On the meta device batch norm runs a Python decomposition that costs more than
    every other op of a ResNet together.
    """
    module._check_input_dim(x)
    for name in ("weight", "bias", "running_mean", "running_var"):
        tensor = getattr(module, name)
        if tensor is not None and tuple(tensor.shape) != (x.shape[1],):
            raise RuntimeError(f"{name} of shape {tuple(tensor.shape)} on an input with {x.shape[1]} channels")
    return _empty_meta(x)


def _layer_norm_shape(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    shape = tuple(module.normalized_shape)
    if tuple(x.shape[x.dim() - len(shape):]) != shape:
        raise RuntimeError(f"LayerNorm over {shape} on an input of shape {tuple(x.shape)}")
    for name in ("weight", "bias"):
        tensor = getattr(module, name)
        if tensor is not None and tuple(tensor.shape) != shape:
            raise RuntimeError(f"LayerNorm {name} of shape {tuple(tensor.shape)}, normalized_shape {shape}")
    return _empty_meta(x)


def _linear_shape(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The checks of the real kernel; on the meta device linear on a 3-D input runs a Python decomposition."""
    if x.dim() == 0 or weight.dim() != 2 or x.shape[-1] != weight.shape[1]:
        raise RuntimeError(f"linear of an input of shape {tuple(x.shape)} with a weight of shape "
                           f"{tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) not in ((weight.shape[0],), ()):
        raise RuntimeError(f"linear bias of shape {tuple(bias.shape)} for {weight.shape[0]} outputs")
    if any(t is not None and t.dtype != x.dtype for t in (weight, bias)):
        raise RuntimeError(f"linear mixes dtypes {x.dtype} and {weight.dtype}")
    return torch.empty((*x.shape[:-1], weight.shape[0]), dtype=x.dtype, device="meta")


def _linear_call(*args, **kwargs) -> Optional[torch.Tensor]:
    """F.linear(x, weight[, bias]) given positionally; None for any other form (the kernel decides)."""
    if kwargs or not 2 <= len(args) <= 3 or not isinstance(args[0], torch.Tensor) \
            or not all(isinstance(a, (torch.Tensor, type(None))) for a in args):
        return None
    return _linear_shape(*args)


def _linear_module_shape(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return _linear_shape(x, module.weight, module.bias)


def _adaptive_avg_pool(spatial: int):
    """F.adaptive_avg_pool{1,2,3}d's shape with the real kernel's checks (its meta kernel is a
    decomposition through ``mean``, ~1.3 ms a call, and every squeeze-excitation block has one)."""

    def shape(input: torch.Tensor, output_size) -> Optional[torch.Tensor]:
        if not isinstance(input, torch.Tensor):
            return None
        sizes = (output_size,) * spatial if isinstance(output_size, int) else tuple(output_size)
        if input.dim() not in (spatial + 1, spatial + 2) or len(sizes) != spatial or not input.is_floating_point():
            raise RuntimeError(f"adaptive_avg_pool{spatial}d to {output_size} on a {input.dtype} input of shape "
                               f"{tuple(input.shape)}")
        if any(s == 0 for s in input.shape[-spatial:]) or any(s is not None and s < 0 for s in sizes):
            raise RuntimeError(f"adaptive_avg_pool{spatial}d of an input of shape {tuple(input.shape)}")
        kept = input.shape[-spatial:]
        out = tuple(k if s is None else s for s, k in zip(sizes, kept))
        return torch.empty((*input.shape[:-spatial], *out), dtype=input.dtype, device="meta")
    return shape


def _cat_shape(tensors, dim: int = 0, **unsupported) -> Optional[torch.Tensor]:
    """torch.cat's shape with the real kernel's checks (its meta kernel is a Python reference: 3.5 ms for
    300 inputs, ten times this).  None: an unusual mix (dtypes to promote, legacy empty 1-D tensors,
    non-contiguous layouts, tensors off the meta device) the kernel decides."""
    if unsupported or not isinstance(tensors, (list, tuple)) or not tensors or not isinstance(dim, int):
        return None
    first = tensors[0]
    if not isinstance(first, torch.Tensor) or first.dim() == 0:
        return None
    rank, dtype = first.dim(), first.dtype
    axis = dim + rank if dim < 0 else dim
    if not 0 <= axis < rank:
        raise IndexError(f"cat along dim {dim} of {rank}-D tensors")
    shapes = []
    for t in tensors:  # a deep DenseNet concatenates hundreds: the cheapest reads only
        if type(t) is not torch.Tensor or t.dtype != dtype or not t.is_meta or not t.is_contiguous():
            return None
        shapes.append(t.shape)
    if any(len(shape) != rank for shape in shapes):
        return None
    sizes = np.array(shapes, dtype=np.int64)
    mismatched = (np.delete(sizes, axis, axis=1) != np.delete(sizes[0], axis)).any(axis=1)
    if mismatched.any():
        bad = tuple(shapes[int(np.argmax(mismatched))])
        raise RuntimeError(f"cat along dim {dim} of tensors of shapes {tuple(first.shape)} and {bad}")
    out = list(first.shape)
    out[axis] = int(sizes[:, axis].sum())
    return torch.empty(out, dtype=dtype, device="meta")


def _adaptive_avg_pool_module(spatial: int):
    pool = _adaptive_avg_pool(spatial)
    return lambda module, x: pool(x, module.output_size)


def _same_shape(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if not x.is_floating_point():
        raise RuntimeError(f"{type(module).__name__} on a {x.dtype} tensor")
    return _empty_meta(x)


# Exact module types whose output shape is computed here, with the real kernel's
# checks (all but Linear and adaptive pooling keep the input's shape and dtype).  Their meta kernels
# are Python decompositions (prims), slower than the rest of the graph.
_SHAPE_ONLY = {
    **dict.fromkeys((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d), _batch_norm_shape),
    nn.LayerNorm: _layer_norm_shape,
    nn.Linear: _linear_module_shape,
    nn.AdaptiveAvgPool1d: _adaptive_avg_pool_module(1), nn.AdaptiveAvgPool2d: _adaptive_avg_pool_module(2),
    nn.AdaptiveAvgPool3d: _adaptive_avg_pool_module(3),
    **dict.fromkeys((nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.Sigmoid,
                     nn.Tanh, nn.ELU, nn.Mish, nn.Hardtanh, nn.Dropout, nn.Identity), _same_shape),
}

# Elementwise functions and methods: when every tensor operand has one shape, dtype
# and layout (and the rest are plain numbers or flags) the result is shaped like
# them.  Their meta kernels are Python references costing ~1 ms a call, more than
# a convolution; the binary ones also broadcast two floating operands of one
# dtype (layer scales, biases); other operand mixes (promotion) run the kernel.
_ELEMENTWISE = frozenset((
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub, operator.imul,
    operator.itruediv, torch.add, torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum,
    torch.relu, torch.sigmoid, torch.tanh, F.relu, F.relu6, F.leaky_relu, F.hardswish, F.hardsigmoid, F.silu,
    F.gelu, F.hardtanh, F.dropout,
    "add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_", "relu", "relu_", "sigmoid", "sigmoid_", "tanh"))


_BROADCASTING = frozenset((
    operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul, torch.div,
    torch.maximum, torch.minimum, "add", "sub", "mul", "div"))  # not in place: those keep the first shape


def _broadcast_operands(args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
    """The result of a binary op on two floating tensors of one dtype and device (plain numbers aside)."""
    tensors = []
    for value in itertools.chain(args, kwargs.values()):
        if isinstance(value, torch.Tensor):
            tensors.append(value)
        elif not isinstance(value, (int, float, bool, str, type(None))):
            return None
    if len(tensors) != 2:
        return None
    a, b = tensors
    if not a.is_floating_point() or a.dtype != b.dtype or a.device != b.device:
        return None
    return torch.empty(torch.broadcast_shapes(a.shape, b.shape), dtype=a.dtype, device="meta")


def _layer_norm_call(input: torch.Tensor, normalized_shape, weight: Optional[torch.Tensor] = None,
                     bias: Optional[torch.Tensor] = None, eps: float = 1e-5) -> Optional[torch.Tensor]:
    """F.layer_norm's shape with the real kernel's checks (its meta kernel is a decomposition, ~3 ms a call)."""
    if not isinstance(input, torch.Tensor):
        return None
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if not input.is_floating_point() or tuple(input.shape[input.dim() - len(shape):]) != shape:
        raise RuntimeError(f"layer_norm over {shape} on a {input.dtype} input of shape {tuple(input.shape)}")
    for name, tensor in (("weight", weight), ("bias", bias)):
        if tensor is not None and tuple(tensor.shape) != shape:
            raise RuntimeError(f"layer_norm {name} of shape {tuple(tensor.shape)}, normalized_shape {shape}")
    return torch.empty(input.shape, dtype=input.dtype, device="meta")


def _alike_operands(args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
    """The first tensor operand if all tensor operands match it and nothing else is a tensor-like value."""
    first = None
    for value in itertools.chain(args, kwargs.values()):
        if isinstance(value, torch.Tensor):
            if first is None:
                if not value.is_floating_point():
                    return None
                first = value
            elif (value.shape != first.shape or value.dtype != first.dtype or value.stride() != first.stride()
                  or value.device != first.device):
                return None
        elif not isinstance(value, (int, float, bool, str, type(None))):
            return None
    return first


# Functions whose result shape is computed here, with the real kernel's checks; each
# returns None for call forms it does not cover, and the kernel runs instead.
_FUNCTION_SHAPES = {
    **dict.fromkeys((F.linear, torch._C._nn.linear), _linear_call),
    F.layer_norm: _layer_norm_call,
    **dict.fromkeys((torch.cat, torch.concat, torch.concatenate), _cat_shape),
    F.adaptive_avg_pool1d: _adaptive_avg_pool(1), F.adaptive_avg_pool2d: _adaptive_avg_pool(2),
    F.adaptive_avg_pool3d: _adaptive_avg_pool(3),
}


def _elementwise_result(target, args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
    """The result of an elementwise or broadcasting op from its operands' shapes, or None (the kernel decides)."""
    if target in _ELEMENTWISE and (first := _alike_operands(args, kwargs)) is not None:
        return _empty_meta(first)
    if target in _BROADCASTING:
        return _broadcast_operands(args, kwargs)
    return None


def meta_module_call(module: nn.Module, forward, args: tuple, kwargs: dict):
    """The result of a module call on meta operands (its parameters must be meta too: ``meta_tensors``)."""
    shape_only = _SHAPE_ONLY.get(type(module))
    if shape_only is not None and not kwargs and len(args) == 1 and isinstance(args[0], torch.Tensor):
        return shape_only(module, args[0])
    with torch.device("meta"):
        return forward(*args, **kwargs)


def meta_function_call(target, args: tuple, kwargs: dict):
    """The result of a function call on meta operands, through a shape function where one is known."""
    shape = _FUNCTION_SHAPES.get(target)
    if shape is not None and (result := shape(*args, **kwargs)) is not None:
        return result
    if (result := _elementwise_result(target, args, kwargs)) is not None:
        return result
    with torch.device("meta"):
        return target(*args, **kwargs)


def meta_method_call(target: str, args: tuple, kwargs: dict):
    """The result of ``args[0].target(*args[1:], **kwargs)`` on meta operands."""
    if (result := _elementwise_result(target, args, kwargs)) is not None:
        return result
    with torch.device("meta"):
        return getattr(args[0], target)(*args[1:], **kwargs)


class _MetaInterpreter(_RecordingInterpreter):
    """Plain tensor attributes go to meta too; some modules get a shape function instead of a forward.

    Only the real calls run under ``torch.device("meta")`` (factories inside a forward
    must make meta tensors): under that mode every tensor attribute read, a shape
    function's whole work, costs ~16x more.
    """

    def fetch_attr(self, target: str):
        return to_meta(super().fetch_attr(target))

    def call_module(self, target, args, kwargs):
        module = self.fetch_attr(target)
        return meta_module_call(module, module, args, kwargs)

    def call_function(self, target, args, kwargs):
        return meta_function_call(target, args, kwargs)

    def call_method(self, target, args, kwargs):
        return meta_method_call(target, args, kwargs)


@contextlib.contextmanager
def meta_tensors(root: nn.Module):
    """Swap every parameter and buffer under ``root`` for a meta copy while the block runs (tied stay tied)."""
    saved = [(store, name, tensor) for module in root.modules() for store in (module._parameters, module._buffers)
             for name, tensor in store.items() if tensor is not None]
    copies: dict[int, torch.Tensor] = {}
    try:
        for store, name, tensor in saved:
            if id(tensor) not in copies:
                meta = _empty_meta(tensor)
                copies[id(tensor)] = nn.Parameter(meta, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else meta
            store[name] = copies[id(tensor)]
        yield
    finally:
        for store, name, tensor in saved:
            store[name] = tensor


def _failing_node(gm: fx.GraphModule, exc: BaseException) -> str:
    for node in gm.graph.nodes:
        if "val" not in node.meta and node.op != "output":
            where = f"module '{node.target}'" if node.op == "call_module" else f"node '{node.name}' ({node.target})"
            return where
    return "the graph"


def propagate_shapes(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor]) -> None:
    """Fill ``node.meta["val"]``; meta tensors first, fake or real tensors only where those fail.

    Runs in eval mode (a BatchNorm in training mode refuses a batch of one
    1x1 feature map, and shapes do not depend on the mode), then restores every
    module's mode, and every buffer if a fallback ran on the real ones:
    analysing a model must not change it.
    """
    with eval_mode(gm):
        if not _propagate_meta(gm, example_inputs):
            saved = {name: buffer.clone() for name, buffer in gm.named_buffers()}
            try:
                _propagate_fallback(gm, example_inputs)
            finally:
                with torch.no_grad():
                    for name, buffer in gm.named_buffers():
                        if name in saved:
                            buffer.copy_(saved[name])


def _clear(gm: fx.GraphModule) -> None:
    for node in gm.graph.nodes:
        node.meta.pop("val", None)


def _propagate_meta(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor]) -> bool:
    """True when the whole graph ran on meta tensors (nothing of the module's own is touched)."""
    _clear(gm)
    try:
        with torch.no_grad(), meta_tensors(gm):
            _MetaInterpreter(gm).run(*to_meta(list(example_inputs)))
        return True
    except Exception:  # noqa: BLE001 - an op without a meta kernel, or a leaf reading values: the fallbacks decide
        return False


def _propagate_fallback(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor]) -> None:
    _clear(gm)
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    fake = [mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in example_inputs]
    try:
        with torch.no_grad():
            FakeTensorProp(gm, mode).propagate(*fake)
        for node in gm.graph.nodes:
            if "val" in node.meta:
                node.meta["val"] = to_meta(node.meta["val"])
        return
    except Exception as fake_error:  # noqa: BLE001 - retried for real below, reported if that fails too
        data_dependent = "data-dependent" in str(fake_error).lower() or "DataDependent" in type(fake_error).__name__
        if not data_dependent:
            shapes = ", ".join(str(tuple(t.shape)) for t in example_inputs if isinstance(t, torch.Tensor))
            failure = f"{_failing_node(gm, fake_error)} failed with: {str(fake_error).splitlines()[0]}"
            raise ShapePropagationError(f"the model does not run on example inputs of shape {shapes}: {failure}",
                                        failure) from fake_error
    warnings.warn("falf_fx: a leaf module reads tensor values; shapes were propagated on real tensors",
                  stacklevel=3)
    _clear(gm)
    try:
        with torch.no_grad():
            _RecordingInterpreter(gm).run(*example_inputs)
    except Exception as error:
        raise ShapePropagationError(f"{_failing_node(gm, error)} failed on the example inputs: "
                                    f"{str(error).splitlines()[0]}") from error
