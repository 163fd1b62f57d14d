"""Turn scores into a PruningPlan: per-group ratio, optional rounding, no axis emptied."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Optional

import numpy as np

from passes.analysis import Analysis, tensor_named
from passes.plan import PlanError, PruningPlan

__all__ = ["channel_mac_costs", "plan_by_ratio", "plan_for_macs", "random_plan"]


def _rounded_keep(size: int, keep: int, round_to: Optional[int]) -> int:
    if round_to and size >= round_to:
        keep = max(round_to, int(math.ceil(keep / round_to)) * round_to)
    return min(max(keep, 1), size)


def _repair_emptied_axes(analysis: Analysis, removals: dict[int, list[int]],
                         scores: Mapping[int, np.ndarray]) -> None:
    """Give back the best channel of any tensor or parameter axis the plan would empty."""
    while True:
        try:
            PruningPlan(analysis, {g: tuple(v) for g, v in removals.items()})._check_no_axis_emptied()
            return
        except PlanError:
            pass
        removed = PruningPlan(analysis, {g: tuple(v) for g, v in removals.items()}).removed_channels()
        for atoms in _all_axes(analysis):
            channels = analysis.channel_of_atom[atoms]
            if atoms.size and removed[channels].all():
                best = max(np.unique(channels).tolist(),
                           key=lambda c: scores[int(analysis.group_of_channel[c])][analysis.index_in_group[c]])
                gid, index = int(analysis.group_of_channel[best]), int(analysis.index_in_group[best])
                removals[gid].remove(index)
                break


def _all_axes(analysis: Analysis):
    yield from analysis.param_axes.values()
    for layout in analysis.layouts.values():
        parts = [layout] if isinstance(layout, dict) else [p for p in (layout or ()) if isinstance(p, dict)]
        for part in parts:
            yield from part.values()


def plan_by_ratio(analysis: Analysis, scores: Mapping[int, np.ndarray], ratio: float,
                  round_to: Optional[int] = None, skip_groups: frozenset[int] = frozenset()) -> PruningPlan:
    """Remove ``ratio`` of every prunable group's channels, lowest scores first."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must be strictly between 0 and 1, got {ratio}")
    removals: dict[int, list[int]] = {}
    for group in analysis.prunable_groups:
        if group.id in skip_groups:
            continue
        keep = _rounded_keep(group.size, group.size - int(ratio * group.size), round_to)
        candidates = [i for i in np.argsort(scores[group.id], kind="stable").tolist() if not group.frozen[i]]
        count = min(group.size - keep, len(candidates))
        if count > 0:
            removals[group.id] = sorted(candidates[:count])
    _repair_emptied_axes(analysis, removals, scores)
    return PruningPlan.build(analysis, removals)


def random_plan(analysis: Analysis, seed: int = 0) -> PruningPlan:
    """A random valid plan: each prunable group loses a random share of its prunable channels."""
    rng = np.random.default_rng(seed)
    removals: dict[int, list[int]] = {}
    scores = {}
    for group in analysis.prunable_groups:
        scores[group.id] = rng.random(group.size)
        candidates = np.flatnonzero(~group.frozen)
        count = int(rng.integers(0, min(len(candidates), group.size - 1) + 1))
        if count:
            removals[group.id] = sorted(rng.choice(candidates, size=count, replace=False).tolist())
    _repair_emptied_axes(analysis, removals, scores)
    return PruningPlan.build(analysis, removals)


def channel_mac_costs(analysis: Analysis, macs_by_module: Mapping[str, int]) -> dict[int, np.ndarray]:
    """Estimated MACs saved by removing each channel of each prunable group (first order).

    A weight axis of size n in a layer costing m MACs saves m/n per removed position.
    """
    root = analysis.graph_module
    costs = {}
    for group in analysis.prunable_groups:
        cost = np.zeros(group.size)
        for member in group.param_members:
            owner = member.name.rpartition(".")[0]
            tensor = tensor_named(root, member.name)
            if tensor.dim() < 2 or owner not in macs_by_module:
                continue
            np.add.at(cost, member.channels, macs_by_module[owner] / tensor.shape[member.dim])
        costs[group.id] = cost
    return costs


def plan_for_macs(analysis: Analysis, scores: Mapping[int, np.ndarray], macs_to_remove: float,
                  costs: Mapping[int, np.ndarray]) -> PruningPlan:
    """Remove the globally least important channels until about ``macs_to_remove`` MACs go.

    Scores are compared across groups after dividing by each group's mean, so a
    layer's allocation follows its scores; no group loses its last channel.
    """
    candidates = []
    for group in analysis.prunable_groups:
        score = np.asarray(scores[group.id], dtype=np.float64)
        scale = np.abs(score).mean() or 1.0
        candidates.extend((score[i] / scale, group.id, i) for i in np.flatnonzero(~group.frozen))
    candidates.sort()
    removals: dict[int, list[int]] = {}
    saved = 0.0
    for _, gid, index in candidates:
        if saved >= macs_to_remove:
            break
        if len(removals.get(gid, ())) + 1 >= analysis.groups[gid].size:
            continue
        removals.setdefault(gid, []).append(int(index))
        saved += costs[gid][index]
    _repair_emptied_axes(analysis, removals, scores)
    return PruningPlan.build(analysis, removals)
