"""``round_to="auto"``: channel counts snapped to the multiple this machine's kernels run fastest at, measured.

CPU and GPU convolution kernels are blocked over channels (8 or 16 floats for
AVX2 / AVX-512, tensor-core tiles on GPUs), so a layer with 61 filters may run
slower than one with 64.  Which multiple pays depends on the machine and the
model; so each candidate is planned (every group's count rounded down or up to
a multiple, the groups closest to their upper multiple going up first, while
the predicted MACs stay at the unsnapped plan's), slimmed and timed against the
unsnapped slim model, and the fastest is kept, if it is measurably faster.  A
candidate whose plan is one already timed (ResNet-50 at half width is a multiple
of 32 throughout) is recorded as ``same_as`` it, not timed again.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import fx

from falf_fx.passes.analysis import Analysis
from falf_fx.passes.rewrite import slim_graph_module

from .flops import cost_and_macs_by_module
from .latency import LatencySettings, latency_ratio
from .planning import MacsModel, keep_removals, plan_by_keeps, ratio_keeps

__all__ = ["SNAP_CANDIDATES", "prune_snapped", "snapped_keeps"]

SNAP_CANDIDATES = (8, 16, 32)
_MACS_DRIFT = 0.03  # a snapped plan may move the MACs this much (relative) from the unsnapped one
_FASTER = 0.98  # and must measure at most this share of the unsnapped latency to be chosen


def _removed(analysis: Analysis, scores: Mapping[int, np.ndarray], keeps: Mapping[int, int]) -> np.ndarray:
    """The global channels ``plan_by_keeps`` removes (before its rare repair of emptied axes)."""
    removed = np.zeros(analysis.group_of_channel.size, dtype=bool)
    for gid, indices in keep_removals(analysis, scores, keeps).items():
        removed[[analysis.groups[gid].channel_ids[i] for i in indices]] = True
    return removed


def snapped_keeps(analysis: Analysis, scores: Mapping[int, np.ndarray], keeps: Mapping[int, int], multiple: int,
                  macs: MacsModel) -> dict[int, int]:
    """``keeps`` with every group that keeps at least ``multiple`` channels at a multiple of it, and the
    predicted MACs at or just under the unsnapped ones: every count is rounded down, then the groups closest
    to their upper multiple go up first, each one that would overshoot skipped.  A group that keeps fewer
    than ``multiple`` stays as it is unless going up to ``multiple`` fits (forcing it up, as MobileNetV2's
    and DenseNet's narrow layers would be at 16 and 32, cost up to 70% more MACs)."""
    goal = macs.predict(_removed(analysis, scores, keeps))
    low, high = {}, {}
    for gid, keep in keeps.items():
        size = analysis.groups[gid].size
        low[gid] = keep if keep < multiple else keep // multiple * multiple
        high[gid] = keep if size < multiple else min(size, -(-keep // multiple) * multiple)
    current = dict(low)
    closest_to_high = sorted((g for g in keeps if high[g] > low[g]),
                             key=lambda g: (high[g] - keeps[g]) / (high[g] - low[g]))
    for gid in closest_to_high:
        trial = {**current, gid: high[gid]}
        if macs.predict(_removed(analysis, scores, trial)) <= goal:
            current = trial
    return current


def prune_snapped(analysis: Analysis, scores: Mapping[int, np.ndarray], ratio: float, example_inputs: Any,
                  settings: LatencySettings, skip_groups: frozenset[int] = frozenset()) -> fx.GraphModule:
    """The slim model of ``ratio`` of every group at the measured-fastest snapping; ``meta["falf_fx_round_to"]``
    records each candidate's MACs and latency relative to the unsnapped slim model."""
    gm = analysis.graph_module
    cost, per_module = cost_and_macs_by_module(gm, example_inputs)
    model = MacsModel(analysis, per_module, cost.macs)
    keeps = ratio_keeps(analysis, ratio, None, skip_groups)
    unsnapped = slim_graph_module(gm, plan_by_keeps(analysis, scores, keeps))
    base = float(cost_and_macs_by_module(unsnapped, example_inputs)[0].macs)
    candidates: dict[int, dict[str, Any]] = {}
    slims = {1: unsnapped}
    seen: dict[tuple, int] = {tuple(sorted(keeps.items())): 1}  # a plan is timed once: 0.5 of 64-wide layers is 32
    for multiple in SNAP_CANDIDATES:
        snapped = snapped_keeps(analysis, scores, keeps, multiple, model)
        twin = seen.setdefault(tuple(sorted(snapped.items())), multiple)
        if twin != multiple:
            candidates[multiple] = {"same_as": twin}
            continue
        slim = slim_graph_module(gm, plan_by_keeps(analysis, scores, snapped))
        drift = cost_and_macs_by_module(slim, example_inputs)[0].macs / base - 1.0
        candidates[multiple] = {"macs_vs_unsnapped": round(1.0 + drift, 4)}
        if abs(drift) <= _MACS_DRIFT:
            candidates[multiple]["latency_vs_unsnapped"] = round(latency_ratio(slim, unsnapped, example_inputs,
                                                                               settings), 4)
            slims[multiple] = slim
    timed = {m: c["latency_vs_unsnapped"] for m, c in candidates.items() if "latency_vs_unsnapped" in c}
    chosen = min(timed, key=timed.get) if timed and min(timed.values()) <= _FASTER else 1
    result = slims[chosen]
    result.meta["falf_fx_round_to"] = {"chosen": chosen, "candidates": candidates,
                                       "batch_size": settings.batch_size, "threads": settings.thread_count}
    return result
