"""HetConv for users: convert a model's convs, and what the conversion costs and changes.

``falf_fx.hetconv(model, x, p=4, form="blocks")`` traces ``model`` and replaces every 3×3
conv with stride 1 or 2 (except the first) by a HetConv layer initialised from its weights
(see :mod:`falf_fx.passes.hetconv`).  The result is an ordinary GraphModule: analyse,
prune, compress, save it like any other.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from rich.table import Table
from torch import fx, nn

from falf_fx.passes.hetconv import HETCONV_KEY, Selection, hetconv_graph_module

from .capture import LeafSpec, as_input_tuple, trace
from .flops import macs_by_module
from .latency import LatencySettings

__all__ = ["LayerCost", "hetconv", "hetconv_layer_costs", "cost_table", "output_distance"]


def hetconv(model: nn.Module, example_inputs: Any, *, p: int = 4, select: Selection = None, form: str = "blocks",
            latency: Optional[LatencySettings] = None, leaf_modules: Sequence[LeafSpec] = ()) -> fx.GraphModule:
    """Trace ``model`` and replace the selected convs by HetConv layers; ``model`` is untouched.

    ``form``: ``"blocks"`` (every multiply-add the design needs and no other), ``"overlap"``
    (N·M/P more per pixel, no channel gather), or ``"auto"``: both timed per layer on this
    machine under ``latency`` (batch size, threads) and the faster kept.  All are the same
    layers exactly.  ``gm.meta["falf_fx.hetconv"]`` says which convs were converted, in
    which form, and why others were not.
    """
    return hetconv_graph_module(trace(model, example_inputs, leaf_modules=leaf_modules), p, select, form, latency)


@dataclass(frozen=True)
class LayerCost:
    """One converted conv: fvcore MACs and parameters before and after."""

    name: str
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _sum_under(counts: dict[str, int], name: str) -> int:
    return sum(v for k, v in counts.items() if k == name or k.startswith(name + "."))


def hetconv_layer_costs(before: nn.Module, after: fx.GraphModule, example_inputs: Any) -> list[LayerCost]:
    """MACs and parameters of every conv ``after`` converted, in ``before`` and in ``after``."""
    macs_before, macs_after = macs_by_module(before, example_inputs), macs_by_module(after, example_inputs)
    return [LayerCost(name, _sum_under(macs_before, name), _sum_under(macs_after, name),
                      _params(before.get_submodule(name)), _params(after.get_submodule(name)))
            for name in after.meta[HETCONV_KEY]["converted"]]


def output_distance(before: nn.Module, after: nn.Module, example_inputs: Any) -> float:
    """``‖after(x) − before(x)‖ / ‖before(x)‖`` in eval mode: how far a conversion moved the outputs."""
    inputs = as_input_tuple(example_inputs)
    modes = before.training, after.training
    try:
        with torch.no_grad():
            want, got = before.eval()(*inputs), after.eval()(*inputs)
    finally:
        before.train(modes[0])
        after.train(modes[1])
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def cost_table(rows: Sequence[LayerCost], title: str) -> Table:
    table = Table(title=title, caption="MACs = multiply-accumulates as counted by fvcore; FLOPs = 2 x MACs")
    for header in ("layer", "MACs before", "MACs after", "ratio", "params before", "params after"):
        table.add_column(header, justify="left" if header == "layer" else "right")
    for r in rows:
        table.add_row(r.name, f"{r.macs_before:,}", f"{r.macs_after:,}", f"{r.macs_after / r.macs_before:.3f}",
                      f"{r.params_before:,}", f"{r.params_after:,}")
    return table
