"""Capture in parts: a model whose own forward cannot be traced is captured as the submodules it calls.

A detector's forward sorts boxes by score and runs non-maximum suppression: Python
on tensor data, which no symbolic trace can follow.  Its backbone, FPN and heads
trace well.  So when a module's own code stops the trace, the example inputs are
run once, for real (eval mode, no gradients, nothing of the model kept), to record
what each of its direct submodules is called with; each submodule with parameters
is then captured with those inputs, in parts again if need be.  Every part is
pruned inside, and its inputs and outputs (the interface with the code around it)
keep their channels, so the user's own object, its parts replaced by slim
GraphModules under the same names, still runs as before.  A slim part (and a Hugging
Face or Ultralytics model captured whole) also keeps its class's interface:
:func:`adopt_interface`.
"""
from __future__ import annotations

import copy
import inspect
import warnings
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import fx, nn

from falf_fx.passes.analysis import AUTO_LEAVES_KEY
from falf_fx.passes.modes import attributes_kept, eval_mode

from .capture import LeafSpec, as_input_tuple, trace
from .errors import TraceError

__all__ = ["ADOPTED", "Part", "adopt_interface", "capture_parts"]


@dataclass(frozen=True)
class Part:
    """One traced piece of the model: its qualified name ("" for the whole model) and its example inputs."""

    name: str
    graph_module: fx.GraphModule
    example_inputs: tuple


_MODULE_STATE = frozenset({"_parameters", "_buffers", "_modules", "training", "_non_persistent_buffers_set"})


ADOPTED = "_falf_fx_adopted"  # a class attribute: the class was made by adopt_interface (saved as plain modules)


def _registry_property(key: str) -> property:
    """Reads a parameter, buffer or submodule, which a class attribute of the same name would hide."""
    def read(self: nn.Module) -> Any:
        for store in (self._parameters, self._buffers, self._modules):
            if key in store:
                return store[key]
        raise AttributeError(key)
    return property(read)


def _deepcopy_adopted(self: fx.GraphModule, memo: dict) -> fx.GraphModule:
    """Deep copy of a GraphModule that adopted a class: GraphModule's own copy runs on the GraphModule alone
    (its ``__init__`` would call the adopted class's), then the copy adopts the class and the attributes."""
    cls = type(self)
    self.__class__ = cls.__bases__[0]
    try:
        res = copy.deepcopy(self, memo)
    finally:
        self.__class__ = cls
    namespace = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    res.__class__ = type(cls.__name__, (type(res), *cls.__bases__[1:]), namespace)
    for key, value in vars(self).items():
        if key not in vars(res):
            setattr(res, key, copy.deepcopy(value, memo))
    return res


def _adopt(module: nn.Module, original: nn.Module, bases: tuple[type, ...]) -> None:
    cls = type(original)
    namespace: dict[str, Any] = {"__module__": cls.__module__, ADOPTED: True}
    if isinstance(module, fx.GraphModule):
        namespace["__deepcopy__"] = _deepcopy_adopted
    for key in (*module._parameters, *module._buffers, *module._modules):
        if inspect.getattr_static(cls, key, None) is not None:  # YOLO's Detect has `strides = torch.empty(0)`
            namespace[key] = _registry_property(key)
    module.__class__ = type(cls.__name__, bases, namespace)
    held = {*vars(module), *module._parameters, *module._buffers, *module._modules}  # the slim graph's own
    for key, value in vars(original).items():
        if key not in held and key not in _MODULE_STATE and not key.startswith(("_forward", "_backward")) \
                and not isinstance(value, nn.Module):
            setattr(module, key, value.clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value))


def adopt_interface(slim: fx.GraphModule, original: nn.Module) -> fx.GraphModule:
    """``slim`` takes the place of ``original`` with its classes' other methods and their plain attributes.

    The code around a part calls more than its forward (RetinaNet calls
    ``head.compute_loss``, which calls ``head.classification_head.compute_loss``,
    reading ``self.num_classes``): the slim GraphModule becomes an instance of a class
    deriving from both its own and the original's (``isinstance`` still holds), the
    bare containers fx made for the submodules it traced through get their original
    classes back, and each gets copies of the original's attributes that are not
    modules (nor already the slim graph's own parameters, buffers or submodules).
    The forward stays the slim graph's; the leaves are the slim layers.  Attributes are
    copies: a slim model's config is its own, the user's stays as it was.
    """
    if isinstance(original, fx.GraphModule) or type(original) is nn.Module:
        return slim
    _adopt(slim, original, (type(slim), type(original)))
    for name, module in slim.named_modules():
        if name and type(module) is nn.Module:
            try:
                counterpart = original.get_submodule(name)
            except AttributeError:
                continue
            if type(counterpart) is not nn.Module:
                _adopt(module, counterpart, (type(counterpart),))
    return slim


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _positional(module: nn.Module, args: tuple, kwargs: dict) -> Optional[tuple]:
    """A call's arguments as positional ones (a part is traced with positional example inputs), or None."""
    if not kwargs:
        return args
    try:
        signature = inspect.signature(module.forward)
        bound = signature.bind(*args, **kwargs)
    except (TypeError, ValueError):
        return None
    parameters = list(signature.parameters.values())
    given = [p for p in parameters if p.name in bound.arguments]
    if any(p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in given):
        return None
    last = max(parameters.index(p) for p in given)
    values = []
    for p in parameters[:last + 1]:
        if p.name in bound.arguments:
            values.append(bound.arguments[p.name])
        elif p.default is inspect.Parameter.empty:
            return None
        else:
            values.append(p.default)
    return tuple(values)


def record_calls(model: nn.Module, inputs: tuple, names: Sequence[str]) -> dict[str, tuple]:
    """The positional inputs each named submodule gets on its first call when ``model`` runs on ``inputs``.

    Runs for real in eval mode without gradients; attributes, buffers and modes come back as they were.
    """
    calls: dict[str, tuple] = {}
    handles = []
    for name in names:
        module = model.get_submodule(name)

        def hook(module: nn.Module, args: tuple, kwargs: dict, name: str = name) -> None:
            if name not in calls:
                calls[name] = _positional(module, args, kwargs)
        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    buffers = {key: b.clone() for key, b in model.named_buffers()}
    try:
        with torch.no_grad(), eval_mode(model), attributes_kept(model):
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for key, b in model.named_buffers():
                if key in buffers:
                    b.copy_(buffers[key])
    return {name: args for name, args in calls.items() if args is not None}


def _parts_inside_leaves(model: nn.Module, inputs: tuple, gm: fx.GraphModule, leaf_modules: Sequence[LeafSpec],
                         prefix: str) -> list[Part]:
    """The parts inside the submodules the trace had to keep as leaves (their interface stays frozen)."""
    leaves = [name for name in gm.meta.get(AUTO_LEAVES_KEY, {}) if _has_parameters(model.get_submodule(name))]
    if not leaves:
        return []
    calls = record_calls(model, inputs, leaves)
    parts: list[Part] = []
    for name in leaves:
        if name in calls:
            parts.extend(_captured_or_kept(model.get_submodule(name), calls[name], leaf_modules,
                                           f"{prefix}.{name}" if prefix else name))
    return parts


def _captured_or_kept(module: nn.Module, inputs: tuple, leaf_modules: Sequence[LeafSpec], qualified: str) -> list[Part]:
    try:
        return capture_parts(module, inputs, leaf_modules=leaf_modules, prefix=qualified)
    except TraceError as error:
        warnings.warn(f"falf_fx: '{qualified}' cannot be traced ({str(error).splitlines()[0]}); "
                      "it is kept as it is and its channels are frozen", stacklevel=3)
        return []


def capture_parts(model: nn.Module, example_inputs: Any, *, leaf_modules: Sequence[LeafSpec] = (),
                  prefix: str = "") -> list[Part]:
    """The model as one traced part when its forward traces, else its submodules' parts, recursively.

    A traced model's parts come first, then the parts inside the submodules its trace
    kept as leaves.  Submodules without parameters are left as they are (nothing to
    prune); a submodule the example never calls is left too, with a warning.
    """
    inputs = as_input_tuple(example_inputs)
    try:
        with warnings.catch_warnings(record=True) as said:  # a whole trace that fails says nothing of its leaves
            warnings.simplefilter("always")
            gm = trace(model, inputs, leaf_modules=leaf_modules)
        for warning in said:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        return [Part(prefix, gm, inputs), *_parts_inside_leaves(model, inputs, gm, leaf_modules, prefix)]
    except TraceError as error:
        children = [(name, child) for name, child in model.named_children() if _has_parameters(child)]
        if not children:
            raise
        reason = str(error).splitlines()[0]
    calls = record_calls(model, inputs, [name for name, _ in children])
    parts: list[Part] = []
    for name, child in children:
        qualified = f"{prefix}.{name}" if prefix else name
        if name not in calls:
            warnings.warn(f"falf_fx: '{qualified}' is not called with positional inputs by the example; "
                          "it is kept as it is", stacklevel=2)
            continue
        parts.extend(_captured_or_kept(child, calls[name], leaf_modules, qualified))
    if not parts:
        raise TraceError(f"{reason}\n  and none of its submodules can be traced either")
    return parts


class PartedModel:
    """What compress cuts: a model traced whole (one part, named ""), or the user's own object whose traced
    parts are GraphModules under their names (a detector: backbone, RPN head, box head...).

    ``host`` is the whole model; a part is looked up in it by name, so a deep copy
    of the host carries its parts along.
    """

    def __init__(self, host: nn.Module, examples: dict[str, tuple], originals: dict[str, nn.Module]) -> None:
        self.host, self.examples, self.originals = host, examples, originals

    @classmethod
    def capture(cls, model: nn.Module, example_inputs: Any) -> "PartedModel":
        """A copy of ``model`` captured whole, or in parts; ``model`` itself is left as it was."""
        host = copy.deepcopy(model)
        parts = capture_parts(host, example_inputs)
        if parts[0].name == "":  # traced whole (parts inside its leaves stay frozen, as in a plain trace)
            from .library_models import is_library_model

            originals = {"": host} if is_library_model(model) else {}  # a Hugging Face or Ultralytics class
            gm = adopt_interface(parts[0].graph_module, host) if originals else parts[0].graph_module
            return cls(gm, {"": parts[0].example_inputs}, originals)
        originals = {part.name: host.get_submodule(part.name) for part in parts}
        for part in parts:
            host.set_submodule(part.name, adopt_interface(part.graph_module, originals[part.name]))
        return cls(host, {part.name: part.example_inputs for part in parts}, originals)

    @property
    def whole(self) -> bool:
        return "" in self.examples

    @property
    def names(self) -> list[str]:
        return list(self.examples)

    def part(self, name: str) -> fx.GraphModule:
        return self.host if name == "" else self.host.get_submodule(name)

    def with_parts(self, slim: dict[str, fx.GraphModule]) -> "PartedModel":
        """A new model: a copy of this one with the given parts replaced (kept with their class's interface)."""
        if self.whole:
            module = slim.get("", self.host)
            if "" in self.originals and module is not self.host:
                module = adopt_interface(module, self.originals[""])
            return PartedModel(module, self.examples, self.originals)
        host = copy.deepcopy(self.host)
        for name, module in slim.items():
            host.set_submodule(name, adopt_interface(module, self.originals[name]))
        return PartedModel(host, self.examples, self.originals)

    def copy(self) -> "PartedModel":
        """An independent copy (its own host and parts), to train without touching this one."""
        return PartedModel(copy.deepcopy(self.host), self.examples, self.originals)

    def rest_state(self) -> dict[str, torch.Tensor]:
        """The host's tensors outside every part (a parted model's; nothing for one traced whole)."""
        if self.whole:
            return {}
        return {key: value for key, value in self.host.state_dict().items()
                if not any(key.startswith(name + ".") for name in self.names)}
