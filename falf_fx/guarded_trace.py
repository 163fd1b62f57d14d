"""A torch.fx tracer whose proxies carry meta values, so shape-dependent Python resolves while tracing.

Plain ``fx.Tracer`` fails on ``if x.shape[-1] % 2``, ``len(x)``, ``int(x.size(1))``,
``for part in x.chunk(2, 1)`` and ``range(x.dim())``: a proxy has no value.  Here
every node is also evaluated on meta tensors (the example inputs' shapes, no data),
so such Python gets the example's value, and a guard (``torch._assert``) records
the value in the graph: an input that would take another path fails loudly
instead of running the wrong code.  The graph stays module-level (leaves are
``call_module`` nodes under their own names), unlike ``torch.export`` or
``make_fx``, whose aten graphs lose the modules that pruning slims and trains.

A guard on a channel count freezes those channels in the analysis, as any other
use of a count as a value does.  Values that need tensor data (``if mask.any()``)
stay unknown and fail as in plain fx, naming the submodule.
"""
from __future__ import annotations

import inspect
import operator
import traceback
from collections.abc import Iterator
from dataclasses import is_dataclass
from typing import Any, Callable, Optional

import torch
from torch import fx, nn

from falf_fx.passes.shape_prop import meta_function_call, meta_method_call, meta_module_call, meta_tensors, to_meta

__all__ = ["GuardedTracer"]

_UNKNOWN = object()


class _ValueProxy(fx.Proxy):
    """A proxy that asks its tracer for a concrete value where Python demands one."""

    def __getattr__(self, name: str) -> "_ValueAttribute":
        return _ValueAttribute(self, name)

    def __len__(self) -> int:
        return self.tracer.concrete_length(self)

    def __index__(self) -> int:
        return self.tracer.concrete(self, operator.index)

    def __int__(self) -> int:
        return self.tracer.concrete(self, int)

    def __float__(self) -> float:
        return self.tracer.concrete(self, float)


class _ValueAttribute(fx.proxy.Attribute, _ValueProxy):
    """``proxy.name``: a node only once it is used (fx's Attribute), with a value like any proxy."""


def _user_line() -> str:
    """Where in the model's code (not torch's or ours) a value was asked for."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = frame.filename.replace("\\", "/")
        if "/torch/" not in path and "/falf_fx/" not in path:
            return f"{frame.filename}:{frame.lineno}"
    return "the model"


class GuardedTracer(fx.Tracer):
    """Traces ``root`` called with the example inputs positionally, the other arguments at their defaults.

    ``fixed`` (the caller's ``concrete_args``) are passed as keywords; neither they
    nor the defaults become placeholders, so ``return_dict=None``-style switches and
    ``*args``/``**kwargs`` wrappers (decorators) resolve to what the example call does.
    """

    def __init__(self, example_inputs: tuple = (), fixed: Optional[dict[str, Any]] = None) -> None:
        super().__init__()
        self.example_values = tuple(to_meta(list(example_inputs)))
        self.fixed = dict(fixed or {})
        self.values: dict[fx.Node, Any] = {}
        self.proxy_buffer_attributes = True  # buffers as get_attr nodes: ops on them with sizes stay symbolic
        self._evaluating = False
        self._leaf_forward: Optional[Callable] = None

    # -- inputs -------------------------------------------------------------------------------
    def create_args_for_root(self, root_fn: Callable, is_module: bool, concrete_args=None) -> tuple[Callable, list]:
        if not self.example_values:  # re-created bare (torch.load of a pickled GraphModule retraces its code)
            return super().create_args_for_root(root_fn, is_module, concrete_args)
        signature = inspect.signature(inspect.unwrap(root_fn))
        parameters = list(signature.parameters.values())[1 if is_module else 0:]
        placeholders = []
        for i in range(len(self.example_values)):
            named = i < len(parameters) and parameters[i].kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                                 inspect.Parameter.POSITIONAL_OR_KEYWORD)
            annotation = parameters[i].annotation if named else inspect.Parameter.empty
            placeholders.append(self.create_proxy(
                "placeholder", parameters[i].name if named else f"input_{i}", (), {},
                type_expr=None if annotation is inspect.Parameter.empty else annotation))
        fixed = self.fixed

        def call_with_examples(*args: Any) -> Any:
            return root_fn(*args, **fixed)

        call_with_examples.__wrapped__ = root_fn  # fx reads the return annotation through it, as for the forward
        return call_with_examples, ([self.root] if is_module else []) + placeholders

    # -- values -------------------------------------------------------------------------------
    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ValueProxy(node, self)

    def create_node(self, kind: str, target, args, kwargs, name=None, type_expr=None) -> fx.Node:
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        value = self._evaluate(kind, target, node)
        if value is not _UNKNOWN:
            self.values[node] = value
        return node

    def _value_of(self, argument: Any) -> Any:
        """The value behind a node argument; raises LookupError when one of its nodes has none."""
        def value(a: Any) -> Any:
            if isinstance(a, fx.Node):
                if a not in self.values:
                    raise LookupError(a.name)
                return self.values[a]
            return a
        return fx.node.map_aggregate(argument, value)

    def _evaluate(self, kind: str, target, node: fx.Node) -> Any:
        """The node's value: meta tensors, or real ones for a computation on the model's own tensors alone.

        Parameters and buffers keep their data (``if self.initialized:`` on a buffer reads
        it), and a call whose tensors all have data runs on them unless it works in place;
        anything that meets an input runs on meta tensors.
        """
        if kind == "placeholder":
            index = sum(1 for n in self.graph.nodes if n.op == "placeholder") - 1
            return self.example_values[index] if index < len(self.example_values) else _UNKNOWN
        if kind == "output":
            return _UNKNOWN
        try:
            args, kwargs = self._value_of(node.args), self._value_of(node.kwargs)
        except LookupError:
            return _UNKNOWN
        self._evaluating = True
        try:
            with torch.no_grad():
                if kind == "get_attr":
                    value: Any = self.root
                    for atom in str(target).split("."):
                        value = getattr(value, atom)
                    return value
                if kind != "call_module" and _on_data(args, kwargs) and not _in_place(target):
                    return (target(*args, **kwargs) if kind == "call_function"
                            else getattr(args[0], target)(*args[1:], **kwargs))
                args, kwargs = to_meta(args), to_meta(kwargs)
                if kind == "call_function":
                    return to_meta(meta_function_call(target, args, kwargs))
                if kind == "call_method":
                    return to_meta(meta_method_call(target, args, kwargs))
                module = self.root.get_submodule(target)
                forward = self._leaf_forward or module
                with meta_tensors(module):
                    return to_meta(meta_module_call(module, forward, args, kwargs))
        except Exception:  # noqa: BLE001 - no meta value (data-dependent op, no meta kernel): unknown, not an error
            return _UNKNOWN
        finally:
            self._evaluating = False

    def known_value(self, proxy: fx.Proxy) -> Any:
        value = self.values.get(proxy.node, _UNKNOWN)
        if value is _UNKNOWN:
            raise fx.proxy.TraceError(f"'{proxy.node.name}' has no value known while tracing (it depends on "
                                      "tensor data or on an op without a meta kernel)")
        return value

    # -- where Python needs a concrete value --------------------------------------------------
    def to_bool(self, obj: fx.Proxy) -> bool:
        value = self.known_value(obj)
        try:
            result = bool(value)
        except RuntimeError as error:  # a meta tensor's truth needs its data
            raise fx.proxy.TraceError(f"control flow on tensor data ('{obj.node.name}'): {error}") from error
        if not _compares_with_none(obj.node):  # `self.shape != shape` with no shape cached yet holds for any input
            self._guard(obj if result else self.create_proxy("call_function", operator.not_, (obj,), {}), result)
        return result

    def concrete(self, obj: fx.Proxy, convert: Callable[[Any], Any]) -> Any:
        value = self.known_value(obj)
        if isinstance(value, torch.Tensor):
            raise fx.proxy.TraceError(f"'{obj.node.name}' is a tensor; its value needs data")
        result = convert(value)
        self._guard(self.create_proxy("call_function", operator.eq, (obj, result), {}), result)
        return result

    def concrete_length(self, obj: fx.Proxy) -> int:
        value = self.known_value(obj)
        length = len(value)
        if isinstance(value, torch.Tensor):  # len(x): its first size, read as a size (not a channel use)
            measured = self.create_proxy("call_method", "size", (obj, 0), {})
        elif isinstance(value, torch.Size) and _is_shape_read(obj.node):  # len(x.shape): the rank
            measured = self.create_proxy("call_method", "dim", (obj.node.args[0],), {})
        else:
            return length  # a tuple an op returned: its length is the op's own (a wrong one fails on indexing)
        self._guard(self.create_proxy("call_function", operator.eq, (measured, length), {}), length)
        return length

    def iter(self, obj: fx.Proxy) -> Iterator:
        return iter([obj[i] for i in range(self.concrete_length(obj))])

    def keys(self, obj: fx.Proxy) -> Any:
        return list(self.known_value(obj).keys())

    def _guard(self, condition: fx.Proxy, value: Any) -> None:
        message = f"falf_fx guard: {_user_line()} was traced with the value {value!r}; this input needs another trace"
        self.create_proxy("call_function", torch._assert, (condition, message), {})

    # -- calls while evaluating: the real modules, no nodes -------------------------------------
    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if self._evaluating:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def call_module(self, m: nn.Module, forward: Callable, args: tuple, kwargs: dict) -> Any:
        if self._evaluating:
            return forward(*args, **kwargs)
        outer, self._leaf_forward = self._leaf_forward, forward
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            self._leaf_forward = outer

    # -- outputs --------------------------------------------------------------------------------
    def create_arg(self, a: Any) -> Any:
        if isinstance(a, dict) and is_dataclass(a) and not isinstance(a, type):
            # Hugging Face's ModelOutput is a dict and a dataclass: fx would keep only a plain dict
            return self.create_node("call_function", type(a), (), {k: self.create_arg(v) for k, v in a.items()})
        return super().create_arg(a)


def _compares_with_none(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in (operator.eq, operator.ne, operator.is_, operator.is_not) \
        and any(a is None for a in node.args)


def _tensors_in(value: Any) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    fx.node.map_aggregate(value, lambda v: found.append(v) if isinstance(v, torch.Tensor) else None)
    return found


def _on_data(args: tuple, kwargs: dict) -> bool:
    """Every tensor among the operands has data (none is a meta tensor standing for an input)."""
    return not any(t.is_meta for t in _tensors_in((args, kwargs)))


_IN_PLACE_OPERATORS = frozenset((operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
                                 operator.imod, operator.ipow, operator.iand, operator.ior, operator.ixor,
                                 operator.setitem))


def _in_place(target) -> bool:
    """Whether a call may write its operands (the model's own tensors must not change while tracing)."""
    if isinstance(target, str):
        return target.endswith("_") and not target.endswith("__")
    return target in _IN_PLACE_OPERATORS or getattr(target, "__name__", "").endswith("_")


def _is_shape_read(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target is getattr and node.args[1:] == ("shape",)) or \
        (node.op == "call_method" and node.target == "size" and len(node.args) == 1 and not node.kwargs)
