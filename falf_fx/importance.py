"""Group-level channel importance, summed over every parameter the group slices."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from passes.analysis import Analysis, ChannelGroup

__all__ = ["IMPORTANCE_KINDS", "group_importance"]

IMPORTANCE_KINDS = ("l1", "l2", "random")


def _tensor(root: nn.Module, name: str) -> torch.Tensor:
    owner, _, attr = name.rpartition(".")
    return getattr(root.get_submodule(owner), attr)


def _magnitude(root: nn.Module, group: ChannelGroup, power: int) -> np.ndarray:
    scores = np.zeros(group.size, dtype=np.float64)
    for member in group.param_members:
        if member.name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue  # statistics, not weights
        weight = _tensor(root, member.name).detach().double()
        moved = weight.movedim(member.dim, 0).reshape(weight.shape[member.dim], -1)
        per_position = moved.abs().pow(power).sum(dim=1).cpu().numpy()
        np.add.at(scores, member.channels, per_position[member.positions])
    return scores if power == 1 else np.sqrt(scores)


def group_importance(analysis: Analysis, kind: str = "l1", seed: int = 0) -> dict[int, np.ndarray]:
    """Score of every channel of every prunable group (higher = more important).

    ``random`` draws from one generator seeded with ``seed`` in group order, so two
    models of the same architecture get the same scores.
    """
    if kind not in IMPORTANCE_KINDS:
        raise ValueError(f"importance must be one of {IMPORTANCE_KINDS}, not {kind!r}")
    rng = np.random.default_rng(seed)
    root = analysis.graph_module
    scores = {}
    for group in analysis.groups:
        if not group.prunable:
            continue
        if kind == "random":
            scores[group.id] = rng.random(group.size)
        else:
            scores[group.id] = _magnitude(root, group, 1 if kind == "l1" else 2)
    return scores
