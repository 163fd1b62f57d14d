"""Capture: torch.fx tracing with automatic leaves, then shapes on meta tensors."""
from __future__ import annotations

import copy
import traceback
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, Optional, Union

import torch
from torch import fx, nn
from torch.fx.proxy import ParameterProxy

from falf_fx.passes.analysis import AUTO_LEAVES_KEY
from falf_fx.passes.modes import attributes_kept
from falf_fx.passes.normalize_args import calls_to_normalize, normalize_arguments, normalize_graph
from falf_fx.passes.shape_args import flatten_shape_arguments
from falf_fx.passes.shape_prop import propagate_shapes

from .errors import FalfTypeError, TraceError
from . import guarded_trace
from .guarded_trace import GuardedTracer

__all__ = ["trace", "as_input_tuple"]

LeafSpec = Union[str, type, nn.Module]


def as_input_tuple(example_inputs: Any) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (list, tuple)):
        return tuple(example_inputs)
    raise FalfTypeError("example_inputs must be a tensor or a tuple of tensors, "
                    f"not {type(example_inputs).__name__}")


class _LeafTracer(GuardedTracer):
    """A tracer that knows extra leaves and remembers which module it was inside when it failed."""

    def __init__(self, example_inputs: tuple = (), fixed: Optional[dict[str, Any]] = None,
                 leaves: frozenset[str] = frozenset(), leaf_types: tuple[type, ...] = (),
                 leaf_ids: frozenset[int] = frozenset()) -> None:  # defaults: torch.load re-creates it bare
        super().__init__(example_inputs, fixed)
        self.leaves, self.leaf_types, self.leaf_ids = leaves, leaf_types, leaf_ids
        self.stack: list[str] = []
        self.failed_in: Optional[str] = None

    def _name_of(self, value: torch.Tensor, buffers: bool) -> Optional[str]:
        """The name fx's linear search finds for a parameter (or, with ``buffers``, a buffer) of the root.

        fx scans every named parameter each time traced code reads one, which is
        quadratic on models that read many (MaxViT); a table keyed by identity
        finds the same first name.  None: not found, fx's own search decides.
        """
        if getattr(self, "_names_root", None) is not self.root:
            self._names_root = self.root
            self._param_names = {id(p): (n, p) for n, p in reversed(list(self.root.named_parameters()))}
            self._buffer_names = {id(b): (n, b) for n, b in reversed(list(self.root.named_buffers()))}
        tables = [self._param_names] if isinstance(value, nn.Parameter) else []
        tables += [self._buffer_names] if buffers else []
        for table in tables:
            name, tensor = table.get(id(value), (None, None))
            if tensor is value:
                return name
        return None

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if self._evaluating:
            return attr_val
        name = self._name_of(attr_val, self.proxy_buffer_attributes) if isinstance(attr_val, torch.Tensor) else None
        if name is None:
            return super().getattr(attr, attr_val, parameter_proxy_cache)
        if name not in parameter_proxy_cache:
            factory = (lambda node: ParameterProxy(self, node, name, attr_val)) if self.param_shapes_constant else None
            parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {}, proxy_factory_fn=factory)
        return parameter_proxy_cache[name]

    def create_arg(self, a: Any) -> Any:
        if isinstance(a, fx.Proxy):  # fx returns this too, after five slower checks (a DenseNet cat has 10^2 inputs)
            return a.node
        name = self._name_of(a, not isinstance(a, nn.Parameter)) if isinstance(a, torch.Tensor) else None
        if name is not None:
            return self.create_node("get_attr", name, (), {})
        return super().create_arg(a)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self.leaves or id(m) in self.leaf_ids or isinstance(m, self.leaf_types):
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        if self._evaluating:  # a leaf's own submodules, run for its meta value
            return forward(*args, **kwargs)
        qualname = self.path_of_module(m)
        self.stack.append(qualname)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = qualname
            raise
        finally:
            self.stack.pop()


_TRACER_FILE = guarded_trace.__file__


def _user_frame(error: BaseException) -> str:
    """The last source line of the user's code in the traceback (not torch's or the tracer's own)."""
    frames = traceback.extract_tb(error.__traceback__)
    user = [f for f in frames if "/torch/" not in f.filename.replace("\\", "/") and f.filename != _TRACER_FILE]
    frame = (user or frames)[-1] if frames else None
    if frame is None:
        return "unknown location"
    return f"{frame.filename}:{frame.lineno}: {(frame.line or '').strip()}"


def _split_leaves(leaf_modules: Iterable[LeafSpec]) -> tuple[set[str], tuple[type, ...], set[int]]:
    names, types, ids = set(), [], set()
    for leaf in leaf_modules:
        if isinstance(leaf, str):
            names.add(leaf)
        elif isinstance(leaf, type):
            types.append(leaf)
        elif isinstance(leaf, nn.Module):
            ids.add(id(leaf))
        else:
            raise FalfTypeError(f"leaf_modules entries are module names, classes or instances, not {leaf!r}")
    return names, tuple(types), ids


def _symbolic_trace(model: nn.Module, inputs: tuple, leaf_modules: Iterable[LeafSpec],
                    concrete_args: Optional[dict[str, Any]]) -> fx.GraphModule:
    names, types, ids = _split_leaves(leaf_modules)
    auto: dict[str, str] = {}
    while True:
        tracer = _LeafTracer(inputs, concrete_args, names | set(auto), types, ids)
        try:
            graph = tracer.trace(model)
            break
        except Exception as error:  # noqa: BLE001 - turned into a leaf or a TraceError below
            where = tracer.failed_in
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            if where is None or where == "" or where in auto:
                raise TraceError(
                    f"torch.fx cannot trace {type(model).__name__} at {_user_frame(error)}\n  {message}\n"
                    "  fix: pass leaf_modules=[...] naming the submodule that does this, or concrete_args={...} "
                    "for arguments that steer Python control flow") from error
            auto[where] = message
            warnings.warn(f"falf_fx: submodule '{where}' cannot be traced ({message}; {_user_frame(error)}); "
                          "it is kept as a leaf and its channels are frozen", stacklevel=3)
    normalize_graph(graph, tracer.root)  # one spelling per op: both halves of every rule read the same arguments
    name = model.__class__.__name__
    gm = fx.GraphModule(tracer.root, graph, name)
    gm.meta[AUTO_LEAVES_KEY] = auto
    return gm


def trace(model: nn.Module, example_inputs: Any, *, leaf_modules: Sequence[LeafSpec] = (),
          concrete_args: Optional[dict[str, Any]] = None) -> fx.GraphModule:
    """Trace ``model`` with torch.fx; each node's ``meta["val"]`` is a meta tensor shaped like its output.

    A submodule fx cannot trace becomes a leaf (with a warning) and its channels
    are frozen; if the top level itself cannot be traced, TraceError says where
    and how to fix it.  Calls of ops with a rule are written in one spelling
    (``falf_fx.passes.normalize_args``).  The model is not modified.
    """
    if not isinstance(model, nn.Module):
        raise FalfTypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    with attributes_kept(model):
        return _trace(model, as_input_tuple(example_inputs), leaf_modules, concrete_args)


def _trace(model: nn.Module, inputs: tuple, leaf_modules: Sequence[LeafSpec],
           concrete_args: Optional[dict[str, Any]]) -> fx.GraphModule:
    if isinstance(model, fx.GraphModule) and not leaf_modules and concrete_args is None:
        gm = copy.deepcopy(model) if calls_to_normalize(model.graph, model) else model  # the caller's stays as written
        gm.meta.setdefault(AUTO_LEAVES_KEY, {})
        normalize_arguments(gm)
    else:
        gm = _symbolic_trace(model, inputs, leaf_modules, concrete_args)
    gm.train(model.training)
    propagate_shapes(gm, inputs)
    flatten_shape_arguments(gm)
    return gm
