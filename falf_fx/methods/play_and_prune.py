"""Play and Prune (IJCAI 2019): the user gives an accuracy tolerance, a controller decides how hard to prune.

Two players.  The Adaptive Filter Pruning module (:meth:`PlayAndPrune.propose`)
takes the filters whose l1 norm is below a threshold W_t, trains with
``L + lam_t * sum ||f||_1`` over them, removes those that reach zero, and folds
what they leave behind (a constant activation) into the next layers' biases.
The Pruning Rate Controller (:func:`next_setting`, called from ``observe``)
raises W_t and lam_t while the rounds stay inside the tolerance and backs off
when one does not.  The paper's text was not available: the forms below are
reconstructions (methods.md, section 3), each one an option.

* W_t is a quantile: the share of the prunable filters, ranked across all groups
  by their norm over their group's mean, that are candidates.  Ranking by the
  norm relative to the group keeps per-layer rates following the norms (a layer
  with many weak filters offers more candidates); the quantile keeps the rate
  the controller sets.  A threshold as a fraction of the group mean (the first
  reconstruction) was all or nothing on residual networks, whose filter norms
  sit within 0.7 to 1.3 of their group's mean: no candidate at W_t = 0.7, half
  of all filters at 1.0 (methods.json, ResNet-20).
* A filter's norm is the l1 norm of all its weight slices (the producing
  kernel and the consuming layers' slices): with BatchNorm after a conv the
  producing kernel's scale is irrelevant, only the consumers' slices can make
  the channel stop mattering.
* The penalty of a group is scaled by its mean |w|, so lam_t is a speed: with
  plain SGD a candidate loses lr * lam_t of the group's typical weight per step,
  whatever the layer's scale and fan-in.
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils._pytree import tree_leaves

from falf_fx.passes.analysis import Analysis
from falf_fx.passes.fold_constants import fold_constants, measure_inputs, removed_inputs
from falf_fx.passes.masked import MaskedReference
from falf_fx.passes.modes import eval_mode
from falf_fx.passes.plan import PruningPlan

from ..errors import FalfValueError
from ..planning import allocate
from ..training import TrainConfig, all_reduce_mean, epoch_loader
from .base import Proposal, Round, weight_members

__all__ = ["PlayAndPrune", "Setting", "next_setting"]


@dataclass(frozen=True)
class Setting:
    """The controller's state: the current W_t and lam_t and the factor that moves them."""

    threshold: float  # W_t, the share of the prunable filters (weakest relative to their group) that are candidates
    lam: float  # lam_t
    step: float  # raise factor; its square root after every round outside the tolerance
    idle: int = 0  # failures in a row (see next_setting)


def next_setting(setting: Setting, kept: bool, removed: int, *, max_threshold: float,
                 patience: int) -> tuple[Setting, bool]:
    """The Pruning Rate Controller's rule; returns the next setting and whether to go on.

    Inside the tolerance W_t and lam_t are multiplied by ``step`` (W_t up to
    ``max_threshold``), also when nothing was removed (the penalty was too weak
    to zero a filter).  Outside, they go back by ``step`` to the last setting that
    stayed inside and the step becomes its square root, so the next raise lands
    halfway (in log scale) between the setting that held and the one that broke.
    compress has already restored the last model inside the tolerance: the
    paper's "lam = 0, fine-tune until back inside" costs nothing here.  Stop after
    ``patience`` failures in a row: rounds outside the tolerance, or rounds that
    removed nothing with W_t already at its maximum.
    """
    failed = not kept or (removed == 0 and setting.threshold >= max_threshold)
    idle = setting.idle + 1 if failed else 0
    if kept:
        new = Setting(min(setting.threshold * setting.step, max_threshold), setting.lam * setting.step,
                      setting.step, idle)
    else:
        new = Setting(setting.threshold / setting.step, setting.lam / setting.step, setting.step ** 0.5, idle)
    return new, idle < patience


class _FilterNorms:
    """Differentiable l1 norm of every channel of every prunable group, over all its weight slices."""

    def __init__(self, analysis: Analysis) -> None:
        self.groups = {}
        for group in analysis.prunable_groups:
            slices = [(tensor, member.dim, torch.tensor(member.positions), torch.tensor(member.channels))
                      for member, tensor in weight_members(analysis, group.id)]
            if slices:
                self.groups[group.id] = (group.size, torch.as_tensor(~group.frozen), slices)

    def __call__(self) -> dict[int, torch.Tensor]:
        out = {}
        for gid, (size, _, slices) in self.groups.items():
            norm = torch.zeros(size, dtype=torch.float32)
            for tensor, dim, positions, channels in slices:
                per_position = tensor.movedim(dim, 0).reshape(tensor.shape[dim], -1).abs().sum(1)
                norm = norm.index_add(0, channels, per_position[positions].float())
            out[gid] = norm
        return out

    def elements(self) -> dict[int, torch.Tensor]:
        """Number of weights per channel (to turn a norm into a mean |w|)."""
        out = {}
        for gid, (size, _, slices) in self.groups.items():
            count = torch.zeros(size)
            for tensor, dim, positions, channels in slices:
                count.index_add_(0, channels, torch.full((positions.numel(),), tensor.numel() / tensor.shape[dim]))
            out[gid] = count
        return out


@dataclass
class PlayAndPrune:
    """Options: ``threshold`` and ``lam`` (W_0, a share of the filters, and lam_0), ``grow`` (the controller's
    first step), ``max_threshold`` (the largest share offered in one round),
    ``zero`` (a filter has reached zero below ``zero`` x its group's mean norm), ``reg_epochs`` and ``reg_lr``
    (the regularised phase), ``patience`` (rounds without progress before stopping), ``fold_batches``
    (batches that measure the constants folded into the next layers)."""

    threshold: float = 0.1
    lam: float = 1.0
    grow: float = 1.5
    max_threshold: float = 0.5
    zero: float = 0.3
    reg_epochs: int = 1
    reg_lr: float = 0.01
    patience: int = 2
    fold_batches: int = 4
    setting: Setting = field(init=False)
    name: ClassVar[str] = "play_and_prune"
    default_rounds: ClassVar[int] = 12

    def __post_init__(self) -> None:
        if not (0 < self.threshold <= self.max_threshold <= 1 and self.lam > 0 and self.grow > 1
                and 0 < self.zero < 1 and self.patience >= 1):
            raise FalfValueError("play_and_prune needs 0 < threshold <= max_threshold <= 1 (shares of the filters), "
                                 "lam > 0, grow > 1, 0 < zero < 1 and patience >= 1")
        self.setting = Setting(self.threshold, self.lam, self.grow)

    def propose(self, round_: Round) -> Proposal:
        model = copy.deepcopy(round_.gm)  # a rejected round must leave the previous model as it was
        analysis = round_.analysis.for_module(model)
        norms = _FilterNorms(analysis)
        with torch.no_grad():
            start = norms()
        unfrozen = {g: norms.groups[g][1] for g in start}
        mean = {g: start[g][unfrozen[g]].mean() for g in start}
        relative = {g: start[g] / mean[g] for g in start}
        pool = torch.cat([relative[g][unfrozen[g]] for g in start] + [torch.zeros(0)])
        cut = torch.quantile(pool, self.setting.threshold) if pool.numel() else -1.0  # nothing to offer
        candidates = {g: (relative[g] <= cut) & unfrozen[g] for g in start}
        scale = {g: mean[g] / norms.elements()[g][unfrozen[g]].mean() for g in start}  # the group's mean |w|
        lam = self.setting.lam

        def penalty() -> torch.Tensor:
            return lam * sum(scale[g] * n[candidates[g]].sum() for g, n in norms().items())

        config = TrainConfig(epochs=self.reg_epochs, lr=self.reg_lr, seed=round_.seed, schedule="constant")
        round_.train(round_.phase("regularise", model, config, penalty))
        with torch.no_grad():
            end = norms()
        zeroed = {g: ((end[g] <= self.zero * mean[g]) & unfrozen[g]).numpy() for g in end}
        plan = self._plan(round_, analysis, {g: (end[g] / mean[g]).double().numpy() for g in end}, zeroed)
        record = {"threshold": self.setting.threshold, "lam": lam,
                  "candidates": int(sum(c.sum() for c in candidates.values())),
                  "zeroed": int(sum(z.sum() for z in zeroed.values())), "inexact_folds": 0, "removal_error": 0.0}
        if not plan.num_removed:
            return Proposal(plan, model, record)
        batches = list(itertools.islice(epoch_loader(round_.train_loader, round_.seed, round_.index),
                                        self.fold_batches))
        inputs = round_.part_inputs(model, batches)
        constants = {k: all_reduce_mean(v) for k, v in measure_inputs(model, removed_inputs(plan), inputs).items()}
        folded = fold_constants(model, plan, constants)
        record["inexact_folds"] = len(folded.inexact)
        record["removal_error"] = _removal_error(model, folded.graph_module, folded.plan, inputs[0])
        return Proposal(folded.plan, folded.graph_module, record)

    def _plan(self, round_: Round, analysis: Analysis, scores: dict[int, np.ndarray],
              zeroed: dict[int, np.ndarray]) -> PruningPlan:
        """The zeroed filters, lowest first and never a group's last; with a MACs target, no more than it needs."""
        goal = 0.0 if round_.target_macs is None else round_.target_macs
        full = {g.id: scores.get(g.id, np.ones(g.size)) for g in analysis.prunable_groups}
        # the round's MACs model: ``analysis`` is the round's, re-pointed at the regularised copy
        allowed = allocate(analysis, full, goal, round_.macs_model, "global", round_.costs, min_keep=0.0)
        return PruningPlan.build(analysis, {g: [i for i in idx if g in zeroed and zeroed[g][i]]
                                            for g, idx in allowed.removals.items()})

    def observe(self, record: dict[str, Any]) -> bool:
        self.setting, go_on = next_setting(self.setting, bool(record["kept"]), int(record["channels_removed"]),
                                           max_threshold=self.max_threshold, patience=self.patience)
        return go_on

    def state(self) -> dict[str, Any]:
        return asdict(self.setting)

    def load_state(self, state: dict[str, Any]) -> None:
        self.setting = Setting(**state)


@torch.no_grad()
def _removal_error(before: torch.nn.Module, folded: torch.nn.Module, plan: PruningPlan, inputs: tuple) -> float:
    """How much removing the zeroed filters (after folding) changes the outputs: max |diff| / max |output|
    over every output tensor."""
    with eval_mode(before, folded):
        want = tree_leaves(before(*inputs))
        got = tree_leaves(MaskedReference(plan, folded).run(*inputs))
    diff = max(float((g - w).abs().max()) for g, w in zip(got, want) if isinstance(w, torch.Tensor))
    scale = max(float(w.abs().max()) for w in want if isinstance(w, torch.Tensor))
    return diff / max(scale, 1e-12)
