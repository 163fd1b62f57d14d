"""CFP, filter-correlation pruning (WACV 2020): of two strongly correlated filters, one is redundant.

Each round, per prunable group:

1. every channel's *filter* is the concatenation of its slices in all of the
   group's producer weights (a residual group's filter spans every conv that
   writes into it), flattened; Pearson |rho| between every pair of filters;
2. the most correlated disjoint pairs are taken, as many per group as the round's
   allocation (``compress(allocation=...)``) removes from it to meet this round's
   share of the MACs target.  The paper's count proportional to a layer's FLOPs
   gave a residual stream (one group over every conv on the stream) the most
   pairs, and cut it hardest: ResNet-20 at 8x lost most there;
3. correlation-raising phase: train ``L + mu * R`` for ``raise_epochs``, where R
   pulls the chosen pairs to |rho| = 1, so that dropping one of each pair loses
   little; ``raise_epochs=0`` skips it (the ablation arm);
4. one filter of each pair is dropped, the one with the smaller l1 norm over all
   of the group's weights (producer filters, norm scales and the next layer's
   input slices: the one the network relies on less); compress fine-tunes.

The regulariser.  The paper writes ``exp(-sum |rho|)``.  Its gradient on one
pair is ``exp(-sum |rho|)``, a factor shared by every pair: with 50 pairs at
|rho| = 0.3 it is exp(-15) = 3e-7, so nothing moves.  ``penalty="exp"`` (the
default) is the per-pair form ``sum exp(-|rho|)``, whose gradient on each pair
is exp(-|rho|) in [0.37, 1] whatever the other pairs do; ``"linear"``,
``sum (1 - |rho|)``, has gradient 1; ``"paper"`` keeps the original to measure it.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from falf_fx.passes.analysis import ChannelGroup, tensor_named
from falf_fx.passes.plan import PruningPlan

from ..errors import FalfValueError
from ..importance import group_importance
from ..planning import _repair_emptied_axes
from ..training import TrainConfig
from .base import MethodBase, Proposal, Round

__all__ = ["Correlation", "PENALTIES", "correlation_penalty", "pair_pearson", "pearson", "producer_filters",
           "select_pairs"]

PENALTIES = ("exp", "linear", "paper")
Pair = tuple[int, int]  # (kept channel, dropped channel), indices in the group


def _is_transposed(module: nn.Module, owner: str) -> bool:
    try:
        return isinstance(module.get_submodule(owner), nn.modules.conv._ConvTransposeNd)
    except AttributeError:  # a functional producer: the owner is the weight's own name
        return False


def _producer_members(module: nn.Module, group: ChannelGroup) -> list:
    """The group's slices along the output axis of each producer's weight."""
    found = []
    for owner in group.producers:
        members = [m for m in group.param_members if m.name in (owner, f"{owner}.weight")]
        if len(members) > 1:  # input and output axes in one group: keep the output axis
            members = [m for m in members if m.dim == (1 if _is_transposed(module, owner) else 0)]
        found.extend(m for m in members if tensor_named(module, m.name).dim() >= 2)
    return found


def producer_filters(module: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """One row per channel of ``group``: its producer slices, flattened and concatenated.

    Differentiable in ``module``'s parameters (the regulariser trains through it).
    A producer that covers only some channels (several positions per channel, as
    in a grouped conv, or none) leaves zeros in the others' rows.
    """
    blocks = []
    for member in _producer_members(module, group):
        weight = tensor_named(module, member.name)
        flat = weight.movedim(member.dim, 0).reshape(weight.shape[member.dim], -1)
        rows = flat[torch.tensor(member.positions)]
        order = np.lexsort((member.positions, member.channels))
        channels = member.channels[order]
        starts = np.searchsorted(channels, channels)  # the k-th position of a channel goes to block k
        rank = np.arange(channels.size) - starts
        block = rows.new_zeros(group.size, int(rank.max()) + 1, rows.shape[1])
        block[torch.as_tensor(channels), torch.as_tensor(rank)] = rows[torch.as_tensor(order)]
        blocks.append(block.reshape(group.size, -1))
    if not blocks:
        return torch.zeros(group.size, 0)
    return torch.cat(blocks, dim=1)


def _standardised(filters: torch.Tensor) -> torch.Tensor:
    """Rows centred and scaled to unit norm, so dot products are Pearson coefficients (0 for a flat row)."""
    centred = filters - filters.mean(dim=1, keepdim=True)
    return centred / centred.norm(dim=1, keepdim=True).clamp_min(1e-12)


def pearson(filters: torch.Tensor) -> torch.Tensor:
    """Pearson correlation between every pair of rows (like ``numpy.corrcoef``)."""
    z = _standardised(filters)
    return z @ z.T


def pair_pearson(filters: torch.Tensor, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of rows ``first[k]`` and ``second[k]`` only, for each k."""
    z = _standardised(filters)
    return (z[first] * z[second]).sum(dim=1)


def correlation_penalty(rho: torch.Tensor, form: str = "exp") -> torch.Tensor:
    """R, small when every |rho| is near 1 (see the module docstring for why not the paper's form)."""
    if form == "exp":
        return torch.exp(-rho.abs()).sum()
    if form == "linear":
        return (1.0 - rho.abs()).sum()
    if form == "paper":
        return torch.exp(-rho.abs().sum())
    raise FalfValueError(f"penalty must be one of {PENALTIES}, not {form!r}")


def _orient(a: int, b: int, score: np.ndarray, frozen: np.ndarray) -> Pair:
    """(keep, drop): drop the lower score, never a frozen channel; ties drop the later index."""
    if frozen[b] or (not frozen[a] and score[a] < score[b]):
        return b, a
    return a, b


def select_pairs(correlation: Mapping[int, np.ndarray], quotas: Mapping[int, int], frozen: Mapping[int, np.ndarray],
                 scores: Mapping[int, np.ndarray]) -> dict[int, list[Pair]]:
    """Per group, its ``quotas[gid]`` most correlated disjoint pairs (fewer if it runs out).

    The quotas come from the round's allocation, so CFP cuts every group by the
    share the allocation gives it; the paper's counts proportional to a layer's
    FLOPs cut a residual stream (whose group spans every conv on the stream)
    hardest by construction.  A pair of two frozen channels is never taken, and
    disjoint pairs never empty a group.
    """
    taken = {}
    for gid, rho in correlation.items():
        n, quota = rho.shape[0], int(quotas.get(gid, 0))
        if quota <= 0 or n < 2:
            continue
        first, second = np.triu_indices(n, k=1)
        keep = ~(frozen[gid][first] & frozen[gid][second])
        first, second = first[keep], second[keep]
        order = np.argsort(-np.abs(rho[first, second]), kind="stable")
        used: set[int] = set()
        pairs = []
        for a, b in zip(first[order].tolist(), second[order].tolist()):
            if len(pairs) == quota:
                break
            if a not in used and b not in used:
                used.update((a, b))
                pairs.append(_orient(a, b, scores[gid], frozen[gid]))
        if pairs:
            taken[gid] = pairs
    return taken


@dataclass
class Correlation(MethodBase):
    """Options: ``mu`` (weight of R), ``raise_epochs`` (0: no correlation-raising phase),
    ``raise_lr``, ``penalty`` (``exp``, ``linear`` or ``paper``)."""

    mu: float = 1.0
    raise_epochs: int = 1
    raise_lr: float = 0.01
    penalty: str = "exp"
    name: ClassVar[str] = "correlation"
    default_rounds: ClassVar[int] = 4  # CFP prunes in small steps; compress spreads the MACs target over the rounds

    def __post_init__(self) -> None:
        if self.penalty not in PENALTIES:
            raise FalfValueError(f"penalty must be one of {PENALTIES}, not {self.penalty!r}")
        if not isinstance(self.raise_epochs, int) or self.raise_epochs < 0:
            raise FalfValueError(f"raise_epochs must be a whole number >= 0, not {self.raise_epochs!r}")
        if float(self.mu) < 0:
            raise FalfValueError(f"mu must be >= 0, not {self.mu!r}")

    def propose(self, round_: Round) -> Proposal:
        analysis = round_.analysis
        groups = {g.id: g for g in analysis.prunable_groups}
        with torch.no_grad():
            correlation = {gid: pearson(producer_filters(round_.gm, g).double()).numpy()
                           for gid, g in groups.items()}
        l1 = group_importance(analysis, "l1")
        quotas = {gid: len(idx) for gid, idx in round_.allocate(l1).removals.items()}  # the allocation's share
        pairs = select_pairs(correlation, quotas, {gid: g.frozen for gid, g in groups.items()}, l1)
        model = copy.deepcopy(round_.gm)  # a round compress rejects leaves the previous model untouched
        rho_before = self._pair_rho(model, groups, pairs)
        if self.raise_epochs and pairs:
            self._raise(round_, model, groups, pairs)
        trained = analysis.for_module(model)
        scores = group_importance(trained, "l1")  # which one of a pair goes is decided after raising
        removals = {gid: sorted(_orient(a, b, scores[gid], groups[gid].frozen)[1] for a, b in group_pairs)
                    for gid, group_pairs in pairs.items()}
        _repair_emptied_axes(trained, removals, scores)
        record = {"pairs": sum(len(p) for p in pairs.values()), "rho_before": rho_before,
                  "rho_after": self._pair_rho(model, groups, pairs)}
        return Proposal(PruningPlan.build(trained, removals), model, record)

    def _raise(self, round_: Round, model: nn.Module, groups: dict, pairs: dict[int, list[Pair]]) -> None:
        """Train ``model`` in place on the task loss + ``mu * R(chosen pairs)``."""
        index = {gid: (torch.tensor([p[0] for p in ps]), torch.tensor([p[1] for p in ps]))
                 for gid, ps in pairs.items()}

        def penalty() -> torch.Tensor:
            rho = torch.cat([pair_pearson(producer_filters(model, groups[gid]), *ab) for gid, ab in index.items()])
            return self.mu * correlation_penalty(rho, self.penalty)

        config = TrainConfig(epochs=self.raise_epochs, lr=self.raise_lr, seed=round_.seed, schedule="constant")
        round_.train(round_.phase("correlate", model, config, penalty))

    @staticmethod
    def _pair_rho(model: nn.Module, groups: dict, pairs: dict[int, list[Pair]]) -> float | None:
        """Mean |rho| of the chosen pairs: how far the raising phase got."""
        if not pairs:
            return None
        with torch.no_grad():
            rho = torch.cat([pair_pearson(producer_filters(model, groups[gid]).double(),
                                          torch.tensor([p[0] for p in ps]), torch.tensor([p[1] for p in ps]))
                             for gid, ps in pairs.items()])
        return round(float(rho.abs().mean()), 4)

    def observe(self, record: dict[str, Any]) -> bool:
        return bool(record["kept"]) and record["channels_removed"] > 0

