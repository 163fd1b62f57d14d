"""NPN, the Network-Pruning-Network: a pruner network learns which filters the main network can lose.

Two passes do the graph work: ``passes.gates.InsertGates`` multiplies one gate
vector per prunable group into the main network (where a gate of 0 equals
removal), and ``passes.pruner_network.BuildPrunerNetwork`` turns a copy of the
main network into the pruner (gate heads in place of the classifier).  The
pair trains on ``L_main(gated main) + lam * sum of the gates`` (the l1 norm of
each sample's gates, averaged over the batch, as in the paper), alternating
epochs: pruner only (Adam at ``pruner_lr``: under SGD the l1 term moved a gate
by ~1e-4 per step), then both (SGD at ``lr``, the main network adapting to its
gates).  The sigmoid's ``alpha`` starts at 1 and is
multiplied by ``alpha_step`` after every epoch in which the gates have spread
(the standard deviation of the held-out mean gates reaches ``spread``), up to
``alpha_max``: the gates then harden to 0/1 and the main network learns to do
without the closed ones.

Decision [recon]: gates depend on the input, so a filter's fate is its mean
gate over held-out data (``val_loader``, else a held-out slice of the training
set); below ``threshold`` it goes, all in one round, and the per-layer rates
are whatever the pruner learned.  With a MACs target, a search over ``lam``
(bracketing by ``search_factor``, then bisection on log lam; each trial a full
short NPN run) picks the trial whose thresholded removals land nearest the
target, and that trial's channels are then taken in order of their mean gate
(over all groups at once: gates share one scale) up to the target, filling
when the threshold left too much, giving back when it took too much.  MACs
are counted on the slim model, not summed from per-channel costs: those
overlap (a conv losing inputs and outputs), and a one-shot method would
otherwise stop far short of its target (0.37 instead of 0.25 on LeNet-5).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import numpy as np
import torch
from torch import fx, nn
from torch.utils.data import DataLoader, RandomSampler, Subset

from falf_fx.passes.gates import GATED_GROUPS_KEY, InsertGates, remove_gates
from falf_fx.passes.plan import PruningPlan
from falf_fx.passes.pruner_network import HEADS_NAME, BuildPrunerNetwork

from ..errors import FalfError, FalfValueError
from ..planning import _repair_emptied_axes, meet_macs_goal
from ..training import TrainConfig
from .base import MethodBase, Proposal, Round, SplitOutputs, shared_scores

__all__ = ["PrunerNetwork", "GatedNetwork", "as_removals", "gate_spread", "removal_order", "threshold_removals"]


def removal_order(mean_gates: Mapping[int, np.ndarray], frozen: Mapping[int, np.ndarray],
                  threshold: float = 0.5) -> list[tuple[int, int]]:
    """(group, channel) pairs in the order to remove them; frozen channels never appear, and neither does a
    group's most open channel when it would be the group's last.  Any prefix is a valid removal set.

    Closed gates (below ``threshold``) come first, compared raw over all groups: they share one scale, and
    comparing them raw keeps the per-layer rates the pruner learned.  Open gates (a fill to a MACs target
    beyond what the pruner closed) follow, each divided by its group's mean open gate: open gates all sit
    near 1, their raw differences say nothing across layers, and taken raw they can empty one layer (LeNet-5
    collapsed to chance that way).
    """
    entries = []
    for gid, gates in mean_gates.items():
        gates = np.asarray(gates, dtype=np.float64)
        candidates = np.flatnonzero(~np.asarray(frozen[gid], dtype=bool))
        candidates = candidates[np.argsort(gates[candidates], kind="stable")]
        if candidates.size >= gates.size:
            candidates = candidates[:-1]
        open_gates = gates[gates >= threshold]
        scale = open_gates.mean() if open_gates.size else 1.0
        entries.extend(((0, float(gates[i])) if gates[i] < threshold else (1, float(gates[i] / scale)), gid, int(i))
                       for i in candidates)
    return [(gid, index) for _, gid, index in sorted(entries)]


def as_removals(pairs: list[tuple[int, int]]) -> dict[int, list[int]]:
    removals: dict[int, list[int]] = {}
    for gid, index in pairs:
        removals.setdefault(gid, []).append(index)
    return removals


def threshold_removals(mean_gates: Mapping[int, np.ndarray], frozen: Mapping[int, np.ndarray],
                       threshold: float = 0.5) -> dict[int, list[int]]:
    """Channels whose mean gate is below ``threshold``, frozen ones excepted; a group whose channels all fall
    below keeps its most open one."""
    order = removal_order(mean_gates, frozen, threshold)
    return as_removals([(gid, i) for gid, i in order if mean_gates[gid][i] < threshold])


def gate_spread(mean_gates: Mapping[int, np.ndarray], frozen: Mapping[int, np.ndarray]) -> float:
    """Standard deviation of the prunable channels' mean gates: 0 while every gate sits at its start."""
    values = [np.asarray(g, dtype=np.float64)[~frozen[gid]] for gid, g in mean_gates.items()]
    values = np.concatenate(values) if values else np.zeros(0)
    return float(values.std()) if values.size else 0.0


class GatedNetwork(nn.Module):
    """The gated main network driven by the pruner: ``forward(x) -> (main output, gates)``."""

    def __init__(self, main: fx.GraphModule, pruner: fx.GraphModule, frozen: Mapping[int, np.ndarray]) -> None:
        super().__init__()
        self.main = main
        self.pruner = pruner
        self.group_ids = tuple(main.meta[GATED_GROUPS_KEY])
        for gid in self.group_ids:  # which gates the l1 term counts (frozen channels are never gated)
            self.register_buffer(f"open_{gid}", torch.as_tensor(~frozen[gid], dtype=torch.float32), persistent=False)

    @property
    def alpha(self) -> torch.Tensor:
        return self.pruner.get_submodule(HEADS_NAME).alpha

    def gate_l1(self, gates: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return sum((g * getattr(self, f"open_{gid}")).sum(1).mean() for gid, g in zip(self.group_ids, gates))

    def forward(self, *inputs):
        gates = self.pruner(*inputs)
        return self.main(*inputs, *gates), gates


@dataclass
class _Trial:
    lam: float
    network: GatedNetwork
    mean_gates: dict[int, np.ndarray]
    order: list[tuple[int, int]]  # removal_order of the mean gates
    removals: dict[int, list[int]]  # thresholded
    macs_left: float  # the round model's MACs after the thresholded removals, counted on the slim model


@dataclass
class PrunerNetwork(MethodBase):
    """Options: ``lam`` (weight of the gates' l1; the start of the search with a MACs target),
    ``epochs`` (alternating pruner-only / both epochs per NPN run), ``lr`` (both), ``pruner_lr`` (pruner only),
    ``max_batches`` (per epoch),
    ``alpha_step``/``alpha_max``/``spread`` (hardening the gates), ``init_gate``, ``threshold``,
    ``search_trials``/``search_factor``/``search_tolerance`` (the lam search), ``heldout_fraction``
    (of the training set, when there is no val_loader), ``gate_batches`` (held-out batches for mean gates),
    ``features`` (node the gate heads read; default the classifier's input)."""

    lam: float = 0.002
    epochs: int = 4
    lr: float = 0.01
    pruner_lr: float = 1e-3
    max_batches: Optional[int] = None
    alpha_step: float = 4.0
    alpha_max: float = 32.0
    spread: float = 0.1
    init_gate: float = 0.9
    threshold: float = 0.5
    search_trials: int = 4
    search_factor: float = 10.0
    search_tolerance: float = 0.05
    heldout_fraction: float = 0.1
    gate_batches: Optional[int] = 20
    features: Optional[str] = None
    name: ClassVar[str] = "pruner_network"
    default_rounds: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if self.lam <= 0 or self.epochs < 1 or self.search_trials < 1 or self.search_factor <= 1:
            raise FalfValueError("pruner_network needs lam > 0, epochs >= 1, search_trials >= 1, search_factor > 1")
        if not 0.0 < self.threshold < 1.0:
            raise FalfValueError(f"threshold is a gate value in (0, 1), got {self.threshold}")

    # -- the protocol -------------------------------------------------------------------------------

    def propose(self, round_: Round) -> Proposal:
        train_loader, heldout, source = self._loaders(round_)
        record: dict[str, Any] = {"gates_from": source}
        if round_.target_macs is None:
            best = self._trial(round_, self.lam, 0, train_loader, heldout)
            removals = best.removals
        else:
            best, record["lambda_search"] = self._search(round_, train_loader, heldout)
            removals = self._to_goal(round_, best)
        record.update(lam=best.lam, alpha=float(best.network.alpha),
                      threshold_removed=sum(len(v) for v in best.removals.values()))
        return Proposal(self._plan(round_, removals, best.mean_gates), remove_gates(best.network.main), record)


    # -- data -----------------------------------------------------------------------------------------

    def _loaders(self, round_: Round) -> tuple[DataLoader, DataLoader, str]:
        """Training data and held-out data for the mean gates."""
        if round_.val_loader is not None:
            return round_.train_loader, round_.val_loader, "val_loader"
        loader = round_.train_loader
        try:
            size = len(loader.dataset)
        except TypeError:
            raise FalfError("pruner_network decides on held-out data: this training set has no length to split "
                            "off a held-out slice, so pass val_loader=") from None
        order = torch.randperm(size, generator=torch.Generator().manual_seed(round_.seed)).tolist()
        count = min(max(int(size * self.heldout_fraction), 1), size - 1)
        common = dict(batch_size=loader.batch_size, collate_fn=loader.collate_fn, num_workers=loader.num_workers)
        rest = DataLoader(Subset(loader.dataset, sorted(order[count:])), drop_last=loader.drop_last,
                          shuffle=isinstance(loader.sampler, RandomSampler), **common)
        return rest, DataLoader(Subset(loader.dataset, sorted(order[:count])), **common), "train_heldout"

    # -- MACs ------------------------------------------------------------------------------------------

    @staticmethod
    def _plan(round_: Round, removals: dict[int, list[int]], mean_gates: dict[int, np.ndarray]) -> PruningPlan:
        """The plan, giving back the most open channel of any tensor axis the removals would empty."""
        removals = {gid: list(v) for gid, v in removals.items()}
        _repair_emptied_axes(round_.analysis, removals, mean_gates)
        return PruningPlan.build(round_.analysis, removals)

    def _macs_left(self, round_: Round, removals: dict[int, list[int]], mean_gates: dict[int, np.ndarray]) -> float:
        """Predicted from the analysis: per-channel costs overlap (a conv loses inputs and outputs at once)."""
        if not removals:
            return round_.total_macs
        return round_.macs_model.predict(self._plan(round_, removals, mean_gates).removed_channels())

    @staticmethod
    def _to_goal(round_: Round, trial: _Trial) -> dict[int, list[int]]:
        """The shortest prefix of the trial's removal order that brings the MACs to this round's goal."""
        goal = round_.total_macs - round_.macs_to_remove
        return meet_macs_goal(round_.analysis, trial.order, goal, round_.macs_model, trial.mean_gates).removals

    # -- training -------------------------------------------------------------------------------------

    def _trial(self, round_: Round, lam: float, number: int, train_loader: DataLoader,
               heldout: DataLoader) -> _Trial:
        """One NPN run on a fresh copy of the round's model."""
        gated = InsertGates(round_.analysis)(copy.deepcopy(round_.gm)).graph_module
        groups = gated.meta[GATED_GROUPS_KEY]
        if not groups:
            raise FalfError("pruner_network: no prunable channel group of this model can be gated "
                            "(every group is frozen)")
        sizes = [round_.analysis.groups[gid].size for gid in groups]
        pruner = BuildPrunerNetwork(sizes, self.features, self.init_gate, round_.seed)(round_.gm).graph_module
        frozen = {gid: round_.analysis.groups[gid].frozen for gid in groups}
        network = GatedNetwork(gated, pruner, frozen)

        split = SplitOutputs(network)  # the user's outputs; the gates stay behind for the penalty

        def penalty() -> torch.Tensor:
            return lam * network.gate_l1(split.extra)

        for epoch in range(self.epochs):
            pruner_only = epoch % 2 == 0
            for p in network.main.parameters():
                p.requires_grad_(not pruner_only)
            seed = round_.seed * 10_007 + number * 101 + epoch
            config = (TrainConfig(epochs=1, lr=self.pruner_lr, optimizer="adam", weight_decay=0.0, seed=seed,
                                  schedule="constant", max_batches=self.max_batches) if pruner_only else
                      TrainConfig(epochs=1, lr=self.lr, schedule="constant", max_batches=self.max_batches, seed=seed))
            round_.train(round_.phase(f"npn-trial{number}-epoch{epoch}", split, config, penalty, train_loader))
            mean_gates = self._mean_gates(round_, split, heldout)
            if gate_spread(mean_gates, frozen) >= self.spread and float(network.alpha) < self.alpha_max:
                network.alpha.fill_(min(float(network.alpha) * self.alpha_step, self.alpha_max))
        for p in network.main.parameters():
            p.requires_grad_(True)
        mean_gates = self._mean_gates(round_, split, heldout)
        removals = threshold_removals(mean_gates, frozen, self.threshold)
        return _Trial(lam, network, mean_gates, removal_order(mean_gates, frozen, self.threshold), removals,
                      self._macs_left(round_, removals, mean_gates))

    @torch.no_grad()
    def _mean_gates(self, round_: Round, split: SplitOutputs, heldout: DataLoader) -> dict[int, np.ndarray]:
        """Each channel's gate averaged over held-out samples (and over DDP ranks); a part's pruner reads the
        inputs the code around it gives the part."""
        network = split.module
        was_training = network.training
        network.eval()
        sums = [None] * len(network.group_ids)
        seen = 0
        for index, batch in enumerate(heldout):
            if self.gate_batches is not None and index >= self.gate_batches:
                break
            for k, gates in enumerate(network.pruner(*round_.part_inputs(split, [batch])[0])):
                total = gates.double().sum(0)
                sums[k] = total if sums[k] is None else sums[k] + total
            seen += gates.shape[0]
        network.train(was_training)
        if seen == 0:
            raise FalfError("pruner_network: the held-out loader is empty")
        return shared_scores({gid: (s / seen).numpy() for gid, s in zip(network.group_ids, sums)})

    def _search(self, round_: Round, train_loader: DataLoader, heldout: DataLoader) -> tuple[_Trial, list[dict]]:
        """Trials over lam: widen by ``search_factor`` until the goal is bracketed, then bisect on log lam.

        The trial whose thresholded MACs land nearest the goal (in log ratio) wins.
        """
        goal = round_.total_macs - round_.macs_to_remove
        miss = lambda trial: abs(math.log(max(trial.macs_left, 1.0) / goal))  # noqa: E731
        low = high = None  # lam that removed too little / too much
        lam, best, history = self.lam, None, []
        for number in range(self.search_trials):
            trial = self._trial(round_, lam, number, train_loader, heldout)
            history.append({"lam": lam, "macs_left": trial.macs_left / round_.total_macs,
                            "removed": sum(len(v) for v in trial.removals.values())})
            if best is None or miss(trial) < miss(best):
                best = trial
            if abs(trial.macs_left - goal) <= self.search_tolerance * goal:
                break
            if trial.macs_left > goal:
                low = lam
            else:
                high = lam
            if high is None:
                lam *= self.search_factor
            elif low is None:
                lam /= self.search_factor
            else:
                lam = math.sqrt(low * high)
        return best, history
