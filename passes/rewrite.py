"""The rewrite pass: a new GraphModule with the planned channels physically removed."""
from __future__ import annotations

import copy
from typing import Any, Optional

import numpy as np
import torch
from torch import fx, nn
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from .analysis import Analysis, graph_fingerprint, tensor_named
from .errors import FalfError, FalfValueError
from .plan import PlanError, PruningPlan
from .rule_registry import SlimView, rule_for
from .shape_prop import ShapePropagationError, fake_inputs_like, propagate_shapes

__all__ = ["SlimError", "SlimPass", "slim_graph_module", "REMOVED_KEY"]

REMOVED_KEY = "falf_fx.removed"  # gm.meta entry on a slim module: {parameter name: kept indices per dim}


class SlimError(FalfError, RuntimeError):
    """The slim module does not have the shapes the analysis predicted (a bug: please report it)."""


class SlimPass(PassBase):
    """torch.fx pass: apply a PruningPlan made for the module it receives."""

    def __init__(self, plan: PruningPlan, verify: bool = True) -> None:
        self.plan = plan
        self.verify = verify

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        return PassResult(slim_graph_module(graph_module, self.plan, verify=self.verify), True)


def _slim_view(analysis: Analysis, removed: np.ndarray) -> SlimView:
    nodes = {n.name: n for n in analysis.graph_module.graph.nodes}

    def kept_of(atoms: np.ndarray) -> np.ndarray:
        return ~removed[analysis.channel_of_atom[atoms]]

    def kept(node_name: str, dim: int) -> Optional[np.ndarray]:
        layout = analysis.layouts.get(node_name)
        if isinstance(layout, dict) and dim in layout:
            return kept_of(layout[dim])
        return None

    def slim_of(value: Any, layout: Any) -> Any:
        if isinstance(value, torch.Tensor):
            shape = list(value.shape)
            for dim, atoms in (layout or {}).items():
                shape[dim] = int(kept_of(atoms).sum())
            return torch.Size(shape)
        if isinstance(value, (tuple, list)):
            parts = layout if isinstance(layout, tuple) else (None,) * len(value)
            return tuple(slim_of(v, p) for v, p in zip(value, parts))
        return value

    def slim_value(node_name: str) -> Any:
        return slim_of(nodes[node_name].meta.get("val"), analysis.layouts.get(node_name))

    return SlimView(kept, slim_value)


def _cuts(analysis: Analysis, removed: np.ndarray) -> dict[str, dict[int, np.ndarray]]:
    """Kept indices per cut dim of every parameter or buffer the plan slices, by qualified name."""
    by_name: dict[str, dict[int, np.ndarray]] = {}
    for axis, atoms in analysis.param_axes.items():
        kept = ~removed[analysis.channel_of_atom[atoms]]
        if not kept.all():
            by_name.setdefault(axis.name, {})[axis.dim] = np.flatnonzero(kept)
    return by_name


def _slim_tensor(tensor: torch.Tensor, dims: dict[int, np.ndarray]) -> torch.Tensor:
    sliced = _gather(tensor.detach(), dims)
    return nn.Parameter(sliced, requires_grad=tensor.requires_grad) if isinstance(tensor, nn.Parameter) else sliced


def _sliced_tensors(gm: fx.GraphModule, cuts: dict[str, dict[int, np.ndarray]]) -> dict[int, Any]:
    """The slim version of every tensor the plan cuts, keyed by the id of the full-size tensor.

    Handed to ``deepcopy`` as its memo, so the copy starts with the slim tensors
    and never holds a full-size copy of the ones it cuts (peak memory ~ the slim model).
    """
    replacements: dict[int, Any] = {}
    for name, dims in cuts.items():
        tensor = tensor_named(gm, name)
        replacements[id(tensor)] = _slim_tensor(tensor, dims)  # every alias of a tied tensor is this one object
    return replacements


def _slice_in_place(gm: fx.GraphModule, cuts: dict[str, dict[int, np.ndarray]]) -> None:
    """Swap every cut tensor for its slim version, one at a time, in every module that holds it.

    Each full-size tensor is released as soon as its slim version is in place,
    so slimming needs memory for one tensor at a time, not for the slim model.
    """
    holders: dict[int, list[tuple[dict, str]]] = {}  # tied tensors: every (store, key) holding one object
    for module in gm.modules():
        for store in (module._parameters, module._buffers):
            for key, tensor in store.items():
                if tensor is not None:
                    holders.setdefault(id(tensor), []).append((store, key))
    for name, dims in cuts.items():
        tensor = tensor_named(gm, name)
        sliced = _slim_tensor(tensor, dims)
        for store, key in holders.pop(id(tensor), ()):
            store[key] = sliced
        del tensor, sliced


def _gather(tensor: torch.Tensor, dims: dict[int, np.ndarray]) -> torch.Tensor:
    """``tensor`` with only the kept positions of each cut dim, in one allocation.

    Several adjacent cut dims (a weight's out/in pair) are gathered by one
    indexing op with broadcast index arrays: cutting one dim after the other
    made a half-cut temporary per tensor, and the freed temporaries kept
    slimming's resident peak ~30% above the slim tensors.
    """
    cut = sorted(dims)
    if len(cut) == 1 or cut != list(range(cut[0], cut[0] + len(cut))):  # apart: numpy rules reorder the dims
        for dim in cut:
            tensor = tensor.index_select(dim, torch.as_tensor(dims[dim], device=tensor.device))
        return tensor.contiguous()
    index: list[Any] = [slice(None)] * tensor.dim()
    for rank, dim in enumerate(cut):
        shape = [1] * len(cut)
        shape[rank] = -1
        index[dim] = torch.as_tensor(dims[dim], device=tensor.device).reshape(shape)
    return tensor[tuple(index)].contiguous()


def _copy_with(gm: fx.GraphModule, replacements: dict[int, Any]) -> fx.GraphModule:
    """A deep copy of ``gm`` in which the tensors named in ``replacements`` are already slim."""
    memo = dict(replacements)
    memo[id(memo)] = [gm]  # deepcopy's keep-alive list: the full-size tensors outlive the copy
    analysis = gm.meta.get("falf_fx.analysis")
    if analysis is not None:
        memo[id(analysis)] = None  # a stored Analysis describes the full-size module: dropped below
    return copy.deepcopy(gm, memo)


def _first_tensor_arg(node: fx.Node) -> Optional[fx.Node]:
    for arg in node.all_input_nodes:
        if isinstance(arg.meta.get("val"), torch.Tensor):
            return arg
    return None


def _check_shapes(slim: fx.GraphModule, expected_shapes: dict[str, Any]) -> None:
    """Every node's propagated shape against the one the analysis predicted (taken before slimming)."""
    for node in slim.graph.nodes:
        if node.op in ("output",) or "val" not in node.meta:
            continue
        expected = expected_shapes.get(node.name)  # None: a node the rewrite added (a mean's rescaling)
        got = fx.node.map_aggregate(node.meta["val"], lambda v: v.shape if isinstance(v, torch.Tensor) else v)
        if isinstance(expected, torch.Size) and torch.Size(got) != expected:
            raise SlimError(f"node '{node.name}' has shape {tuple(got)} after slimming, expected {tuple(expected)}; "
                            "this is a falf_fx bug, please report it with the model")


def slim_graph_module(gm: fx.GraphModule, plan: PruningPlan, verify: bool = True,
                      inplace: bool = False) -> fx.GraphModule:
    """The GraphModule without the planned channels.

    By default a new module, ``gm`` untouched.  ``inplace=True`` slims ``gm``
    itself and returns it: no copy, and each full-size tensor is freed as its
    slim one replaces it (the way Torch-Pruning works).  ``gm`` shares its
    submodules with the model it was traced from, so that model is spent too,
    as are ``plan`` and its analysis.
    """
    analysis = plan.analysis
    if graph_fingerprint(gm) != plan.fingerprint:
        raise PlanError(f"this plan was made for another graph (fingerprint {plan.fingerprint[:12]}, the module's is "
                        f"{graph_fingerprint(gm)[:12]}): analyse the module you slim and plan on that analysis")
    if inplace and gm is not analysis.graph_module:
        raise FalfValueError("inplace=True slims the very module the plan's analysis was made from")
    plan.validate()
    removed = plan.removed_channels()
    view = _slim_view(analysis, removed)
    expected = {n.name: view.slim_value(n.name) for n in gm.graph.nodes} if verify else {}
    cuts = _cuts(analysis, removed)
    modules = dict(gm.named_modules(remove_duplicate=False))
    graph = gm.graph if inplace else copy.deepcopy(gm.graph)  # a copy's nodes share meta dicts shallowly
    for node in graph.nodes:
        rule = rule_for(node, modules)
        if rule is not None and rule.rewrite_args is not None:
            rule.rewrite_args(node, view)
    if inplace:
        _slice_in_place(gm, cuts)
        gm.recompile()
        slim = gm
    else:
        replacements = _sliced_tensors(gm, cuts)
        replacements[id(gm.graph)] = graph  # the copy compiles the rewritten graph once, no second recompile
        slim = _copy_with(gm, replacements)
        del replacements
        modules = dict(slim.named_modules(remove_duplicate=False))
    for node in slim.graph.nodes:
        rule = rule_for(node, modules)
        if rule is not None and rule.refresh_module is not None and node.op == "call_module":
            source = _first_tensor_arg(node)
            rule.refresh_module(modules[node.target], view.slim_value(source.name), view.slim_value(node.name))
    slim.graph.lint()
    slim.meta[REMOVED_KEY] = {name: {dim: keep.tolist() for dim, keep in dims.items()} for name, dims in cuts.items()}
    slim.meta.pop("falf_fx.analysis", None)
    if verify:
        try:
            propagate_shapes(slim, fake_inputs_like(gm))
        except ShapePropagationError as error:  # the original ran on these inputs: the rewrite is at fault
            raise SlimError(f"the slim model does not run where the original did: {error.failure}; this is a "
                            "falf_fx bug (an op whose sizes the rewrite did not follow), please report it with the "
                            "model; meanwhile ignore=[...] naming the module keeps its channels") from error
        _check_shapes(slim, expected)
    return slim

