"""Prune to a target: a fraction of the original's MACs, parameters or measured latency.

A target is planned on a cost model (``MacsModel``, ``ParamsModel``, ``LatencyModel``)
and then checked on the slim model itself: fvcore's MACs, the parameter count, or
its latency timed on this machine.  Where the two disagree the goal is corrected in
proportion and planned again, so the target is what is measured, not what is
predicted.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
from torch import fx, nn

from falf_fx.passes.analysis import Analysis
from falf_fx.passes.rewrite import slim_graph_module

from .flops import cost_and_macs_by_module
from .latency import LatencyModel, LatencySettings, channel_latency_costs, latency_ratio, measure_latency
from .planning import MacsModel, ParamsModel, channel_mac_costs, channel_param_costs, meet_macs_goal, removal_order

__all__ = ["TARGETS", "latency_goal", "prune_to_target"]

TARGETS = ("target_macs", "target_params", "target_latency")
_TRIES = 6
_SAFEGUARD = 0.1  # a goal inside a bracket stays this share of its width off either end
_LATENCY_TOLERANCE = 0.03  # relative: measured latency within 3% of the target ends the tries


@dataclass
class _Try:
    slim: fx.GraphModule
    removed: int  # channels the plan removed
    goal: float
    predicted: float
    measured: float


def _bracket(tries: list[_Try], wanted: float) -> tuple[Optional[_Try], Optional[_Try]]:
    """The tries nearest ``wanted`` in goal from below (measured at or under it: the goal may rise) and from
    above (measured over it: the goal must fall); None for a side no try has reached."""
    under = [t for t in tries if t.measured <= wanted]
    over = [t for t in tries if t.measured > wanted]
    return (max(under, key=lambda t: t.goal) if under else None), (min(over, key=lambda t: t.goal) if over else None)


def _next_goal(tries: list[_Try], wanted: float) -> float:
    """The next planning goal.  Inside a bracket: linear in the measured cost between its two ends, kept off
    the ends so that noise cannot stall it (a safeguarded regula falsi); else the last goal scaled by how far
    its measurement fell from ``wanted``."""
    low, high = _bracket(tries, wanted)
    if low is None or high is None:
        return tries[-1].goal * wanted / tries[-1].measured
    if low.goal >= high.goal or high.measured <= low.measured:  # noise inverted the bracket: split it
        return (low.goal + high.goal) / 2
    share = (wanted - low.measured) / (high.measured - low.measured)
    return low.goal + min(max(share, _SAFEGUARD), 1.0 - _SAFEGUARD) * (high.goal - low.goal)


def _search(analysis: Analysis, scores: Mapping[int, np.ndarray], order: list[tuple[int, int]], model: Any,
            measure: Callable[[fx.GraphModule], float], wanted: float, latency: bool,
            inplace: bool = False) -> tuple[list[_Try], bool]:
    """Plans on ``model`` for goals corrected by measurement until the measured cost meets ``wanted`` (a
    latency: within 3%; a count: at or below it); the tries, and whether the plan stopped moving with every
    try on one side of ``wanted`` (nothing more can be removed, or nothing kept)."""
    goal, tries = wanted, []
    for _ in range(_TRIES):
        plan = meet_macs_goal(analysis, order, goal, model, scores)
        if any(plan.num_removed == t.removed for t in tries):
            return tries, None in _bracket(tries, wanted)  # a plan already measured: nothing new to learn
        slim = slim_graph_module(analysis.graph_module, plan, inplace=inplace and not latency and not tries)
        tries.append(_Try(slim, plan.num_removed, goal, model.predict(plan.removed_channels()), measure(slim)))
        if _met(tries[-1].measured, wanted, latency) or (inplace and not latency):
            break  # met, or the original was spent by the in-place slim: no second try
        goal = _next_goal(tries, wanted)
    return tries, False


def _met(measured: float, wanted: float, latency: bool) -> bool:
    return abs(measured - wanted) <= _LATENCY_TOLERANCE * wanted if latency else measured <= wanted * 1.001


def _best(tries: list[_Try], wanted: float, latency: bool) -> _Try:
    """The try closest to ``wanted`` (for a count, preferring those at or below it)."""
    return min(tries, key=lambda t: (not latency and not _met(t.measured, wanted, False), abs(t.measured - wanted)))


def latency_goal(analysis: Analysis, model: LatencyModel, measure: Callable[[fx.GraphModule], float],
                 wanted_ms: float, allocation: str, min_keep: float, min_channels: int) -> float:
    """The goal, in ``model``'s predicted milliseconds, at which an L1 plan measures ``wanted_ms``: what a
    method's own plan should aim at for its measured latency to land there (``compress``)."""
    from .importance import group_importance

    scores = group_importance(analysis, "l1", 0)
    order = removal_order(analysis, scores, allocation, channel_latency_costs(model), min_keep, min_channels)
    tries, _ = _search(analysis, scores, order, model, measure, wanted_ms, latency=True)
    return _best(tries, wanted_ms, True).goal


def prune_to_target(analysis: Analysis, scores: Mapping[int, np.ndarray], example_inputs: Any, kind: str,
                    target: float, *, latency: LatencySettings, allocation: str, min_keep: float, min_channels: int,
                    skip_groups: frozenset[int] = frozenset(), inplace: bool = False, progress: bool = False,
                    original: Optional[nn.Module] = None) -> fx.GraphModule:
    """The slim GraphModule of ``analysis``'s model whose measured ``kind`` is closest to ``target`` of the
    original's; its ``meta["falf_fx_target"]`` says what was asked, reached and predicted.  A latency is
    timed against ``original``, the module the user passed (default: the traced one): a GraphModule runs
    a few percent faster than the nested modules it was traced from, and the target is of the user's."""
    model, costs, measure = _cost_model(analysis, example_inputs, kind, latency, progress,
                                        analysis.graph_module if original is None else original)
    order = [(g, i) for g, i in removal_order(analysis, scores, allocation, costs, min_keep, min_channels)
             if g not in skip_groups]
    before, is_latency = model.total, kind == "target_latency"
    tries, stuck = _search(analysis, scores, order, model, measure, target * before, is_latency, inplace)
    best = _best(tries, target * before, is_latency)
    reached = best.measured / before
    met = _met(best.measured, target * before, is_latency)
    record = {"kind": kind, "target": target, "reached": round(reached, 6), "met": met, "tries": len(tries),
              "measured_tries": [round(t.measured / before, 6) for t in tries],
              "before": before, "after": best.measured,
              "prediction_error": round(float((tries[0].predicted - tries[0].measured) / tries[0].measured), 6)}
    if is_latency:
        record.update(unit="ms", batch_size=latency.batch_size, threads=latency.thread_count,
                      processor=latency.machine()["processor"])
    best.slim.meta["falf_fx_target"] = record
    if not met:
        warnings.warn(f"prune missed {kind}={target}: the slim model measures {reached:.4f} of the original "
                      f"after {len(tries)} tries" + (" (the plan could not move further: min_keep, min_channels, "
                                                     "ignore or frozen groups hold the rest)" if stuck else ""),
                      stacklevel=3)
    return best.slim


def _cost_model(analysis: Analysis, example_inputs: Any, kind: str, latency: LatencySettings, progress: bool,
                original: nn.Module) -> tuple[Any, dict[int, np.ndarray], Callable[[fx.GraphModule], float]]:
    """The cost model a target is planned on, its per-channel costs, and how a slim model is measured."""
    gm = analysis.graph_module
    if kind == "target_macs":
        cost, per_module = cost_and_macs_by_module(gm, example_inputs)
        return (MacsModel(analysis, per_module, cost.macs), channel_mac_costs(analysis, per_module),
                lambda slim: float(cost_and_macs_by_module(slim, example_inputs)[0].macs))
    if kind == "target_params":
        params = ParamsModel(analysis)
        return params, channel_param_costs(params), lambda slim: float(sum(p.numel() for p in slim.parameters()))
    model = LatencyModel(analysis, measure_latency(original, example_inputs, latency), latency, progress)
    return model, channel_latency_costs(model), \
        lambda slim: model.total * latency_ratio(slim, original, example_inputs, latency)  # drift-free: a ratio
