"""The op-rule registry: one entry per op says how channels flow through it.

A rule has up to three parts:

* ``propagate(ctx)`` — analysis: the output's channel layout from the inputs'.
* ``rewrite_args(node, slim)`` — rewrite: fix literal sizes in the node's args.
* ``refresh_module(module, in_shape, out_shape)`` — rewrite: update a leaf
  module's hyper-parameters (``in_channels``, ``num_features``...) to the
  slim shapes.
* ``takes_sizes`` — the rule judges sizes computed at run time in its args
  itself (view, reshape); anywhere else a channel count read at run time
  freezes the channels it was read from (see ``size_flow``).

Ops without a rule are *unknown*: their channels are frozen, never guessed.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from torch import fx, nn

from .channel_space import ChannelSpace, ParamAxis

__all__ = ["Layout", "OpRule", "RuleContext", "SlimView", "register_rule", "rule_for", "node_where"]

# A tensor's layout: which axes carry channels, and the atom of each position.
Layout = dict[int, np.ndarray]


def node_where(node: fx.Node) -> str:
    """A short description of a node for messages: name, op and target."""
    if node.op == "call_module":
        return f"module '{node.target}'"
    if node.op == "call_method":
        return f"node '{node.name}' (.{node.target}())"
    if node.op == "call_function":
        name = getattr(node.target, "__name__", str(node.target))
        return f"node '{node.name}' ({name})"
    return f"node '{node.name}' ({node.op})"


@dataclass
class RuleContext:
    """What a rule may read and do while the analysis visits one node."""

    node: fx.Node
    space: ChannelSpace
    layouts: dict[fx.Node, Any]
    root: nn.Module
    canonical_names: dict[str, str]
    modules: Mapping[str, nn.Module]  # root.named_modules(remove_duplicate=False), built once per pass
    counts: Mapping[fx.Node, Any] = field(default_factory=dict)  # int nodes -> size_flow.ChannelCount read

    # -- reading --------------------------------------------------------
    @property
    def where(self) -> str:
        return node_where(self.node)

    @property
    def module(self) -> nn.Module:
        return self.modules[self.node.target]

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        if len(self.node.args) > index:
            return self.node.args[index]
        return self.node.kwargs.get(name, default)

    def layout(self, value: Any) -> Optional[Layout]:
        """The layout of an fx argument (None for non-tensors and constants)."""
        if isinstance(value, fx.Node):
            found = self.layouts.get(value)
            return found if isinstance(found, dict) else None
        return None

    @staticmethod
    def val(value: Any) -> Any:
        return value.meta.get("val") if isinstance(value, fx.Node) else value

    @classmethod
    def shape(cls, value: Any) -> Optional[tuple[int, ...]]:
        v = cls.val(value)
        return tuple(v.shape) if isinstance(v, torch.Tensor) else None

    @property
    def out_shape(self) -> Optional[tuple[int, ...]]:
        return self.shape(self.node)

    def param_name(self, qualified: str) -> str:
        """The canonical name of a parameter (tied weights share one)."""
        return self.canonical_names.get(qualified, qualified)

    def module_param(self, attr: str) -> Optional[str]:
        """Qualified name of a leaf module's parameter or buffer, if it is set."""
        if getattr(self.module, attr, None) is None:
            return None
        return self.param_name(f"{self.node.target}.{attr}")

    # -- acting ---------------------------------------------------------
    def freeze(self, layout: Optional[Layout], why: str) -> None:
        for atoms in (layout or {}).values():
            self.space.freeze(atoms, f"{why} ({self.where})")

    def freeze_value(self, value: Any, why: str) -> None:
        """Freeze every tracked axis inside an arbitrary (nested) value."""
        if isinstance(value, dict):
            for atoms in value.values():
                if isinstance(atoms, np.ndarray):
                    self.space.freeze(atoms, f"{why} ({self.where})")
        elif isinstance(value, (tuple, list)):
            for item in value:
                self.freeze_value(item, why)

    def bind(self, param: Optional[str], dim: int, atoms: Optional[np.ndarray]) -> None:
        if param is not None and atoms is not None:
            self.space.bind_param(ParamAxis(param, dim), atoms)

    def producer(self, param: str, dim: int, length: int, owner: str) -> np.ndarray:
        atoms = self.space.param_atoms(ParamAxis(param, dim), length)
        self.space.mark_producer(atoms, owner)
        return atoms


@dataclass(frozen=True)
class SlimView:
    """What the rewrite knows about one plan: kept positions and slim shapes."""

    kept: Callable[[str, int], Optional[np.ndarray]]  # (node name, dim) -> kept mask or None
    slim_value: Callable[[str], Any]  # node name -> slim shape (torch.Size, or nested tuple of them)


@dataclass(frozen=True)
class OpRule:
    propagate: Callable[[RuleContext], Any]
    rewrite_args: Optional[Callable[[fx.Node, SlimView], None]] = None
    refresh_module: Optional[Callable[[nn.Module, Sequence[int], Sequence[int]], None]] = None
    takes_sizes: bool = False


@dataclass
class _Registry:
    modules: dict[type, OpRule] = field(default_factory=dict)
    functions: dict[Any, OpRule] = field(default_factory=dict)
    methods: dict[str, OpRule] = field(default_factory=dict)


_REGISTRY = _Registry()


def register_rule(*targets: Any, propagate: Callable[[RuleContext], Any],
                  rewrite_args: Optional[Callable[[fx.Node, SlimView], None]] = None,
                  refresh_module: Optional[Callable[[nn.Module, Sequence[int], Sequence[int]], None]] = None,
                  takes_sizes: bool = False) -> OpRule:
    """Register one rule for module classes, functions and method names alike."""
    rule = OpRule(propagate, rewrite_args, refresh_module, takes_sizes)
    for target in targets:
        if isinstance(target, str):
            _REGISTRY.methods[target] = rule
        elif isinstance(target, type) and issubclass(target, nn.Module):
            _REGISTRY.modules[target] = rule
        else:
            _REGISTRY.functions[target] = rule
    return rule


def rule_for(node: fx.Node, modules: Mapping[str, nn.Module]) -> Optional[OpRule]:
    """The rule for a node, or None when the op is unknown (exact types only).

    ``modules``: the root's ``dict(named_modules(remove_duplicate=False))``, built once per pass.
    """
    if node.op == "call_module":
        return _REGISTRY.modules.get(type(modules[node.target]))
    if node.op == "call_function":
        return _REGISTRY.functions.get(node.target)
    if node.op == "call_method":  # x.amax(1) is torch.amax(x, 1): a function's rule serves its method too
        found = _REGISTRY.methods.get(node.target)
        function = getattr(torch, str(node.target), None)
        return found if found is not None else _REGISTRY.functions.get(function) if function is not None else None
    return None
