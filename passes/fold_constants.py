"""Fold the channels a plan removes into their consumers' biases, so that removing a constant channel is exact.

A filter pushed to zero still leaves a channel behind: after BatchNorm and ReLU
its activation is a constant c, and every consumer that contracts over it adds
``c * W[:, p]`` (Linear) or ``c * sum(W[:, p])`` over the kernel (conv) to its
output.  Slimming drops that term; folding it into the consumer's bias first,
and zeroing the consumer's weights over the channel, keeps the function.

Values are per consumer input position, not per channel: one channel can reach
two consumers through different ops (one before a ReLU, one after), and a flatten
spreads it over many positions of a Linear.  :func:`measure_inputs` takes the
mean over real data: exact for a constant channel, the best constant (least
squares) for one that is only nearly constant.

Exactness: Linear layers and convs without zero padding fold exactly.  A
zero-padded conv sees the constant only inside the image; at the border some taps
read padding zeros instead of c.  Such a conv is folded anyway (exact in the
interior, the best single bias overall) and named in ``FoldResult.inexact`` when
c != 0; a channel whose constant is 0 (e.g. killed by a ReLU) folds exactly
everywhere.  Consumers the pass cannot fold (grouped or transposed convs, modules
called more than once, contractions that are not Linear/conv modules) are named
in ``FoldResult.unfolded``; removing their channels changes the function as plain
slimming does.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from .analysis import Analysis, analyze_graph
from .modes import eval_mode
from .channel_space import ParamAxis
from .plan import PlanError, PruningPlan
from .errors import FalfValueError

__all__ = ["FoldResult", "removed_inputs", "measure_inputs", "fold_constants"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class FoldResult:
    graph_module: fx.GraphModule  # a folded copy; slimming it with ``plan`` keeps the function
    plan: PruningPlan  # the plan, re-made for ``graph_module`` when a bias had to be created
    folded: dict[str, int]  # consumer module -> input positions folded
    inexact: tuple[str, ...]  # zero-padded convs given a non-zero constant: exact in the interior only
    unfolded: tuple[str, ...]  # consumers of removed channels this pass cannot fold


def _canonical(analysis: Analysis, name: str) -> str:
    return next((key for key, names in analysis.param_aliases.items() if name in names), name)


def _consumers(analysis: Analysis, plan: PruningPlan) -> tuple[dict[str, np.ndarray], list[str]]:
    """Modules whose weight contracts over removed channels: foldable ones with their positions, and the rest."""
    removed = plan.removed_channels()
    calls: dict[str, int] = {}
    for node in analysis.graph_module.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    foldable, other = {}, []
    for name, count in calls.items():
        module = analysis.graph_module.get_submodule(name)
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
            continue
        in_dim = 0 if isinstance(module, nn.modules.conv._ConvTransposeNd) else 1
        atoms = analysis.param_axes.get(ParamAxis(_canonical(analysis, f"{name}.weight"), in_dim))
        if atoms is None:
            continue
        positions = np.flatnonzero(removed[analysis.channel_of_atom[atoms]])
        if not positions.size:
            continue
        plain = isinstance(module, nn.Linear) or (isinstance(module, _CONVS) and module.groups == 1)
        if plain and count == 1:
            foldable[name] = positions
        else:
            other.append(name)
    return foldable, other


def removed_inputs(plan: PruningPlan) -> dict[str, np.ndarray]:
    """Consumer module -> positions along its input-channel axis that the plan removes (foldable ones only)."""
    return _consumers(plan.analysis, plan)[0]


@torch.no_grad()
def measure_inputs(gm: fx.GraphModule, consumers: Mapping[str, np.ndarray],
                   batches: Iterable[Any]) -> dict[str, torch.Tensor]:
    """Mean input of each consumer at the given channel positions, over ``batches`` of model inputs (eval mode):
    each a tuple of positional inputs, or the one input."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str, module: nn.Module):
        def record(_module, args):
            x = args[0].double()
            cdim = x.dim() - 1 if isinstance(module, nn.Linear) else x.dim() - (module.weight.dim() - 1)
            per_channel = x.movedim(cdim, 0).reshape(x.shape[cdim], -1)
            sums[name] = sums.get(name, 0) + per_channel.sum(1)
            counts[name] = counts.get(name, 0) + per_channel.shape[1]
        return record

    handles = [gm.get_submodule(name).register_forward_pre_hook(hook(name, gm.get_submodule(name)))
               for name in consumers]
    try:
        with eval_mode(gm):
            for batch in batches:  # a tuple of positional inputs, or one input
                gm(*batch) if isinstance(batch, tuple) else gm(batch)
    finally:
        for handle in handles:
            handle.remove()
    if consumers and not counts:
        raise FalfValueError("measure_inputs got no batches: pass at least one batch of model inputs")
    return {name: (sums[name] / counts[name])[torch.as_tensor(positions)] for name, positions in consumers.items()}


def _zero_padded(module: nn.Module) -> bool:
    if not isinstance(module, _CONVS) or module.padding_mode != "zeros":
        return False
    if isinstance(module.padding, str):
        return module.padding == "same" and any(k > 1 for k in module.kernel_size)
    return any(p > 0 for p in module.padding)


def _replan(plan: PruningPlan, analysis: Analysis) -> PruningPlan:
    """The same channels, as indices of ``analysis`` (made after new bias parameters appeared)."""
    removals: dict[int, list[int]] = {}
    for gid, indices in plan.removals.items():
        for index in indices:
            member = next((m for m in plan.analysis.groups[gid].param_members if index in m.channels), None)
            if member is None:
                raise PlanError(f"group {gid} channel {index} has no parameter to find it by after folding")
            position = member.positions[np.flatnonzero(member.channels == index)[0]]
            channel = analysis.channel_of_atom[analysis.param_axes[ParamAxis(member.name, member.dim)][position]]
            removals.setdefault(int(analysis.group_of_channel[channel]), []).append(
                int(analysis.index_in_group[channel]))
    return PruningPlan.build(analysis, removals)


@torch.no_grad()
def fold_constants(gm: fx.GraphModule, plan: PruningPlan, constants: Mapping[str, torch.Tensor]) -> FoldResult:
    """A copy of ``gm`` in which every consumer's removed inputs, taken as ``constants``, live in its bias.

    ``constants[consumer]`` holds one value per position of ``removed_inputs(plan)[consumer]``;
    the copy computes what ``gm`` computes whenever those inputs equal the constants.
    """
    foldable, unfolded = _consumers(plan.analysis, plan)
    missing = sorted(set(foldable) - set(constants))
    if missing:
        raise FalfValueError(f"no constants for the consumers {missing}: measure them with measure_inputs")
    folded_gm = copy.deepcopy(gm)
    folded, inexact, created = {}, [], False
    for name, positions in foldable.items():
        module = folded_gm.get_submodule(name)
        values = torch.as_tensor(constants[name], dtype=torch.float64)
        if values.shape != (positions.size,):
            raise FalfValueError(f"{name}: {positions.size} constants expected, got shape {tuple(values.shape)}")
        index = torch.as_tensor(positions, device=module.weight.device)
        columns = module.weight.index_select(1, index).double()  # (out, k, *kernel)
        shift = (columns.reshape(*columns.shape[:2], -1).sum(2) * values.to(columns.device)).sum(1)
        if module.bias is None:
            module.bias = nn.Parameter(torch.zeros(module.weight.shape[0], dtype=module.weight.dtype,
                                                   device=module.weight.device))
            created = True
        module.bias.add_(shift.to(module.bias.dtype))
        module.weight.index_fill_(1, index, 0.0)
        folded[name] = int(positions.size)
        if _zero_padded(module) and bool(values.ne(0).any()):
            inexact.append(name)
    if created:  # the new biases are channel axes the old analysis does not know
        new_plan = _replan(plan, analyze_graph(folded_gm))
    else:
        new_plan = PruningPlan(plan.analysis.for_module(folded_gm), plan.removals)
    return FoldResult(folded_gm, new_plan, folded, tuple(inexact), tuple(unfolded))
