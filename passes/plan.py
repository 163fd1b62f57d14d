"""PruningPlan: which channels of which groups go, validated against the analysis."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .analysis import Analysis
from .errors import FalfValueError

__all__ = ["PlanError", "PruningPlan"]


class PlanError(FalfValueError):
    """A plan that cannot be applied exactly; the message says which group and why."""


@dataclass(frozen=True)
class PruningPlan:
    """``removals[group id]`` = indices (0..size-1 within the group) of channels to remove."""

    analysis: Analysis
    removals: Mapping[int, tuple[int, ...]]

    @classmethod
    def build(cls, analysis: Analysis, removals: Mapping[int, Any]) -> "PruningPlan":
        plan = cls(analysis, {int(g): tuple(sorted(int(i) for i in idx)) for g, idx in removals.items() if len(idx)})
        plan.validate()
        return plan

    @property
    def fingerprint(self) -> str:
        """The graph this plan was built for (``graph_fingerprint``); ``slim`` refuses any other."""
        return self.analysis.fingerprint

    def removed_channels(self) -> np.ndarray:
        """Boolean mask over the analysis's global channel ids."""
        removed = np.zeros(self.analysis.group_of_channel.size, dtype=bool)
        for gid, indices in self.removals.items():
            removed[self.analysis.groups[gid].channel_ids[list(indices)]] = True
        return removed

    def kept(self, atoms: np.ndarray) -> np.ndarray:
        return ~self.removed_channels()[self.analysis.channel_of_atom[atoms]]

    @property
    def num_removed(self) -> int:
        return sum(len(v) for v in self.removals.values())

    def validate(self) -> None:
        groups = self.analysis.groups
        for gid, indices in self.removals.items():
            if not 0 <= gid < len(groups):
                raise PlanError(f"group {gid} does not exist (the analysis has {len(groups)} groups)")
            group = groups[gid]
            if len(set(indices)) != len(indices):
                raise PlanError(f"group {gid}: a channel is listed twice")
            bad = [i for i in indices if not 0 <= i < group.size]
            if bad:
                raise PlanError(f"group {gid}: channel indices {bad} out of range 0..{group.size - 1}")
            frozen = [i for i in indices if group.frozen[i]]
            if frozen:
                why = "; ".join(group.reasons[:3]) or "frozen"
                raise PlanError(f"group {gid} ({', '.join(group.producers[:2]) or 'no producer'}) is frozen "
                                f"at channels {frozen[:8]}: {why}")
            if len(indices) >= group.size:
                raise PlanError(f"group {gid} ({', '.join(group.producers[:2])}) would lose all {group.size} "
                                "channels: keep at least one")
        self._check_no_axis_emptied()

    def _check_no_axis_emptied(self) -> None:
        removed = self.removed_channels()
        if not removed.any():
            return
        channel_of = self.analysis.channel_of_atom
        axes = [(f"parameter '{a.name}' dim {a.dim}", atoms) for a, atoms in self.analysis.param_axes.items()]
        for name, layout in self.analysis.layouts.items():
            parts = [layout] if isinstance(layout, dict) else [p for p in (layout or ()) if isinstance(p, dict)]
            for part in parts:
                axes.extend((f"node '{name}' dim {d}", atoms) for d, atoms in part.items())
        for where, atoms in axes:
            if atoms.size and removed[channel_of[atoms]].all():
                raise PlanError(f"the plan removes every channel of {where}: keep at least one there")
