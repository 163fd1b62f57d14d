"""What every pruning criterion sees and returns: one small protocol."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

import numpy as np
import torch
from torch import fx
from torch.utils.data import DataLoader

from passes.analysis import Analysis

from ..checkpoint import CheckpointStore
from ..training import LossFn, all_reduce_mean

__all__ = ["Round", "PruningMethod", "shared_scores", "weight_members"]


@dataclass
class Round:
    """One pruning round: the current model, its analysis and the training resources."""

    gm: fx.GraphModule
    analysis: Analysis
    train_loader: DataLoader
    main_loss: LossFn
    num_classes: int
    index: int
    seed: int
    checkpoints: Optional[CheckpointStore] = None
    resume: bool = False
    progress: bool = True


class PruningMethod(Protocol):
    name: str

    def scores(self, round_: Round) -> dict[int, np.ndarray]:
        """Per prunable group, one score per channel: higher means keep."""


def shared_scores(scores: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Average scores over DDP ranks so every rank slims identically."""
    if not scores:
        return scores
    keys = sorted(scores)
    flat = torch.as_tensor(np.concatenate([scores[k] for k in keys]), dtype=torch.float64)
    flat = all_reduce_mean(flat).numpy()
    out, start = {}, 0
    for k in keys:
        out[k] = flat[start: start + scores[k].size]
        start += scores[k].size
    return out


def weight_members(analysis: Analysis, group_id: int):
    """The group's slices of weight matrices/kernels (not biases, norms or statistics)."""
    root = analysis.graph_module
    for member in analysis.groups[group_id].param_members:
        owner, _, attr = member.name.rpartition(".")
        tensor = getattr(root.get_submodule(owner), attr)
        if isinstance(tensor, torch.nn.Parameter) and tensor.dim() >= 2:
            yield member, tensor
