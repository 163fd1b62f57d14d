"""Turn scores into a PruningPlan: per-group ratio, optional rounding, no axis emptied."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Optional

import numpy as np

from falf_fx.passes.analysis import Analysis, ChannelGroup, tensor_named
from falf_fx.passes.channel_space import ParamAxis
from falf_fx.passes.plan import PlanError, PruningPlan

from .errors import FalfValueError

__all__ = ["ALLOCATIONS", "MacsModel", "ParamsModel", "allocate", "channel_mac_costs", "channel_param_costs",
           "keep_removals", "meet_macs_goal", "plan_by_keeps", "plan_by_ratio", "random_plan", "ratio_keeps", "removal_order"]

ALLOCATIONS = ("uniform", "global", "cost")


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


def ratio_keeps(analysis: Analysis, ratio: float, round_to: Optional[int] = None,
                skip_groups: frozenset[int] = frozenset()) -> dict[int, int]:
    """Channels each prunable group keeps when ``ratio`` of them go (with ``round_to``, a multiple of it, up)."""
    if not 0.0 < ratio < 1.0:
        raise FalfValueError(f"ratio must be strictly between 0 and 1, got {ratio}")
    return {group.id: _rounded_keep(group.size, group.size - int(ratio * group.size), round_to)
            for group in analysis.prunable_groups if group.id not in skip_groups}


def keep_removals(analysis: Analysis, scores: Mapping[int, np.ndarray],
                  keeps: Mapping[int, int]) -> dict[int, list[int]]:
    """The channels each group in ``keeps`` loses to keep that many: its lowest scores, never a frozen one."""
    removals: dict[int, list[int]] = {}
    for gid, keep in keeps.items():
        group = analysis.groups[gid]
        candidates = [i for i in np.argsort(scores[gid], kind="stable").tolist() if not group.frozen[i]]
        count = min(group.size - keep, len(candidates))
        if count > 0:
            removals[gid] = sorted(candidates[:count])
    return removals


def plan_by_keeps(analysis: Analysis, scores: Mapping[int, np.ndarray], keeps: Mapping[int, int]) -> PruningPlan:
    """Each group in ``keeps`` keeps that many channels, its highest scores (frozen ones always stay)."""
    removals = keep_removals(analysis, scores, keeps)
    _repair_emptied_axes(analysis, removals, scores)
    return PruningPlan.build(analysis, removals)


def plan_by_ratio(analysis: Analysis, scores: Mapping[int, np.ndarray], ratio: float,
                  round_to: Optional[int] = None, skip_groups: frozenset[int] = frozenset()) -> PruningPlan:
    """Remove ``ratio`` of every prunable group's channels, lowest scores first."""
    return plan_by_keeps(analysis, scores, ratio_keeps(analysis, ratio, round_to, skip_groups))


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
            if member.role == "vector" or owner not in macs_by_module:
                continue
            np.add.at(cost, member.channels, macs_by_module[owner] / tensor_named(root, member.name).shape[member.dim])
        costs[group.id] = cost
    return costs


class MacsModel:
    """The MACs a plan leaves, predicted from the analysis without building the slim model.

    A layer's MACs scale with the kept share of every axis of its weight (output
    and input channels of a conv, the features of a Linear, a norm's channels);
    layers without a weight (pooling) are counted as they are.  Exact for convs,
    linears and norms; ``compress`` checks the prediction with fvcore and corrects.
    """

    def __init__(self, analysis: Analysis, macs_by_module: Mapping[str, int], total_macs: float) -> None:
        self.analysis, self.total = analysis, float(total_macs)
        self.layers: list[tuple[float, list[np.ndarray]]] = []
        for module, macs in macs_by_module.items():
            weight = f"{module}.weight" if module else "weight"
            axes = [analysis.param_axes.get(ParamAxis(weight, d)) for d in range(4)]
            channels = [analysis.channel_of_atom[a] for a in axes if a is not None and a.size]
            if macs and channels:
                self.layers.append((float(macs), channels))

    def predict(self, removed: np.ndarray) -> float:
        """MACs left when the channels flagged in ``removed`` (global channel ids) go."""
        saved = 0.0
        for macs, channels in self.layers:
            kept = 1.0
            for ids in channels:
                kept *= 1.0 - removed[ids].mean()
            saved += macs * (1.0 - kept)
        return self.total - saved


class ParamsModel(MacsModel):
    """The parameters a plan leaves: every parameter tensor shrinks with the kept share of each of its axes."""

    def __init__(self, analysis: Analysis) -> None:
        self.analysis = analysis
        self.layers = []
        fixed = 0.0
        for name, tensor in analysis.graph_module.named_parameters():
            axes = [analysis.param_axes.get(ParamAxis(name, d)) for d in range(tensor.dim())]
            channels = [analysis.channel_of_atom[a] for a in axes if a is not None and a.size]
            if channels:
                self.layers.append((float(tensor.numel()), channels))
            else:
                fixed += tensor.numel()
        self.total = fixed + sum(count for count, _ in self.layers)


def channel_param_costs(params: ParamsModel) -> dict[int, np.ndarray]:
    """Parameters saved by removing each channel of each prunable group (first order, like the MACs)."""
    analysis = params.analysis
    costs = {group.id: np.zeros(group.size) for group in analysis.prunable_groups}
    for count, axes in params.layers:
        for ids in axes:
            for channel in ids.tolist():
                gid = int(analysis.group_of_channel[channel])
                if gid in costs:
                    costs[gid][analysis.index_in_group[channel]] += count / ids.size
    return costs


def floor_of(size: int, min_keep: float, min_channels: int, per_index: int = 1) -> int:
    """The indices a group of ``size`` keeps at least: ``min_keep`` of them, and enough for ``min_channels``
    channels (or all), where each index stands for ``per_index`` channels of its widest tensor (a HetConv
    or grouped conv's group indexes a position of every block; an attention group, a head).

    The absolute floor is the one that matters at extreme targets: at 0.048 of a
    ResNet-20's MACs, uniform shares alone cut its 16-channel stage to 3 channels;
    holding it at 4 while the 64-channel stage pays is 4.3 points more accurate after
    fine-tuning (3 seeds, ``benchmarks/results/quality.json``).
    """
    return max(1, min(size, -(-min_channels // per_index)), int(math.ceil(min_keep * size)))


def check_min_channels(min_channels: int) -> None:
    """The one check of ``min_channels`` for every entry point that takes it (compress, prune, sessions)."""
    if not isinstance(min_channels, int) or min_channels < 1:
        raise FalfValueError(f"min_channels is the fewest channels a group keeps, a whole number >= 1, "
                             f"not {min_channels!r}")


def channels_per_index(group: ChannelGroup) -> int:
    """How many channels of the group's widest parameter axis one of its indices stands for."""
    return max([m.positions.size // group.size for m in group.param_members] + [1])


def removal_order(analysis: Analysis, scores: Mapping[int, np.ndarray], allocation: str,
                  costs: Mapping[int, np.ndarray], min_keep: float, min_channels: int = 1) -> list[tuple[int, int]]:
    """Every removable (group, index), in the order the allocation removes them.

    ``uniform``: every group loses the same share, lowest scores first (Torch-Pruning's
    default); ``global``: scores divided by their group's mean, ranked across groups;
    ``cost``: that normalised score per MAC its removal saves.  Each group keeps at
    least ``floor_of(size, min_keep, min_channels)`` channels, so no layer collapses.
    """
    mean_cost = np.mean([c.mean() for c in costs.values() if c.size]) if costs else 1.0
    keyed = []
    for group in analysis.prunable_groups:
        score = np.asarray(scores[group.id], dtype=np.float64)
        candidates = np.flatnonzero(~group.frozen)
        candidates = candidates[np.argsort(score[candidates], kind="stable")]
        floor = floor_of(group.size, min_keep, min_channels, channels_per_index(group))
        cap = min(len(candidates), group.size - floor)
        candidates = candidates[:max(cap, 0)]
        if allocation == "uniform":
            key = (np.arange(len(candidates)) + 1.0) / group.size
        else:
            key = score[candidates] / (np.abs(score).mean() or 1.0)
            if allocation == "cost":
                key = key / np.maximum(np.asarray(costs[group.id])[candidates] / (mean_cost or 1.0), 1e-12)
            key = np.maximum.accumulate(key)  # a group's channels leave in its own score order
        keyed.extend(zip(key.tolist(), [group.id] * len(candidates), candidates.tolist()))
    keyed.sort()
    return [(gid, index) for _, gid, index in keyed]


def allocate(analysis: Analysis, scores: Mapping[int, np.ndarray], goal_macs: float, macs: MacsModel,
             allocation: str = "uniform", costs: Optional[Mapping[int, np.ndarray]] = None,
             min_keep: float = 0.05, min_channels: int = 1) -> PruningPlan:
    """The smallest removal, in the allocation's order, whose predicted MACs reach ``goal_macs``."""
    if allocation not in ALLOCATIONS:
        raise PlanError(f"allocation must be one of {ALLOCATIONS}, not {allocation!r}")
    order = removal_order(analysis, scores, allocation, costs or {}, min_keep, min_channels)
    return meet_macs_goal(analysis, order, goal_macs, macs, scores)


def meet_macs_goal(analysis: Analysis, order: Sequence[tuple[int, int]], goal_macs: float, macs: MacsModel,
                   scores: Mapping[int, np.ndarray]) -> PruningPlan:
    """The plan of the shortest prefix of ``order`` (group, channel) whose predicted MACs reach ``goal_macs``.

    Every MACs goal in falf_fx is met here.  The prediction falls as the prefix grows,
    so a bisection finds it in a few dozen predictions; ``scores`` pick the channel a
    group gives back when a removal would empty a tensor axis.  The whole order if the
    goal is out of reach.
    """
    ids = np.array([analysis.groups[g].channel_ids[i] for g, i in order], dtype=np.int64)

    def left(count: int) -> float:
        removed = np.zeros(analysis.group_of_channel.size, dtype=bool)
        removed[ids[:count]] = True
        return macs.predict(removed)

    low, high = 0, len(order)
    while low < high:
        middle = (low + high) // 2
        if left(middle) <= goal_macs:
            high = middle
        else:
            low = middle + 1
    chosen = list(order[:low])
    if low:
        chosen[-1] = _closest_last_removal(order, low, ids, goal_macs, macs, analysis.group_of_channel.size)
    removals: dict[int, list[int]] = {}
    for gid, index in chosen:
        removals.setdefault(gid, []).append(int(index))
    _repair_emptied_axes(analysis, removals, scores)  # rare: a channel given back where an axis would empty
    return PruningPlan.build(analysis, removals)


def _closest_last_removal(order: Sequence[tuple[int, int]], count: int, ids: np.ndarray, goal_macs: float,
                          macs: MacsModel, channels: int) -> tuple[int, int]:
    """The prefix's last removal, or another group's next channel in line if that lands closer below the goal.

    One channel of a narrow, high-resolution group can cost several times the goal's
    last step (a 16-channel stage of a ResNet-20: 2% of the MACs), so the plain
    prefix can overshoot by that much; the next channel of each other group keeps
    every group's own order and lands within the smallest step instead.
    """
    removed = np.zeros(channels, dtype=bool)
    removed[ids[:count - 1]] = True
    best, best_left = order[count - 1], -np.inf
    seen: set[int] = set()
    for position in range(count - 1, len(order)):
        gid = order[position][0]
        if gid in seen:
            continue
        seen.add(gid)
        removed[ids[position]] = True
        remaining = macs.predict(removed)
        removed[ids[position]] = False
        if best_left < remaining <= goal_macs:
            best, best_left = order[position], remaining
    return best
