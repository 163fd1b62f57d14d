"""What every pruning method sees and returns: one small protocol.

A method gets a :class:`Round` (the current model, its analysis, data, MAC costs
and how many MACs this round should remove) and returns a :class:`Proposal`: a
plan, and the model the plan applies to (a method may train or fold the model
first).  ``compress`` does the rest the same way for every method: slim,
fine-tune, measure, checkpoint, stop.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Protocol

import numpy as np
import torch
from torch import fx
from torch.utils.data import DataLoader

from falf_fx.passes.analysis import Analysis, tensor_named
from falf_fx.passes.plan import PruningPlan

from ..checkpoint import CheckpointStore
from ..planning import MacsModel, allocate
from ..training import LossFn, TrainConfig, all_reduce_mean, train

__all__ = ["Round", "Proposal", "PruningMethod", "MethodBase", "ScoreMethod", "shared_scores",
           "weight_members"]


@dataclass
class Round:
    """One pruning round: the current model, its analysis, the training resources and the budget."""

    gm: fx.GraphModule
    analysis: Analysis
    train_loader: DataLoader
    main_loss: LossFn
    num_classes: int
    index: int
    seed: int
    macs_to_remove: float = float("inf")  # this round's share of the MACs target (inf: tolerance only)
    costs: dict[int, np.ndarray] = field(default_factory=dict)  # group id -> MACs saved per channel removed
    total_macs: float = 0.0  # MACs of ``gm``
    target_macs: Optional[float] = None  # absolute MACs to end at (None: tolerance only)
    val_loader: Optional[DataLoader] = None
    checkpoints: Optional[CheckpointStore] = None
    resume: bool = False
    progress: bool = True
    macs_model: Optional[MacsModel] = None  # predicts a plan's MACs on ``gm`` without slimming (None: made here)
    allocation: str = "uniform"  # how a MACs goal is shared between groups (planning.ALLOCATIONS)
    min_keep: float = 0.05  # the share of every group that allocation keeps
    auxiliary_epochs: dict[str, int] = field(default_factory=dict)  # phase kind -> epochs the method trained

    def __post_init__(self) -> None:
        if self.macs_model is None:  # counted once with fvcore on zeros shaped like the traced inputs
            from ..flops import count_cost, macs_by_module
            example = tuple(torch.zeros(n.meta["val"].shape, dtype=n.meta["val"].dtype)
                            for n in self.gm.graph.nodes if n.op == "placeholder")
            self.total_macs = self.total_macs or float(count_cost(self.gm, example).macs)
            self.macs_model = MacsModel(self.analysis, macs_by_module(self.gm, example), self.total_macs)

    def allocate(self, scores: dict[int, np.ndarray]) -> PruningPlan:
        """This round's removal: the round's allocation of ``scores`` down to its MACs goal."""
        goal = self.total_macs - self.macs_to_remove if np.isfinite(self.macs_to_remove) else 0.0
        return allocate(self.analysis, scores, goal, self.macs_model, self.allocation, self.costs, self.min_keep)

    def phase(self, name: str) -> str:
        """A checkpoint phase name unique to this round."""
        return f"round{self.index}-{name}"

    def train(self, model: torch.nn.Module, loader: DataLoader, loss: LossFn, config: TrainConfig,
              kind: str) -> list[dict]:
        """A method's own training phase: checkpointed under this round, counted in ``auxiliary_epochs``."""
        history = train(model, loader, loss, config, phase=self.phase(kind), checkpoints=self.checkpoints,
                        resume=self.resume, progress=self.progress)
        family = kind.split("-")[0]
        self.auxiliary_epochs[family] = self.auxiliary_epochs.get(family, 0) + config.epochs
        return history


@dataclass
class Proposal:
    """What a method wants removed, from which model, and what to record about it."""

    plan: PruningPlan
    model: fx.GraphModule
    record: dict[str, Any] = field(default_factory=dict)  # extra history fields (thresholds, lambdas...)


class PruningMethod(Protocol):
    """What ``compress(method=...)`` takes: one of ours (``falf_fx.methods.FALF(aux_epochs=2)``) or your own.

    ``name`` and ``default_rounds`` are class attributes (``ClassVar``); options are the
    constructor's.  Subclass :class:`ScoreMethod` and write ``scores`` for a criterion,
    or :class:`MethodBase` and write ``propose`` for a method that trains or folds.
    """

    name: ClassVar[str]  # in reports and history
    default_rounds: ClassVar[int]  # rounds compress runs unless told otherwise (1: the target at once)

    def propose(self, round_: Round) -> Proposal:
        """Decide this round's removals."""

    def observe(self, record: dict[str, Any]) -> bool:
        """See the round's outcome (``kept``, accuracy, MACs); return False to stop."""

    def state(self) -> dict[str, Any]:
        """What a resumed run needs to go on as an uninterrupted one would."""

    def load_state(self, state: dict[str, Any]) -> None:
        ...


class MethodBase:
    """Defaults for a method with no state between rounds: stop at the first rejected round."""

    def observe(self, record: dict[str, Any]) -> bool:
        return bool(record["kept"])

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass


class ScoreMethod(MethodBase):
    """A method that scores channels (higher = keep); the round's MACs allocation does the rest."""

    default_rounds: ClassVar[int] = 1  # one-shot, then the whole fine-tuning budget: the quality benchmark's winner

    def scores(self, round_: Round) -> dict[int, np.ndarray]:
        raise NotImplementedError

    def propose(self, round_: Round) -> Proposal:
        scores = self.scores(round_)
        return Proposal(round_.allocate(scores), round_.gm)


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
        if member.role in ("output", "input", "other"):
            tensor = tensor_named(root, member.name)
            if isinstance(tensor, torch.nn.Parameter):
                yield member, tensor
