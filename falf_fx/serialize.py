"""Save and load a GraphModule as plain data and tensors, so that loading runs no pickled code.

``torch.save(gm)`` pickles the module, and unpickling can run any code the file
names. Here the file holds only strings, numbers, lists, dicts and tensors; it is
read with ``torch.load(weights_only=True)`` and the model is rebuilt from
allowlists: module classes of ``torch.nn`` made from their recorded
hyper-parameters, functions of ``torch``, ``torch.nn.functional``, ``operator``,
``math`` and ``torchvision.ops`` found by dotted name, tensor methods by name.
"""
from __future__ import annotations

import builtins
import importlib
import inspect
import math
import operator
import os
import keyword
import pickle
import re
import types
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional, Union

import torch
from torch import fx, nn

from .errors import FalfTypeError, FalfValueError
from .parts import ADOPTED, adopt_interface

__all__ = ["FORMAT", "PARTS_FORMAT", "from_plain", "load", "load_into", "save", "to_plain"]

FORMAT = "falf_fx.graph/1"
PARTS_FORMAT = "falf_fx.parts/1"  # a model pruned in parts: its slim GraphModules and the rest of its weights
PathLike = Union[str, os.PathLike, BinaryIO]

_ROOT_CLASS = "torch.fx.GraphModule"
_NAMESPACES = ("torch.nn.functional", "torchvision.ops", "torch.linalg", "operator", "builtins", "torch", "math")
_TORCH_PYTHON_FUNCTIONS = frozenset({"_assert", "is_tensor", "sym_float", "sym_int", "sym_ite", "sym_max",
                                     "sym_min", "sym_not", "sym_sqrt", "sym_sum"})
_REFUSED = frozenset({"torch.from_file", "operator.call"})
# Constructor flags a module keeps only as "is this tensor there" under another name.
_DERIVED_FLAGS: dict[type, dict[str, Callable[[nn.Module], Any]]] = {
    nn.MultiheadAttention: {"bias": lambda m: m.in_proj_bias is not None,
                            "add_bias_kv": lambda m: m.bias_k is not None},
}
_TORCH_ENUMS = {"dtype": torch.dtype, "memory_format": torch.memory_format, "layout": torch.layout}
_OWN_STATE = frozenset({"_parameters", "_buffers", "_modules", "_non_persistent_buffers_set", "training"})
_MISSING = object()
_NAME_ATOM = re.compile(r"(?!__)[A-Za-z_][A-Za-z0-9_]*|[0-9]+")
_PLACEHOLDER = re.compile(r"\*{0,2}[A-Za-z_][A-Za-z0-9_]*")


def _namespace(name: str) -> types.ModuleType:
    if name == "torchvision.ops":
        import torchvision.ops
        return torchvision.ops
    return {"torch.nn.functional": torch.nn.functional, "operator": operator, "builtins": builtins,
            "torch": torch, "math": math, "torch.linalg": torch.linalg}[name]


def _allowed(namespace: str, attr: str, obj: Any) -> bool:
    """Whether ``namespace.attr`` may be called by a loaded graph (pure tensor and number functions)."""
    if f"{namespace}.{attr}" in _REFUSED or isinstance(obj, type) or not callable(obj):
        return False
    if namespace == "builtins":
        return attr == "getattr"
    if attr.startswith("_") and not (namespace == "torch" and attr in _TORCH_PYTHON_FUNCTIONS):
        return False
    if isinstance(obj, types.BuiltinFunctionType):
        return not attr.startswith("set_")
    module = getattr(obj, "__module__", "") or ""
    if namespace == "torch":
        return module == "torch.functional" or attr in _TORCH_PYTHON_FUNCTIONS
    if namespace == "torch.nn.functional":
        return module == "torch.nn.functional"
    if namespace == "torch.linalg":
        return False  # its public functions are builtins (above)
    return namespace == "torchvision.ops" and module.startswith("torchvision.ops")


def _public_name(namespace: str, fn: Any) -> Optional[str]:
    """The name under which ``namespace`` exposes ``fn`` (``torch.linalg.vector_norm`` is a builtin named
    ``linalg_vector_norm``)."""
    attr = getattr(fn, "__name__", None)
    space = _namespace(namespace)
    if attr and getattr(space, attr, None) is fn:
        return attr
    if namespace == "torch.linalg":
        return next((name for name, obj in vars(space).items() if obj is fn), None)
    return None


# Hugging Face models return ModelOutput dataclasses; a graph may build one (and nothing else of transformers).
_OUTPUT_CLASSES = ("transformers.", "transformers.utils.generic", "ModelOutput")


def _is_output_class(cls: Any) -> bool:
    prefix, module, name = _OUTPUT_CLASSES
    return isinstance(cls, type) and cls.__module__.startswith(prefix) and \
        any(base.__module__ == module and base.__name__ == name for base in cls.__mro__[1:])


def _function_name(fn: Any, where: str) -> str:
    """The allowlisted dotted name that resolves back to ``fn`` itself."""
    if _is_output_class(fn) and "." not in fn.__qualname__:
        return f"{fn.__module__}.{fn.__qualname__}"
    for namespace in ("torch", "torch.nn.functional", "torch.linalg", "operator", "math", "torchvision.ops",
                      "builtins"):
        if namespace == "torchvision.ops" and "torchvision" not in (getattr(fn, "__module__", "") or ""):
            continue
        attr = _public_name(namespace, fn)
        if attr and _allowed(namespace, attr, fn):
            return f"{namespace}.{attr}"
    raise FalfValueError(f"{where} calls {getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)!s}, which "
                     "is not an allowlisted function of torch, torch.nn.functional, operator, math or "
                     "torchvision.ops; save this model with torch.save(gm) (pickle) instead")


def _resolve_function(dotted: str) -> Any:
    if dotted.startswith(_OUTPUT_CLASSES[0]):  # a ModelOutput class: its module is imported, nothing else runs
        module, _, name = dotted.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError as error:
            raise FalfValueError(f"this graph returns a {dotted}; install transformers to load it") from error
        if _is_output_class(cls):
            return cls
    for namespace in _NAMESPACES:
        attr = dotted[len(namespace) + 1:] if dotted.startswith(namespace + ".") else ""
        if attr.isidentifier():
            obj = getattr(_namespace(namespace), attr, None)
            if _allowed(namespace, attr, obj):
                return obj
            break
    raise FalfValueError(f"refusing to call '{dotted}': not an allowlisted function (torch, torch.nn.functional, "
                     "operator, math, torchvision.ops, builtins.getattr)")


def _check_call(op: str, target: Any, args: tuple, where: str) -> None:
    """Attribute access in a graph stays on public, non-dunder names (no escape to Python internals)."""
    if op == "call_method" and (not isinstance(target, str) or target.startswith("__")
                                or not (hasattr(torch.Tensor, target) or hasattr(torch.Size, target))):
        raise FalfValueError(f"{where}: refusing method '{target}', which is not a public tensor method")
    if op == "call_function" and target is getattr and not (
            len(args) >= 2 and isinstance(args[1], str) and not args[1].startswith("_")):
        raise FalfValueError(f"{where}: refusing getattr with attribute {args[1:2]!r}: only public names are allowed")


def _check_path(path: Any, where: str) -> str:
    """A module or tensor path goes into generated code: only identifiers and indices, no dunders."""
    if not (isinstance(path, str) and all(_NAME_ATOM.fullmatch(atom) for atom in path.split("."))):
        raise FalfValueError(f"{where}: refusing the name {path!r}")
    return path


def _encode(value: Any, where: str) -> Any:
    """Plain data for an fx argument; node references become {"node": name}."""
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_encode(v, where) for v in value]
    if isinstance(value, torch.Size):
        return {"size": [int(v) for v in value]}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, where) for v in value]}
    if isinstance(value, dict):
        return {"dict": [[_encode(k, where), _encode(v, where)] for k, v in value.items()]}
    if isinstance(value, slice):
        return {"slice": [_encode(v, where) for v in (value.start, value.stop, value.step)]}
    if value is Ellipsis:
        return {"ellipsis": None}
    if isinstance(value, complex):
        return {"complex": [value.real, value.imag]}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    for tag, kind in _TORCH_ENUMS.items():
        if isinstance(value, kind):
            return {tag: str(value).removeprefix("torch.")}
    raise FalfValueError(f"{where}: cannot store the value {value!r} ({type(value).__name__}) as plain data; "
                     "save this model with torch.save(gm) (pickle) instead")


def _decode(value: Any, nodes: dict[str, fx.Node]) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_decode(v, nodes) for v in value]
    if not isinstance(value, dict) or len(value) != 1:
        raise FalfValueError(f"malformed {FORMAT} file: unexpected value {value!r}")
    (tag, data), = value.items()
    if tag == "node":
        if data not in nodes:
            raise FalfValueError(f"malformed {FORMAT} file: node {data!r} is used before it is defined")
        return nodes[data]
    if tag in ("tuple", "slice"):
        items = tuple(_decode(v, nodes) for v in data)
        return items if tag == "tuple" else slice(*items)
    if tag == "dict":
        return {_decode(k, nodes): _decode(v, nodes) for k, v in data}
    if tag == "size":
        return torch.Size(data)
    if tag == "ellipsis":
        return Ellipsis
    if tag == "complex":
        return complex(*data)
    if tag == "device":
        return torch.device(data)
    kind = _TORCH_ENUMS.get(tag)
    if kind is not None and isinstance(getattr(torch, str(data), None), kind):
        return getattr(torch, data)
    raise FalfValueError(f"malformed {FORMAT} file: unknown value {value!r}")


def _class_name(module: nn.Module, name: str) -> str:
    cls = type(module)
    if getattr(cls, ADOPTED, False):  # a container given its class back by adopt_interface; load_into does it again
        return "torch.nn.Module"
    if cls is nn.Module or getattr(nn, cls.__name__, None) is cls:
        return f"torch.nn.{cls.__name__}"
    raise FalfValueError(f"module '{name}' is a {cls.__module__}.{cls.__qualname__}, which is not a torch.nn class "
                     "and cannot be rebuilt from plain data (it is probably a leaf fx could not trace); "
                     "save this model with torch.save(gm) (pickle) instead")


def _constructor_kwargs(module: nn.Module, name: str) -> dict[str, Any]:
    """The module's hyper-parameters, read back from the attributes its constructor set."""
    if getattr(type(module), ADOPTED, False):
        return {}  # saved as a plain container
    derived = _DERIVED_FLAGS.get(type(module), {})
    kwargs = {}
    for param in list(inspect.signature(type(module).__init__).parameters.values())[1:]:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or param.name in ("device", "dtype"):
            continue
        if param.name in derived:
            value = derived[param.name](module)
        elif hasattr(module, param.name):
            value = getattr(module, param.name)
            if isinstance(param.default, bool) and (value is None or isinstance(value, torch.Tensor)):
                value = value is not None  # bias=True is kept as a Parameter, bias=False as None
        elif param.default is not param.empty:
            continue
        else:
            raise FalfValueError(f"module '{name}' ({type(module).__name__}): its constructor argument "
                             f"'{param.name}' is not kept as an attribute; save with torch.save(gm) instead")
        kwargs[param.name] = _encode(value, f"module '{name}' argument '{param.name}'")
    return kwargs


def _build(entry: dict, name: str) -> nn.Module:
    """A module from its recorded class and hyper-parameters, with tensors on the meta device (no init)."""
    dotted = entry["class"]
    cls = getattr(nn, dotted.removeprefix("torch.nn."), None) if dotted.startswith("torch.nn.") else None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module) and f"torch.nn.{cls.__name__}" == dotted):
        raise FalfValueError(f"module '{name}': refusing class '{dotted}', which is not a torch.nn module class")
    kwargs = {k: _decode(v, {}) for k, v in entry["kwargs"].items()}
    with torch.device("meta"):
        return cls(**kwargs)


class _Recorder:
    """Walks a GraphModule's module tree and records how to rebuild every module and tensor."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.state_keys = set(gm.state_dict())
        self.modules: dict[str, dict] = {"": {"class": _ROOT_CLASS, "kwargs": {}, "parameters": [], "buffers": []}}
        self.aliases: dict[str, str] = {}
        self.extra_tensors: dict[str, torch.Tensor] = {}
        self.attributes: dict[str, dict[str, Any]] = {}  # plain attributes the constructor does not set
        self.seen = {id(gm): ""}
        self._children("", gm, nn.Module())

    def _record(self, name: str, module: nn.Module) -> None:
        entry = {"class": _class_name(module, name), "kwargs": _constructor_kwargs(module, name),
                 "parameters": [], "buffers": []}
        self.modules[name] = entry
        try:
            built = _build(entry, name)
        except Exception as error:  # noqa: BLE001 - reported as "cannot be rebuilt"
            raise FalfValueError(f"module '{name}' ({type(module).__name__}) cannot be rebuilt from its "
                             f"hyper-parameters ({error}); save this model with torch.save(gm) instead") from error
        self._compare(name, module, built)
        self._children(name, module, built)

    def _children(self, name: str, module: nn.Module, built: nn.Module) -> None:
        self._tensors(name, module, built)
        for child_name, child in module._modules.items():
            qualified = f"{name}.{child_name}" if name else child_name
            if child is None:
                raise FalfValueError(f"module '{qualified}' is None; remove it before saving")
            if id(child) in self.seen:
                self.aliases[qualified] = self.seen[id(child)]
                continue
            self.seen[id(child)] = qualified
            made = built._modules.get(child_name)
            if made is not None and type(made) is type(child):
                self._compare(qualified, child, made)
                self._children(qualified, child, made)
            else:
                self._record(qualified, child)
        extra = set(built._modules) - set(module._modules)
        if extra:
            raise FalfValueError(f"module '{name}' lacks submodules {sorted(extra)} its constructor makes; "
                             "save this model with torch.save(gm) instead")

    def _tensors(self, name: str, module: nn.Module, built: nn.Module) -> None:
        """Check the tensors the constructor makes; record the ones it does not (kept in a container)."""
        prefix = f"{name}." if name else ""
        for kind in ("parameters", "buffers"):
            own, made = getattr(module, "_" + kind), getattr(built, "_" + kind)
            for attr, tensor in own.items():
                qualified = prefix + attr
                if tensor is None:
                    continue
                if attr in made:
                    if made[attr] is None or made[attr].shape != tensor.shape:
                        raise FalfValueError(f"'{qualified}' has shape {tuple(tensor.shape)} but a {type(module).__name__} "
                                         f"rebuilt from its hyper-parameters makes "
                                         f"{None if made[attr] is None else tuple(made[attr].shape)}")
                elif kind == "parameters" or qualified in self.state_keys:
                    if name not in self.modules:
                        raise FalfValueError(f"'{qualified}' was added to a submodule that its parent's constructor "
                                         "makes; save this model with torch.save(gm) instead")
                    self.modules[name][kind].append(qualified)
                if kind == "buffers" and qualified not in self.state_keys:
                    self.extra_tensors[qualified] = tensor  # non-persistent: not in the state dict
            missing = sorted(a for a, t in made.items() if t is not None and own.get(a) is None)
            if missing:
                raise FalfValueError(f"module '{name}' ({type(module).__name__}) lacks the {kind} {missing} that "
                                 "its constructor makes; save this model with torch.save(gm) instead")
        for attr, value in vars(module).items():
            if isinstance(value, torch.Tensor):
                self.extra_tensors[prefix + attr] = value  # a plain tensor attribute; comes back as a buffer

    def _compare(self, name: str, module: nn.Module, built: nn.Module) -> None:
        """Every non-tensor attribute must come back from the constructor, else the rebuild would differ."""
        if getattr(type(module), ADOPTED, False):
            return  # its attributes are the original model's; load_into takes them from the model built again
        own, made = vars(module), vars(built)
        for key in (own.keys() | made.keys()) - _OWN_STATE:
            value, rebuilt = own.get(key, _MISSING), made.get(key, _MISSING)
            if isinstance(value, torch.Tensor):
                continue
            try:
                same = bool(value == rebuilt)
            except Exception:  # noqa: BLE001 - values that cannot be compared are not the same
                same = False
            if not same and value is not _MISSING and "hook" not in key and key.isidentifier() and _is_plain(value):
                self.attributes.setdefault(name, {})[key] = value  # a library's flag (_is_hf_initialized)
            elif not same:
                detail = ("has hooks (code), which plain data cannot hold" if "hook" in key else
                          f"has {key}={value!r} but its rebuilt copy has {key}="
                          f"{'(nothing)' if rebuilt is _MISSING else repr(rebuilt)}")
                raise FalfValueError(f"module '{name}' ({type(module).__name__}) {detail}; "
                                 "save this model with torch.save(gm) (pickle) instead")


def _encode_graph(gm: fx.GraphModule) -> list[dict]:
    if type(gm.graph._codegen) is not fx.graph.CodeGen:
        raise FalfValueError("this graph uses a custom code generator; save it with torch.save(gm) instead")
    nodes = []
    for node in gm.graph.nodes:
        where = f"node '{node.name}'"
        target = _function_name(node.target, where) if node.op == "call_function" else node.target
        _check_call(node.op, node.target, node.args, where)
        nodes.append({"op": node.op, "name": node.name, "target": target,
                      "args": [_encode(a, where) for a in node.args],
                      "kwargs": {k: _encode(v, where) for k, v in node.kwargs.items()}})
    return nodes


def _is_plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    return isinstance(value, dict) and all(_is_plain(k) and _is_plain(v) for k, v in value.items())


def to_plain(gm: fx.GraphModule) -> dict[str, Any]:
    """``gm`` as plain data and tensors: what :func:`save` writes, and what a checkpoint embeds."""
    if not isinstance(gm, fx.GraphModule):
        raise FalfTypeError(f"save() takes a torch.fx.GraphModule, not {type(gm).__name__}")
    recorder = _Recorder(gm)
    named = dict(gm.named_modules(remove_duplicate=False))
    first_name: dict[int, str] = {}
    tied = {}  # a tensor shared by two modules: later name -> first name
    for name, tensor in [*gm.named_parameters(remove_duplicate=False), *gm.named_buffers(remove_duplicate=False)]:
        if id(tensor) in first_name:
            tied[name] = first_name[id(tensor)]
        first_name.setdefault(id(tensor), name)
    return {
        "format": FORMAT,
        "class_name": type(gm).__name__,
        "modules": recorder.modules,
        "aliases": recorder.aliases,
        "graph": _encode_graph(gm),
        "state_dict": gm.state_dict(),
        "extra_tensors": recorder.extra_tensors,
        "attributes": recorder.attributes,
        "tied": tied,
        "frozen": [n for n, p in gm.named_parameters(remove_duplicate=False) if not p.requires_grad],
        "training": gm.training,
        "modes": {n: m.training for n, m in named.items() if m.training != gm.training},
        "meta": {k: v for k, v in gm.meta.items() if k.startswith("falf_fx.") and _is_plain(v)},
    }


def _slim_parts(model: nn.Module) -> dict[str, fx.GraphModule]:
    """The outermost GraphModules inside a model that is not one (a detector pruned in parts)."""
    parts: dict[str, fx.GraphModule] = {}
    for name, module in model.named_modules():
        if isinstance(module, fx.GraphModule) and not any(name.startswith(p + ".") for p in parts):
            parts[name] = module
    return parts


def _parts_to_plain(model: nn.Module) -> dict[str, Any]:
    parts = _slim_parts(model)
    if not parts:
        raise FalfTypeError(f"save() takes a torch.fx.GraphModule or a model holding slim parts, not a "
                            f"{type(model).__name__} without any")
    rest = {k: v for k, v in model.state_dict().items() if not any(k.startswith(p + ".") for p in parts)}
    return {"format": PARTS_FORMAT, "class_name": type(model).__name__,
            "parts": {name: to_plain(gm) for name, gm in parts.items()}, "state_dict": rest}


def save(model: nn.Module, path: PathLike) -> None:
    """Write ``model`` as plain data and tensors (see :func:`load`); raises FalfValueError for what cannot be.

    A GraphModule is written whole.  A model pruned in parts (a detector, whose own
    class plain data cannot rebuild) is written as its slim parts and the rest of its
    weights: :func:`load_into` puts them back into a model built as the original was.
    A path is written next to itself and renamed: a crash mid-write leaves the old file or none.
    """
    data = to_plain(model) if isinstance(model, fx.GraphModule) else _parts_to_plain(model)
    if not isinstance(path, (str, os.PathLike)):  # a buffer
        torch.save(data, path)
        return
    partial = Path(f"{os.fspath(path)}.partial")
    torch.save(data, partial)
    os.replace(partial, path)


def load_into(model: nn.Module, path: PathLike, map_location: Optional[Any] = None) -> nn.Module:
    """Replace ``model``'s parts by the slim GraphModules :func:`save` wrote, and load the rest of its weights.

    ``model`` is built as the original was (same class and configuration, any weights);
    nothing pickled runs.  Returns ``model``.
    """
    data = _read(path, map_location, PARTS_FORMAT)
    if data["class_name"] != type(model).__name__:
        raise FalfValueError(f"{path!s} holds the parts of a {data['class_name']}, not of a {type(model).__name__}")
    for name, plain in data["parts"].items():
        _check_path(name, "part names")
        original = model.get_submodule(name)  # names a module of this model, or raises
        model.set_submodule(name, adopt_interface(from_plain(plain), original))
    model.load_state_dict({**model.state_dict(), **data["state_dict"]}, strict=True)
    return model


def _read(path: PathLike, map_location: Any, expected: str = FORMAT) -> dict:
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise FalfValueError(f"{path!s} is not a {expected} file: torch.load(weights_only=True) refused it (a pickled "
                         "model from torch.save(model), or not a torch file); load a pickle with "
                         "torch.load(path, weights_only=False) only if you trust its source") from error
    found = data.get("format") if isinstance(data, dict) else type(data).__name__
    if found == PARTS_FORMAT and expected == FORMAT:
        raise FalfValueError(f"{path!s} holds the slim parts of a {data.get('class_name')}: build that model as "
                             "before and call falf_fx.load_into(model, path)")
    if found != expected:
        raise FalfValueError(f"{path!s} is not a {expected} file (found {found!r}); write one with falf_fx.save")
    return data


def _owner(root: nn.Module, qualified: str) -> tuple[nn.Module, str]:
    owner, _, attr = qualified.rpartition(".")
    return root.get_submodule(owner), attr


def _build_graph(data: dict, root: fx.GraphModule) -> fx.Graph:
    graph = fx.Graph(owning_module=root)
    nodes: dict[str, fx.Node] = {}
    for entry in data["graph"]:
        op, where = entry["op"], f"node '{entry['name']}'"
        target = _resolve_function(entry["target"]) if op == "call_function" else entry["target"]
        args = tuple(_decode(a, nodes) for a in entry["args"])
        kwargs = {k: _decode(v, nodes) for k, v in entry["kwargs"].items()}
        _check_call(op, target, args, where)
        if op in ("call_module", "get_attr"):
            _check_path(target, where)
        if op == "placeholder" and not (isinstance(target, str) and _PLACEHOLDER.fullmatch(target)
                                        and not keyword.iskeyword(target.lstrip("*"))):
            raise FalfValueError(f"{where}: refusing the argument name {target!r}")
        if not all(isinstance(k, str) and k.isidentifier() for k in kwargs):
            raise FalfValueError(f"{where}: refusing keyword names {sorted(map(repr, kwargs))}")
        node = graph.create_node(op, target, args, kwargs, name=entry["name"])
        if node.name != entry["name"]:
            raise FalfValueError(f"malformed {FORMAT} file: {where} was renamed '{node.name}'")
        nodes[node.name] = node
    graph.lint()
    return graph


def _check_names(data: dict) -> None:
    paths = [*data["modules"], *data["aliases"], *data["aliases"].values(), *data["extra_tensors"],
             *data["tied"], *data["tied"].values(), *data["frozen"], *data["modes"], *data.get("attributes", {})]
    paths += [p for entry in data["modules"].values() for p in (*entry["parameters"], *entry["buffers"])]
    for path in paths:
        if path:  # "" is the root
            _check_path(path, "module and tensor names")


def load(path: PathLike, map_location: Optional[Any] = None) -> fx.GraphModule:
    """Rebuild a GraphModule written by :func:`save`; no pickled code runs, only allowlisted classes and calls."""
    return from_plain(_read(path, map_location))


def from_plain(data: dict[str, Any]) -> fx.GraphModule:
    """The GraphModule of :func:`to_plain`'s data, rebuilt from allowlisted classes and calls only."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise FalfValueError(f"not {FORMAT} data: write it with falf_fx.serialize.to_plain(gm)")
    state = data["state_dict"]
    if not (str(data["class_name"]).isidentifier() and data["modules"][""]["class"] == _ROOT_CLASS):
        raise FalfValueError(f"malformed {FORMAT} file: bad root module")
    _check_names(data)
    gm = fx.GraphModule(nn.Module(), fx.Graph(), data["class_name"])
    for name, entry in data["modules"].items():
        if name:
            owner, attr = _owner(gm, name)
            owner.add_module(attr, _build(entry, name))
        for qualified in entry["parameters"]:
            _owner(gm, qualified)[0].register_parameter(qualified.rpartition(".")[2], nn.Parameter(state[qualified]))
        for qualified in entry["buffers"]:
            _owner(gm, qualified)[0].register_buffer(qualified.rpartition(".")[2], state[qualified])
    for alias, name in data["aliases"].items():
        owner, attr = _owner(gm, alias)
        owner.add_module(attr, gm.get_submodule(name))
    gm.load_state_dict(state, strict=True, assign=True)
    for qualified, tensor in data["extra_tensors"].items():
        owner, attr = _owner(gm, qualified)
        if attr in owner._buffers:
            owner._buffers[attr] = tensor
        else:
            owner.register_buffer(attr, tensor, persistent=False)
    for alias, name in data["tied"].items():
        owner, attr = _owner(gm, alias)
        source_owner, source_attr = _owner(gm, name)
        kind = "_parameters" if source_attr in source_owner._parameters else "_buffers"
        getattr(owner, kind)[attr] = getattr(source_owner, kind)[source_attr]
    for name in data["frozen"]:
        gm.get_parameter(name).requires_grad_(False)
    for name, attributes in data.get("attributes", {}).items():
        module = gm.get_submodule(name)
        for key, value in attributes.items():
            if not (isinstance(key, str) and key.isidentifier() and _is_plain(value)) or key in _OWN_STATE:
                raise FalfValueError(f"malformed {FORMAT} file: refusing attribute {key!r} of module '{name}'")
            setattr(module, key, value)
    gm.graph = _build_graph(data, gm)
    gm.train(data["training"])
    for name, training in data["modes"].items():
        gm.get_submodule(name).training = training
    gm.meta.update(data["meta"])
    left = [n for n, t in [*gm.named_parameters(), *gm.named_buffers()] if t.is_meta]
    if left:
        raise FalfValueError(f"malformed {FORMAT} file: no values for {left}")
    return gm
