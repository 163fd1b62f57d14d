"""What every pruning method sees and returns: one small protocol.

A method gets a :class:`Round` (the current model, its analysis, data, MAC costs
and how many MACs this round should remove) and returns a :class:`Proposal`: a
plan, and the model the plan applies to (a method may train or fold the model
first).  ``compress`` does the rest the same way for every method: slim,
fine-tune, measure, checkpoint, stop.
"""
from __future__ import annotations

from collections.abc import Callable
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
from ..training import Forward, LossFn, TrainConfig, all_reduce_mean, inputs_only, total_loss, train

__all__ = ["Phase", "Round", "Proposal", "PruningMethod", "MethodBase", "ScoreMethod", "SplitOutputs", "Trainer",
           "own_loop", "shared_scores", "weight_members"]


def _no_penalty() -> torch.Tensor:
    return torch.zeros(())


@dataclass
class Phase:
    """One stretch of training a run needs: ``model`` for ``epochs`` on the task loss plus ``penalty()``.

    ``model`` returns the outputs the user's model returns, so the user's own loss
    applies to it; ``penalty()``, called after each forward, is the method's extra
    term (FALF's fatuous loss, CFP's correlation penalty, Play-and-Prune's l1,
    NPN's gate l1; zero when fine-tuning) to add to that loss.  ``config`` is how
    falf_fx's own loop trains it; a user's loop is free to train otherwise.
    """

    model: torch.nn.Module
    kind: str  # "finetune", or the method's phase: "fatuous", "correlate", "regularise", "npn"
    name: str  # unique in the run ("round0-fatuous"): checkpoints and error messages
    round: int
    config: TrainConfig
    penalty: Callable[[], torch.Tensor] = _no_penalty
    loader: Optional[DataLoader] = None  # falf_fx's loop trains on this instead of the run's (NPN's held-out split)

    @property
    def epochs(self) -> int:
        return self.config.epochs

    @property
    def lr(self) -> float:
        return self.config.lr


Trainer = Callable[[Phase], None]  # trains a phase's model in place


def own_loop(loader: DataLoader, loss_fn: LossFn, checkpoints: Optional[CheckpointStore] = None,
             resume: bool = False, progress: bool = True, forward: Forward = inputs_only,
             after_epoch: Optional[Callable[[torch.nn.Module], dict]] = None) -> Trainer:
    """falf_fx's training loop as a trainer: ``loss_fn`` plus the phase's penalty, checkpointed per epoch;
    ``after_epoch(model)`` runs after every epoch and its dict goes into the epoch's checkpointed record."""
    def run(phase: Phase) -> None:
        def loss(outputs, batch) -> torch.Tensor:
            return total_loss(loss_fn(outputs, batch), phase.name) + phase.penalty()

        train(phase.model, phase.loader or loader, loss, phase.config, phase=phase.name, checkpoints=checkpoints,
              resume=resume, evaluate_fn=after_epoch, progress=progress, forward=forward)
    return run


class SplitOutputs(torch.nn.Module):
    """A module returning ``(outputs, extra)`` seen as one returning ``outputs``: ``extra`` and the first
    input are kept for the phase's penalty.  The instrumented model then fits the user's loss as it is."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module
        self.extra: Any = None
        self.inputs: Any = None

    def forward(self, *inputs, **kwargs):
        outputs, self.extra = self.module(*inputs, **kwargs)
        self.inputs = inputs[0] if inputs else None
        return outputs


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
    min_channels: int = 4  # and the fewest channels (planning.floor_of)
    auxiliary_epochs: dict[str, int] = field(default_factory=dict)  # phase kind -> epochs the method trained
    trainer: Optional[Trainer] = None  # who trains a phase: falf_fx's loop, the user's finetune, or a session
    forward: Forward = inputs_only  # how the whole model runs on a training batch
    # A model captured in parts (a detector): ``gm`` is one part, and ``embed(module)`` is the whole model with
    # ``module`` in that part's place, on which losses are computed and phases train.  None: ``gm`` is the model.
    embed: Optional[Callable[[torch.nn.Module], torch.nn.Module]] = None
    part_name: str = ""  # the part's qualified name in the whole model

    def __post_init__(self) -> None:
        if self.macs_model is None:  # counted once with fvcore on zeros shaped like the traced inputs
            from ..flops import count_cost, macs_by_module
            example = tuple(torch.zeros(n.meta["val"].shape, dtype=n.meta["val"].dtype)
                            for n in self.gm.graph.nodes if n.op == "placeholder")
            self.total_macs = self.total_macs or float(count_cost(self.gm, example).macs)
            self.macs_model = MacsModel(self.analysis, macs_by_module(self.gm, example), self.total_macs)
        if self.trainer is None:
            self.trainer = own_loop(self.train_loader, self.main_loss, self.checkpoints, self.resume, self.progress,
                                    self.forward)

    def allocate(self, scores: dict[int, np.ndarray]) -> PruningPlan:
        """This round's removal: the round's allocation of ``scores`` down to its MACs goal."""
        goal = self.total_macs - self.macs_to_remove if np.isfinite(self.macs_to_remove) else 0.0
        return allocate(self.analysis, scores, goal, self.macs_model, self.allocation, self.costs, self.min_keep,
                        self.min_channels)

    def phase(self, kind: str, model: torch.nn.Module, config: TrainConfig,
              penalty: Callable[[], torch.Tensor] = _no_penalty, loader: Optional[DataLoader] = None) -> Phase:
        """A phase of this round's method training ``model`` (the round's model or part), named uniquely."""
        whole = model if self.embed is None else self.embed(model)
        return Phase(whole, kind.split("-")[0], f"round{self.index}-{kind}", self.index, config, penalty, loader)

    def run(self, module: torch.nn.Module, batch: tuple) -> Any:
        """The whole model's outputs on a training batch, ``module`` in the part's place and in its own mode
        (Taylor scores a part in eval mode while a detector around it computes its training losses)."""
        if self.embed is None:
            return self.forward(module, batch)
        mode = module.training
        whole = self.embed(module).train()
        module.train(mode)
        return self.forward(whole, batch)

    @torch.no_grad()
    def part_inputs(self, module: torch.nn.Module, batches: list) -> list[tuple]:
        """The positional inputs ``module`` gets on each training batch: ``(batch[0],)`` for a model traced
        whole, what the code around the part hands it otherwise."""
        if self.embed is None:
            return [(batch[0],) for batch in batches]
        from ..parts import record_calls

        host, name = self.embed(module), self.part_name
        return [record_calls(host, (batch[0],), [name])[name] for batch in batches]

    def train(self, phase: Phase) -> None:
        """A method's own training phase, counted in ``auxiliary_epochs``; the run's trainer trains it."""
        self.trainer(phase)
        self.auxiliary_epochs[phase.kind] = self.auxiliary_epochs.get(phase.kind, 0) + phase.epochs


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
