"""One spelling per call: every argument a rule reads is positional, in signature order.

``y.narrow(1, 0, 8)``, ``y.narrow(dim=1, start=0, length=8)`` and ``torch.narrow(y, 1, 0, 8)``
are one op to the user and were three to the rules, whose analysis half read keywords
(``RuleContext.arg``) while the rewrite half read ``node.args``.  This pass binds each
call of an op that has a rule to the op's signature (``inspect`` for Python functions and
modules' ``forward``, the TorchScript schemas torch.fx uses in ``normalize_function`` for
builtins; a method by the torch function of its name, ``self`` first) and writes every
positional-or-keyword argument positionally, filling skipped defaults; keyword-only ones
stay keywords.  A call that binds to more than one reading, or to none, is left as it is.
Both halves of every rule then see the same arguments.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Callable, Optional

import torch
from torch import fx, nn
from torch.fx.operator_schemas import get_signature_for_torch_op
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from .rule_registry import rule_for

__all__ = ["NormalizeArguments", "calls_to_normalize", "normalize_arguments", "normalize_graph"]

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _signatures(node: fx.Node, modules: Mapping[str, nn.Module]) -> list[inspect.Signature]:
    """The signatures the call may bind to, ``self`` included for methods."""
    target: Optional[Callable] = None
    if node.op == "call_function":
        target = node.target
    elif node.op == "call_method":
        target = getattr(torch, str(node.target), None)  # x.narrow(...) is torch.narrow(x, ...)
    elif node.op == "call_module":
        target = modules[node.target].forward
    if target is None:
        return []
    try:
        return [inspect.signature(target)]
    except (TypeError, ValueError):  # a builtin: its TorchScript schemas
        return list(get_signature_for_torch_op(target) or [])


def _canonical(signature: inspect.Signature, args: tuple, kwargs: dict) -> Optional[tuple[tuple, dict]]:
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return None
    given = bound.arguments
    positional: list[Any] = []
    keywords: dict[str, Any] = {}
    params = list(signature.parameters.values())
    last = max((i for i, p in enumerate(params) if p.name in given and p.kind in _POSITIONAL), default=-1)
    for index, param in enumerate(params):
        if param.kind in _POSITIONAL and index <= last:
            if param.name in given:
                positional.append(given[param.name])
            elif param.default is inspect.Parameter.empty:
                return None
            else:
                positional.append(param.default)
        elif param.kind is inspect.Parameter.VAR_POSITIONAL and param.name in given:
            positional.extend(given[param.name])  # bound only when every parameter before it was positional
        elif param.kind is inspect.Parameter.KEYWORD_ONLY and param.name in given:
            keywords[param.name] = given[param.name]
        elif param.kind is inspect.Parameter.VAR_KEYWORD and param.name in given:
            keywords.update(given[param.name])
    return tuple(positional), keywords


def _normalized(node: fx.Node, modules: Mapping[str, nn.Module]) -> Optional[tuple[tuple, dict]]:
    """The call's one spelling, or None where it is already it or cannot be decided."""
    if not node.kwargs:
        return None
    readings = {repr(r): r for r in (_canonical(s, node.args, dict(node.kwargs))
                                     for s in _signatures(node, modules)) if r is not None}
    if len(readings) != 1:
        return None
    (args, kwargs), = readings.values()
    return None if (args, kwargs) == (node.args, dict(node.kwargs)) else (args, kwargs)


def calls_to_normalize(graph: fx.Graph, root: nn.Module) -> list[tuple[fx.Node, tuple[tuple, dict]]]:
    """Every call with a rule that is not in its one spelling yet, with that spelling."""
    modules = dict(root.named_modules(remove_duplicate=False))
    found = []
    for node in graph.nodes:
        if node.op in ("call_function", "call_method", "call_module") and rule_for(node, modules) is not None:
            spelling = _normalized(node, modules)
            if spelling is not None:
                found.append((node, spelling))
    return found


def normalize_graph(graph: fx.Graph, root: nn.Module) -> bool:
    """Rewrite every call with a rule to its one spelling, on a graph before it becomes a GraphModule
    (``trace`` does it there, so the module compiles once); True if any call changed."""
    calls = calls_to_normalize(graph, root)
    for node, (args, kwargs) in calls:
        node.args, node.kwargs = args, kwargs
    return bool(calls)


def normalize_arguments(gm: fx.GraphModule) -> bool:
    """:func:`normalize_graph` on a GraphModule's graph, recompiled if anything changed."""
    changed = normalize_graph(gm.graph, gm)
    if changed:
        gm.recompile()
    return changed


class NormalizeArguments(PassBase):
    """torch.fx pass wrapper of :func:`normalize_arguments`."""

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        return PassResult(graph_module, normalize_arguments(graph_module))
