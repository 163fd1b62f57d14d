"""Cost counting with fvcore: MACs (fvcore's "flops"), FLOPs = 2 x MACs, parameters."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import warnings

import torch
from torch import nn

with warnings.catch_warnings():  # fvcore's import calls the deprecated torch.jit.script
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn import FlopCountAnalysis

from falf_fx.passes.analysis import Analysis
from falf_fx.passes.modes import attributes_kept, eval_mode

from .capture import as_input_tuple

__all__ = ["Cost", "cost_and_macs_by_module", "count_cost", "layer_widths", "macs_by_module",
           "prunable_macs_share"]


@dataclass(frozen=True)
class Cost:
    """Multiply-accumulates and parameters of one forward pass (batch as given)."""

    macs: int
    params: int

    @property
    def flops(self) -> int:
        return 2 * self.macs


def _analysis(model: nn.Module, inputs: tuple) -> FlopCountAnalysis:
    counter = FlopCountAnalysis(model, inputs)
    counter.unsupported_ops_warnings(False)
    counter.uncalled_modules_warnings(False)
    counter.tracer_warnings("none")
    return counter


def cost_and_macs_by_module(model: nn.Module, example_inputs: Any) -> tuple[Cost, dict[str, int]]:
    """The model's cost and the MACs of every leaf module (functional ops count for their parent).

    One fvcore trace gives both; compress needs the two after every round.
    """
    inputs = as_input_tuple(example_inputs)
    with torch.no_grad(), eval_mode(model), attributes_kept(model):
        counter = _analysis(model, inputs)
        macs, counts = int(counter.total()), counter.by_module()
    leaves = {name for name, m in model.named_modules() if not list(m.children())}
    return (Cost(macs, sum(p.numel() for p in model.parameters())),
            {name: int(v) for name, v in counts.items() if name in leaves})


def count_cost(model: nn.Module, example_inputs: Any) -> Cost:
    return cost_and_macs_by_module(model, example_inputs)[0]


def macs_by_module(model: nn.Module, example_inputs: Any) -> dict[str, int]:
    """MACs of every leaf module by qualified name (functional ops count for their parent)."""
    return cost_and_macs_by_module(model, example_inputs)[1]


def prunable_macs_share(analysis: Analysis, example_inputs: Any) -> float:
    """Share of the model's MACs spent in layers that a prunable group can slim."""
    gm = analysis.graph_module
    cost, per_module = cost_and_macs_by_module(gm, example_inputs)
    total = cost.macs
    touched = set()
    for group in analysis.prunable_groups:
        for member in group.param_members:
            touched.add(member.name.rpartition(".")[0])
    prunable = sum(macs for name, macs in per_module.items() if name in touched)
    return prunable / total if total else 0.0


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv and linear layer, by qualified name: what pruning changes."""
    return {name: m.out_channels if hasattr(m, "out_channels") else m.out_features
            for name, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))}
