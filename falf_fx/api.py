"""The public entry points: trace -> analyze -> plan -> slim, and prune() doing all four."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Union

from torch import fx, nn

from falf_fx.passes.analysis import Analysis, analyze_graph
from falf_fx.passes.plan import PruningPlan
from falf_fx.passes.rewrite import slim_graph_module

from .errors import FalfTypeError, FalfValueError
from .capture import LeafSpec, trace
from .importance import group_importance
from .planning import plan_by_ratio

__all__ = ["analyze", "slim", "prune"]


def analyze(gm: fx.GraphModule) -> Analysis:
    """Channel-dependency groups of a module returned by :func:`falf_fx.trace`."""
    if not isinstance(gm, fx.GraphModule):
        raise FalfTypeError("analyze() takes the GraphModule returned by falf_fx.trace(model, example_inputs)")
    return analyze_graph(gm)


def slim(gm: fx.GraphModule, plan: PruningPlan, *, inplace: bool = False) -> fx.GraphModule:
    """A new GraphModule with the plan's channels physically removed (``gm`` is untouched).

    ``inplace=True`` slims ``gm`` itself instead: no copy, the full-size tensors
    freed one by one; ``gm``, the model it was traced from and the plan are spent.
    """
    return slim_graph_module(gm, plan, inplace=inplace)


def _ignored_groups(analysis: Analysis, ignore: Sequence[Union[str, nn.Module]]) -> frozenset[int]:
    """Groups that slice a parameter of an ignored module (by qualified name or instance)."""
    root = analysis.graph_module
    prefixes = []
    for item in ignore:
        if isinstance(item, str):
            prefixes.append(item)
        else:
            names = [name for name, m in root.named_modules() if m is item]
            if not names:
                raise FalfValueError(f"ignore: module {type(item).__name__} is not part of the traced model")
            prefixes.extend(names)
    hits = set()
    for group in analysis.groups:
        for member in group.param_members:
            owner = member.name.rpartition(".")[0]
            if any(owner == p or owner.startswith(p + ".") for p in prefixes):
                hits.add(group.id)
    return frozenset(hits)


def prune(model: nn.Module, example_inputs: Any, *, ratio: float = 0.5, importance: str = "l1", seed: int = 0,
          ignore: Sequence[Union[str, nn.Module]] = (), round_to: Optional[int] = None,
          leaf_modules: Sequence[LeafSpec] = (), inplace: bool = False) -> fx.GraphModule:
    """Remove ``ratio`` of the channels of every prunable group, least important first.

    Importance is summed over every parameter a group slices (``l1``, ``l2``) or
    drawn at random from ``seed``.  The model's outputs are never pruned, nor are
    groups touching a module named in ``ignore``.  ``inplace=True`` reuses
    ``model``'s modules for the slim one (no copy, less memory; ``model`` is spent).
    """
    if not 0.0 < ratio < 1.0:
        raise FalfValueError(f"ratio must be strictly between 0 and 1, got {ratio}")
    gm = trace(model, example_inputs, leaf_modules=leaf_modules)
    analysis = analyze_graph(gm)
    scores = group_importance(analysis, importance, seed)
    plan = plan_by_ratio(analysis, scores, ratio, round_to, _ignored_groups(analysis, ignore))
    return slim_graph_module(gm, plan, inplace=inplace)
