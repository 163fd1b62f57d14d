"""Build NPN's pruner network from the main network's own graph.

The pruner is a deep copy of the main network (its own parameters, starting
from the main network's trained ones) whose classifier is replaced by one head
per gated group: a linear layer from the classifier's input features to the
group's size, emitting gates ``sigmoid(alpha * z)`` (the scaled sigmoid of the
paper; ``alpha`` is a buffer, so raising it is saved with the checkpoints).
It takes the main network's inputs and returns a tuple of gates, one
``(batch, group size)`` tensor per group, in the order of the gate inputs of
``passes.gates.InsertGates``.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Optional

import torch
from torch import fx, nn
from torch.fx.passes.infra.pass_base import PassBase, PassResult
from .errors import FalfValueError
from .instrument import last_feature_map

__all__ = ["GateHeads", "BuildPrunerNetwork", "gate_features", "HEADS_NAME"]

HEADS_NAME = "npn_gate_heads"


class GateHeads(nn.Module):
    """One linear head per group on pooled features; gates start near ``init_gate`` for every input."""

    def __init__(self, in_features: int, sizes: Sequence[int], init_gate: float = 0.9, seed: int = 0) -> None:
        super().__init__()
        if not 0.0 < init_gate < 1.0:
            raise FalfValueError(f"init_gate is a gate value in (0, 1), got {init_gate}")
        self.heads = nn.ModuleList(nn.Linear(in_features, size) for size in sizes)
        self.register_buffer("alpha", torch.tensor(1.0))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for head in self.heads:
                head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.01 / in_features ** 0.5)
                head.bias.fill_(math.log(init_gate / (1.0 - init_gate)))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pooled = features.flatten(2).mean(dim=2) if features.dim() > 2 else features
        return tuple(torch.sigmoid(self.alpha * head(pooled)) for head in self.heads)


def _is_classifier(node: fx.Node, gm: fx.GraphModule) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), nn.Linear)
    return node.op == "call_function" and node.target is nn.functional.linear


def gate_features(gm: fx.GraphModule) -> fx.Node:
    """What the gate heads read: the input of the last linear layer on the way to the output (what a
    classifier reads), else the last feature map with a spatial extent (a segmenter's or detector's head)."""
    output = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    node = output.args[0]
    while isinstance(node, fx.Node):
        if _is_classifier(node, gm):
            return node.args[0]
        inputs = [n for n in node.all_input_nodes if n.op != "get_attr"]
        node = inputs[0] if len(inputs) == 1 else None
    node = last_feature_map(gm)
    if node is not None:
        return node
    raise FalfValueError("neither a classifier (a Linear feeding the output through single-input ops) nor a "
                         "feature map for the gate heads to read: name the node with features=")


class BuildPrunerNetwork(PassBase):
    """torch.fx pass: the main network's copy with ``GateHeads`` in place of its classifier."""

    def __init__(self, sizes: Sequence[int], features: Optional[str] = None, init_gate: float = 0.9,
                 seed: int = 0) -> None:
        self.sizes = list(sizes)
        self.features = features
        self.init_gate = init_gate
        self.seed = seed

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        pruner = copy.deepcopy(graph_module)
        graph = pruner.graph
        by_name = {n.name: n for n in graph.nodes}
        if self.features is not None and self.features not in by_name:
            raise FalfValueError(f"features='{self.features}' is not a node of this graph")
        features = by_name[self.features] if self.features else gate_features(pruner)
        value = features.meta.get("val")
        if not isinstance(value, torch.Tensor) or value.dim() < 2:
            raise FalfValueError(f"the gate heads read node '{features.name}', which is not a (batch, features...) "
                             "tensor: name another node with features=")
        pruner.add_module(HEADS_NAME, GateHeads(int(value.shape[1]), self.sizes, self.init_gate, self.seed))
        output = next(n for n in reversed(graph.nodes) if n.op == "output")
        with graph.inserting_before(output):
            heads = graph.call_module(HEADS_NAME, (features,))
        output.args = (heads,)
        graph.eliminate_dead_code()
        graph.lint()
        result = fx.GraphModule(pruner, graph, f"{type(graph_module).__name__}Pruner")
        result.meta.update(graph_module.meta)
        result.train(graph_module.training)
        return PassResult(result, True)
