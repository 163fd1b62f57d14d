"""Shapes on fake tensors: every node gets ``node.meta["val"]`` without real compute."""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import fx
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from .errors import FalfError

__all__ = ["ShapePropagationError", "propagate_shapes", "fake_inputs_like"]


class ShapePropagationError(FalfError, RuntimeError):
    """The model cannot run on the given example inputs; names the node that failed."""


def fake_inputs_like(gm: fx.GraphModule) -> list[torch.Tensor]:
    """Empty tensors with the placeholders' recorded shapes and dtypes."""
    return [torch.empty(n.meta["val"].shape, dtype=n.meta["val"].dtype)
            for n in gm.graph.nodes if n.op == "placeholder"]


class _RealShapeProp(fx.Interpreter):
    """Fallback for leaves whose forward reads tensor values (data-dependent control flow)."""

    def run_node(self, n: fx.Node):
        result = super().run_node(n)
        n.meta["val"] = fx.node.map_aggregate(
            result, lambda v: v.detach().to("meta") if isinstance(v, torch.Tensor) else v)
        return result


def _failing_node(gm: fx.GraphModule, exc: BaseException) -> str:
    for node in gm.graph.nodes:
        if "val" not in node.meta and node.op != "output":
            where = f"module '{node.target}'" if node.op == "call_module" else f"node '{node.name}' ({node.target})"
            return where
    return "the graph"


def propagate_shapes(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor]) -> None:
    """Fill ``node.meta["val"]``; fake tensors first, real tensors only if a leaf needs values.

    Runs in eval mode (a BatchNorm in training mode refuses a batch of one
    1x1 feature map, and shapes do not depend on the mode), then restores every
    module's mode and every buffer: analysing a model must not change it.
    """
    saved = {name: buffer.clone() for name, buffer in gm.named_buffers()}
    modes = {name: m.training for name, m in gm.named_modules()}
    gm.eval()
    try:
        _propagate(gm, example_inputs)
    finally:
        for name, m in gm.named_modules():
            m.training = modes.get(name, m.training)
        with torch.no_grad():
            for name, buffer in gm.named_buffers():
                if name in saved:
                    buffer.copy_(saved[name])


def _propagate(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor]) -> None:
    for node in gm.graph.nodes:
        node.meta.pop("val", None)
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    fake = [mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in example_inputs]
    try:
        with torch.no_grad():
            FakeTensorProp(gm, mode).propagate(*fake)
        return
    except Exception as fake_error:  # noqa: BLE001 - retried for real below, reported if that fails too
        data_dependent = "data-dependent" in str(fake_error).lower() or "DataDependent" in type(fake_error).__name__
        if not data_dependent:
            shapes = ", ".join(str(tuple(t.shape)) for t in example_inputs if isinstance(t, torch.Tensor))
            raise ShapePropagationError(
                f"the model does not run on example inputs of shape {shapes}: {_failing_node(gm, fake_error)} "
                f"failed with: {str(fake_error).splitlines()[0]}") from fake_error
    warnings.warn("falf_fx: a leaf module reads tensor values; shapes were propagated on real tensors",
                  stacklevel=3)
    for node in gm.graph.nodes:
        node.meta.pop("val", None)
    try:
        with torch.no_grad():
            _RealShapeProp(gm).run(*example_inputs)
    except Exception as error:
        raise ShapePropagationError(f"{_failing_node(gm, error)} failed on the example inputs: "
                                    f"{str(error).splitlines()[0]}") from error
