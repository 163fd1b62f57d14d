"""Turn the CLI's MODEL argument into an nn.Module: ``package.module:factory`` or a saved file.

``torchvision.models:resnet18``, ``falf_fx.models:resnet_cifar(depth=32)`` (arguments are
Python literals, read with ``ast.literal_eval``, never ``eval``), or ``slim.pt`` written by
``falf-fx prune --out``.
"""
from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import FalfValueError, first_line

__all__ = ["ModelSpecError", "load_model"]

_FACTORY = re.compile(r"^(?P<module>[A-Za-z_][\w.]*):(?P<attr>[A-Za-z_][\w.]*)(?:\((?P<args>.*)\))?$", re.DOTALL)
_MODEL_SUFFIXES = (".pt", ".pth", ".pkl")


class ModelSpecError(FalfValueError):
    """MODEL names nothing loadable; the one-line message says what and what is expected."""


def load_model(spec: str) -> nn.Module:
    """The module named by ``spec``; raises :class:`ModelSpecError` with a one-line reason."""
    path = Path(spec)
    if path.is_file():
        return _load_file(path)
    match = _FACTORY.match(spec.strip())
    if match:
        return _call_factory(spec, match["module"], match["attr"], match["args"])
    if path.suffix in _MODEL_SUFFIXES or "/" in spec or "\\" in spec:
        raise ModelSpecError(f"model file '{spec}' does not exist")
    raise ModelSpecError(f"MODEL '{spec}' is neither 'package.module:factory' (e.g. torchvision.models:resnet18) "
                         "nor a path to a saved model")


def _load_file(path: Path) -> nn.Module:
    """A falf_fx.save file: no pickled code runs, so a pickle (torch.save(model)) is refused, never loaded."""
    from .serialize import FORMAT, load

    try:
        return load(path, map_location="cpu")
    except ValueError as error:
        if f"is not a {FORMAT} file" not in str(error):
            raise ModelSpecError(f"cannot load model file '{path}': {first_line(error)}") from error
    except Exception as error:  # noqa: BLE001 - any unreadable file is the user's input error
        raise ModelSpecError(f"cannot load model file '{path}': {first_line(error)}") from error
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a pickle of a module, or not a torch file at all
        obj = None
    if isinstance(obj, dict):
        raise ModelSpecError(f"'{path}' holds a dict (a state_dict?), not a model: save the traced module "
                             "with falf_fx.save(falf_fx.trace(model, x), path), or name its factory "
                             "(package.module:function)")
    raise ModelSpecError(f"'{path}' is not a falf_fx.save file (a pickle from torch.save(model)?): falf_fx never "
                         "unpickles, since that runs any code the file holds; re-save it with "
                         "falf_fx.save(falf_fx.trace(model, x), path), or name its factory (package.module:function)")


def _call_factory(spec: str, module_name: str, attr_path: str, args_text: str | None) -> nn.Module:
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - ModuleNotFoundError or the module's own import failure
        raise ModelSpecError(f"cannot import module '{module_name}': {first_line(error)}") from error
    target: Any = module
    for part in attr_path.split("."):
        if not hasattr(target, part):
            raise ModelSpecError(f"module '{module_name}' has no attribute '{attr_path}'")
        target = getattr(target, part)
    if isinstance(target, nn.Module):
        if args_text is not None:
            raise ModelSpecError(f"'{module_name}:{attr_path}' is a module instance and takes no arguments")
        return target
    if not callable(target):
        raise ModelSpecError(f"'{module_name}:{attr_path}' is a {type(target).__name__}, not a model factory")
    args, kwargs = _literal_arguments(spec, args_text or "")
    try:
        model = target(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - the factory rejected the arguments or failed to build
        raise ModelSpecError(f"{module_name}:{attr_path}(...) failed: {type(error).__name__}: "
                             f"{first_line(error)}") from error
    return _require_module(model, f"{module_name}:{attr_path}()")


def _literal_arguments(spec: str, text: str) -> tuple[list[Any], dict[str, Any]]:
    """Positional and keyword arguments written as Python literals: ``(10, num_classes=100)``."""
    try:
        call = ast.parse(f"f({text})", mode="eval").body
        if not isinstance(call, ast.Call):
            raise FalfValueError("not a call")
        args = [ast.literal_eval(a) for a in call.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg is not None}
        if len(kwargs) != len(call.keywords):
            raise FalfValueError("**kwargs are not supported")
    except (SyntaxError, ValueError, TypeError) as error:
        raise ModelSpecError(f"the arguments in '{spec}' must be Python literals, "
                             "like factory(10, num_classes=100)") from error
    return args, kwargs


def _require_module(obj: Any, where: str) -> nn.Module:
    if not isinstance(obj, nn.Module):
        raise ModelSpecError(f"{where} gives a {type(obj).__name__}, not a torch.nn.Module")
    return obj


