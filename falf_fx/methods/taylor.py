"""First-order Taylor pruning: a channel's score is the loss increase its removal is estimated to cause.

Removing a channel is setting a gate on it to zero; the first-order change of the
loss is the gate's gradient, which equals ``sum(w * dL/dw)`` over the channel's
slices of a parameter that scales it.  Summed over every parameter the group
slices, squared per batch and averaged over batches, it is the Fisher estimate
of Molchanov et al. (CVPR 2019).  Scores are in loss units, so they compare
across layers (``allocation="global"`` or ``"cost"``) as well as within one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from falf_fx.passes.modes import eval_mode
from ..training import epoch_loader, total_loss
from .base import Round, ScoreMethod, shared_scores

__all__ = ["Taylor", "taylor_scores"]


def taylor_scores(round_: Round, batches: int) -> dict[int, np.ndarray]:
    """Mean over ``batches`` training batches of each channel's squared gate gradient."""
    gm, analysis = round_.gm, round_.analysis
    params = dict(gm.named_parameters())
    totals = {g.id: np.zeros(g.size) for g in analysis.prunable_groups}
    seen = 0
    with eval_mode(gm):  # the function the slim model will compute: running statistics, no dropout
        for index, batch in enumerate(epoch_loader(round_.train_loader, round_.seed, round_.index)):
            if index >= batches:
                break
            gm.zero_grad(set_to_none=True)
            total_loss(round_.main_loss(round_.run(gm, batch), batch), "taylor").backward()
            sums: dict[tuple[str, int], np.ndarray] = {}
            for group in analysis.prunable_groups:
                gate = np.zeros(group.size)
                for member in group.param_members:
                    p = params.get(member.name)
                    if p is None or p.grad is None:
                        continue  # a buffer (running statistics), or unused by the loss
                    key = (member.name, member.dim)
                    if key not in sums:
                        product = (p.detach() * p.grad).movedim(member.dim, 0)
                        sums[key] = product.reshape(product.shape[0], -1).sum(1).double().numpy()
                    np.add.at(gate, member.channels, sums[key][member.positions])
                totals[group.id] += gate ** 2
            seen += 1
    gm.zero_grad(set_to_none=True)
    return shared_scores({g: t / max(seen, 1) for g, t in totals.items()})


@dataclass
class Taylor(ScoreMethod):
    """Options: ``batches`` (training batches averaged, default 16)."""

    batches: int = 16
    name: ClassVar[str] = "taylor"

    def scores(self, round_: Round) -> dict[int, np.ndarray]:
        return taylor_scores(round_, self.batches)
