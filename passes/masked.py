"""The original graph run with a plan's channels zeroed: what a slim model must compute.

The exactness oracle (``falf_fx.testing``) compares a slim model with it; Play-and-Prune
uses it at run time to measure what removing its zeroed filters changes.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch import fx

from .plan import PruningPlan

__all__ = ["MaskedReference"]


class MaskedReference(fx.Interpreter):
    """Runs the original graph, zeroing the removed channels after every node that carries them."""

    def __init__(self, plan: PruningPlan, module: Optional[fx.GraphModule] = None) -> None:
        super().__init__(module if module is not None else plan.analysis.graph_module)
        removed = plan.removed_channels()
        channel_of = plan.analysis.channel_of_atom
        self.masks: dict[str, Any] = {}

        def removed_positions(layout: Any) -> Optional[dict[int, torch.Tensor]]:
            if not isinstance(layout, dict):
                return None
            found = {d: torch.as_tensor(np.flatnonzero(removed[channel_of[a]])) for d, a in layout.items()}
            return {d: idx for d, idx in found.items() if idx.numel()} or None

        for node in self.graph.nodes:
            if node.op in ("placeholder", "get_attr", "output"):
                continue
            layout = plan.analysis.layouts.get(node.name)
            if isinstance(layout, tuple):
                parts = [removed_positions(p) for p in layout]
                if any(parts):
                    self.masks[node.name] = parts
            elif removed_positions(layout):
                self.masks[node.name] = removed_positions(layout)

    @staticmethod
    def _zero(value: torch.Tensor, positions: dict[int, torch.Tensor]) -> torch.Tensor:
        for dim, idx in positions.items():
            value = value.index_fill(dim, idx.to(value.device), 0)
        return value

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        mask = self.masks.get(n.name)
        if mask is None:
            return out
        if isinstance(mask, list):
            return type(out)(self._zero(v, m) if m else v for v, m in zip(out, mask))
        return self._zero(out, mask)
