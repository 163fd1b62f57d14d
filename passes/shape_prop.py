"""Shapes without real compute: every node gets ``node.meta["val"]`` (a tensor on the meta device).

Three tiers, cheapest first: meta tensors (the module's parameters swapped for
meta copies; no data, little dispatch overhead), fake tensors (FakeTensorMode's
decompositions cover ops without a meta kernel), and real tensors for leaves
whose forward reads tensor values.  Every tier stores meta tensors, so readers
see one kind of value whichever tier ran.
"""
from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence

import torch
from torch import fx, nn
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


def _meta_like(value: torch.Tensor) -> torch.Tensor:
    if value.is_meta and type(value) is torch.Tensor:
        return value
    return torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device="meta")


def _to_meta(value):
    """Every tensor in a (nested) value as a meta tensor of the same shape, strides and dtype."""
    return fx.node.map_aggregate(value, lambda v: _meta_like(v) if isinstance(v, torch.Tensor) else v)


class _RecordingInterpreter(fx.Interpreter):
    """Runs the graph and records every node's value as meta tensors."""

    def run_node(self, n: fx.Node):
        result = super().run_node(n)
        n.meta["val"] = _to_meta(result)
        return result


class _MetaInterpreter(_RecordingInterpreter):
    """Attributes that are plain tensors (not parameters or buffers) go to meta too."""

    def fetch_attr(self, target: str):
        return _to_meta(super().fetch_attr(target))


class _MetaRunner(nn.Module):
    """Lets ``functional_call`` swap the graph module's tensors for meta copies while it runs."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__()
        self.gm = gm

    def forward(self, *args):
        return _MetaInterpreter(self.gm).run(*args)


def _failing_node(gm: fx.GraphModule, exc: BaseException) -> str:
    for node in gm.graph.nodes:
        if "val" not in node.meta and node.op != "output":
            where = f"module '{node.target}'" if node.op == "call_module" else f"node '{node.name}' ({node.target})"
            return where
    return "the graph"


def propagate_shapes(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor]) -> None:
    """Fill ``node.meta["val"]``; meta tensors first, fake or real tensors only where those fail.

    Runs in eval mode (a BatchNorm in training mode refuses a batch of one
    1x1 feature map, and shapes do not depend on the mode), then restores every
    module's mode, and every buffer if a fallback ran on the real ones:
    analysing a model must not change it.
    """
    modes = {name: m.training for name, m in gm.named_modules()}
    gm.eval()
    try:
        if not _propagate_meta(gm, example_inputs):
            saved = {name: buffer.clone() for name, buffer in gm.named_buffers()}
            try:
                _propagate_fallback(gm, example_inputs)
            finally:
                with torch.no_grad():
                    for name, buffer in gm.named_buffers():
                        if name in saved:
                            buffer.copy_(saved[name])
    finally:
        for name, m in gm.named_modules():
            m.training = modes.get(name, m.training)


def _clear(gm: fx.GraphModule) -> None:
    for node in gm.graph.nodes:
        node.meta.pop("val", None)


def _propagate_meta(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor]) -> bool:
    """True when the whole graph ran on meta tensors (nothing of the module's own is touched)."""
    _clear(gm)
    tensors = itertools.chain(gm.named_parameters(), gm.named_buffers())
    swapped = {f"gm.{name}": torch.empty_like(t, device="meta") for name, t in tensors}
    try:
        with torch.no_grad(), torch.device("meta"):
            torch.func.functional_call(_MetaRunner(gm), swapped, tuple(_to_meta(list(example_inputs))))
        return True
    except Exception:  # noqa: BLE001 - an op without a meta kernel, or a leaf reading values: the fallbacks decide
        return False


def _propagate_fallback(gm: fx.GraphModule, example_inputs: Sequence[torch.Tensor]) -> None:
    _clear(gm)
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    fake = [mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in example_inputs]
    try:
        with torch.no_grad():
            FakeTensorProp(gm, mode).propagate(*fake)
        for node in gm.graph.nodes:
            if "val" in node.meta:
                node.meta["val"] = _to_meta(node.meta["val"])
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
    _clear(gm)
    try:
        with torch.no_grad():
            _RecordingInterpreter(gm).run(*example_inputs)
    except Exception as error:
        raise ShapePropagationError(f"{_failing_node(gm, error)} failed on the example inputs: "
                                    f"{str(error).splitlines()[0]}") from error
