"""The public entry points: trace -> analyze -> plan -> slim, and prune() doing all four."""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Optional, Union

from torch import fx, nn

from falf_fx.passes.analysis import Analysis, analyze_graph
from falf_fx.passes.plan import PruningPlan
from falf_fx.passes.rewrite import slim_graph_module

from .errors import FalfTypeError, FalfValueError
from .capture import LeafSpec
from .library_models import is_library_model, warn_stale_config
from .parts import adopt_interface, capture_parts
from .importance import group_importance
from .latency import LatencySettings
from .planning import ALLOCATIONS, check_min_channels, plan_by_ratio
from .snapping import prune_snapped
from .targets import prune_to_target

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


def _ignored_groups(analysis: Analysis, ignore: Sequence[Union[str, nn.Module]], part: str = "") -> frozenset[int]:
    """Groups that slice a parameter of an ignored module (by qualified name or instance).

    ``part``: the qualified name of the traced part (names in ``ignore`` are the whole model's).
    """
    root = analysis.graph_module
    prefixes = []
    for item in ignore:
        if isinstance(item, str):
            if not part or item == part:
                prefixes.append("" if item == part else item)
            elif item.startswith(part + "."):
                prefixes.append(item[len(part) + 1:])
        else:
            prefixes.extend(name for name, m in root.named_modules() if m is item)
    hits = set()
    for group in analysis.groups:
        for member in group.param_members:
            owner = member.name.rpartition(".")[0]
            if any(p == "" or owner == p or owner.startswith(p + ".") for p in prefixes):
                hits.add(group.id)
    return frozenset(hits)


def _check_ignored_modules(model: nn.Module, ignore: Sequence[Union[str, nn.Module]]) -> None:
    for item in ignore:
        if not isinstance(item, str) and not any(m is item for m in model.modules()):
            raise FalfValueError(f"ignore: module {type(item).__name__} is not part of the model")


def prune(model: nn.Module, example_inputs: Any, *, ratio: Optional[float] = None,
          target_macs: Optional[float] = None, target_params: Optional[float] = None,
          target_latency: Optional[float] = None, latency: LatencySettings = LatencySettings(),
          allocation: str = "uniform", min_keep: float = 0.05, min_channels: int = 4, importance: str = "l1",
          seed: int = 0,
          ignore: Sequence[Union[str, nn.Module]] = (), round_to: Union[None, int, str] = None,
          leaf_modules: Sequence[LeafSpec] = (), inplace: bool = False, progress: bool = False) -> nn.Module:
    """Remove the least important channels: ``ratio`` of every prunable group, or down to a target.

    Give at most one of ``ratio`` (default 0.5), ``target_macs``, ``target_params`` or
    ``target_latency``, each a fraction of the original's.  ``target_latency`` is measured
    on this machine under ``latency`` (batch size, threads): every prunable layer is
    timed at a grid of widths (cached on disk), the plan is chosen on those tables,
    then the slim model is timed and the plan corrected until its measured latency
    is within 3% of the target (four tries at most; the closest is kept, and a miss is
    warned).  The slim GraphModule's ``meta["falf_fx_latency"]`` holds the measured
    latency before and after, the batch size, threads, and the model's prediction error.
    ``round_to=N`` keeps a multiple of N channels in every group of at least N (up);
    ``round_to="auto"`` measures which multiple (8, 16, 32, or none) makes the slim
    model fastest under ``latency`` and keeps that one (``meta["falf_fx_round_to"]``).
    Targets share the cut between groups by ``allocation`` (``uniform``, ``global``, or
    ``cost``: scores per MAC, parameter or millisecond saved); ``min_keep`` of every
    group stays, and at least ``min_channels`` of it.

    Importance is summed over every parameter a group slices (``l1``, ``l2``) or
    drawn at random from ``seed``.  The model's outputs are never pruned, nor are
    groups touching a module named in ``ignore``.  ``inplace=True`` reuses
    ``model``'s modules for the slim one (no copy, less memory; ``model`` is spent).

    Returns the slim GraphModule when the whole model traces (for a Hugging Face or
    Ultralytics model, one that is also an instance of the model's class, with copies
    of its attributes: ``save_pretrained``, ``config``, ``model.model[-1]``); otherwise
    (a detector) the user's own model, copied unless ``inplace``, with each traced part
    replaced by its slim GraphModule under the same name (``falf_fx.parts``).  A
    submodule the trace had to keep as a leaf is pruned inside the same way.
    """
    targets = {name: value for name, value in (("ratio", ratio), ("target_macs", target_macs),
                                                ("target_params", target_params),
                                                ("target_latency", target_latency)) if value is not None}
    if len(targets) > 1:
        raise FalfValueError(f"prune takes one of ratio, target_macs, target_params, target_latency; got "
                             f"{', '.join(targets)}")
    (kind, value), = targets.items() if targets else (("ratio", 0.5),)
    if not 0.0 < value < 1.0:
        raise FalfValueError(f"{kind} must be strictly between 0 and 1, got {value}")
    if allocation not in ALLOCATIONS:
        raise FalfValueError(f"allocation must be one of {ALLOCATIONS}, not {allocation!r}")
    check_min_channels(min_channels)
    if round_to is not None and round_to != "auto" and not (isinstance(round_to, int) and round_to >= 1):
        raise FalfValueError(f"round_to is a positive number of channels or 'auto', got {round_to!r}")
    if round_to is not None and kind != "ratio":
        raise FalfValueError(f"round_to goes with ratio; {kind} plans every channel count itself")
    _check_ignored_modules(model, ignore)
    parts = capture_parts(model, example_inputs, leaf_modules=leaf_modules)
    if kind != "ratio" and parts[0].name:
        raise FalfValueError(f"{kind} needs a model that traces whole; {type(model).__name__} is captured in parts "
                             f"({', '.join(p.name for p in parts[:3])}...): pass ratio=, or use "
                             f"falf_fx.compress(model, loader, target_macs=...), which shares a MACs goal between "
                             f"the parts")
    slim_parts = []
    for part in parts:
        analysis = analyze_graph(part.graph_module)
        scores = group_importance(analysis, importance, seed)
        skip = _ignored_groups(analysis, ignore, part.name)
        if round_to == "auto":
            slim_parts.append((part.name, prune_snapped(analysis, scores, value, part.example_inputs, latency,
                                                        skip)))
        elif kind == "ratio":
            plan = plan_by_ratio(analysis, scores, value, round_to, skip)
            slim_parts.append((part.name, slim_graph_module(part.graph_module, plan, inplace=inplace)))
        else:
            slim_parts.append((part.name, prune_to_target(
                analysis, scores, part.example_inputs, kind, value, latency=latency, allocation=allocation,
                min_keep=min_keep, min_channels=min_channels, skip_groups=skip, inplace=inplace, progress=progress,
                original=model)))
    whole = slim_parts[0][0] == ""  # the model traced, maybe with parts inside the leaves it kept
    result = slim_parts[0][1] if whole else model if inplace else copy.deepcopy(model)
    for name, slim in slim_parts[1:] if whole else slim_parts:
        result.set_submodule(name, adopt_interface(slim, result.get_submodule(name)))
    if whole and is_library_model(model):
        result = adopt_interface(result, model)
        warn_stale_config(result)
    return result
