"""Instrumentation: attach FALF's fatuous auxiliary heads to a GraphModule.

The instrumented module shares every parameter with the original (training it
trains the original) and returns ``(original_output, (head_0, head_1, ...))``.
``remove_fatuous_heads`` gives back a module whose graph is the original one.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from torch import fx, nn
from torch.fx.passes.infra.pass_base import PassBase, PassResult
from .errors import FalfValueError

__all__ = ["FatuousHead", "AttachFatuousHeads", "default_attachment_point", "feature_map", "last_feature_map",
           "remove_fatuous_heads", "HEAD_PREFIX"]

HEAD_PREFIX = "falf_fatuous_head_"
_POINTS_KEY = "falf_fx.fatuous_points"


def _shared_root(module: nn.Module, keep) -> nn.Module:
    """A new root holding the same (not copied) children, parameters and buffers."""
    root = nn.Module()
    for name, child in module.named_children():
        if keep(name):
            root.add_module(name, child)
    for name, param in module.named_parameters(recurse=False):
        root.register_parameter(name, param)
    for name, buf in module.named_buffers(recurse=False):
        root.register_buffer(name, buf)
    for name, value in vars(module).items():  # plain tensor attributes read by get_attr
        if isinstance(value, torch.Tensor) and not hasattr(root, name):
            setattr(root, name, value)
    return root


class FatuousHead(nn.Module):
    """Global average pool over the spatial axes, then a linear layer: the meaningless task's head."""

    def __init__(self, in_channels: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_channels, out_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = features.flatten(2).mean(dim=2) if features.dim() > 2 else features
        return self.linear(pooled)


def feature_map(node: fx.Node) -> Optional[torch.Size]:
    value = node.meta.get("val")
    if isinstance(value, torch.Tensor) and value.dim() >= 3 and value.shape[2:].numel() > 1:
        return value.shape
    return None


def last_feature_map(gm: fx.GraphModule) -> Optional[fx.Node]:
    """The last node computing a feature map with a spatial extent (a classifier's pooling input), or None."""
    for node in reversed(list(gm.graph.nodes)):
        if node.op not in ("placeholder", "get_attr", "output") and feature_map(node) is not None:
            return node
    return None


def default_attachment_point(gm: fx.GraphModule) -> str:
    """The last feature map with a spatial extent (the input of the global pooling)."""
    node = last_feature_map(gm)
    if node is not None:
        return node.name
    raise FalfValueError("no feature map (batch, channels, spatial...) in this model to attach a fatuous head to; "
                     "name an attachment point explicitly")


class AttachFatuousHeads(PassBase):
    """torch.fx pass: add one FatuousHead per attachment point (node names)."""

    def __init__(self, num_outputs: int, points: Optional[Sequence[str]] = None, seed: int = 0) -> None:
        self.num_outputs = num_outputs
        self.points = list(points) if points else None
        self.seed = seed

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        points = self.points or [default_attachment_point(graph_module)]
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        original_output = graph.graph_copy(graph_module.graph, env)
        by_name = {n.name: n for n in graph_module.graph.nodes}
        root = _shared_root(graph_module, keep=lambda name: True)
        generator = torch.Generator().manual_seed(self.seed)
        heads = []
        for index, point in enumerate(points):
            if point not in by_name:
                raise FalfValueError(f"attachment point '{point}' is not a node of this graph")
            shape = feature_map(by_name[point])
            if shape is None:
                raise FalfValueError(f"attachment point '{point}' is not a feature map (batch, channels, spatial...)")
            head = FatuousHead(shape[1], self.num_outputs)
            with torch.no_grad():
                for p in head.parameters():
                    p.copy_(torch.randn(p.shape, generator=generator) * (1.0 / shape[1]) ** 0.5)
            head_name = f"{HEAD_PREFIX}{index}"
            root.add_module(head_name, head)
            heads.append(graph.call_module(head_name, (env[by_name[point]],)))
        graph.output((original_output, tuple(heads)))
        instrumented = fx.GraphModule(root, graph, f"{type(graph_module).__name__}WithFatuousHeads")
        instrumented.meta.update(graph_module.meta)
        instrumented.meta[_POINTS_KEY] = points
        instrumented.train(graph_module.training)
        return PassResult(instrumented, True)


def remove_fatuous_heads(instrumented: fx.GraphModule) -> fx.GraphModule:
    """The module without its fatuous heads: the original graph, sharing the (trained) parameters."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    main_output, _heads = graph.graph_copy(instrumented.graph, env)
    for node in reversed(list(graph.nodes)):
        if node.op == "call_module" and str(node.target).startswith(HEAD_PREFIX):
            graph.erase_node(node)
    graph.output(main_output)
    root = _shared_root(instrumented, keep=lambda name: not name.startswith(HEAD_PREFIX))
    plain = fx.GraphModule(root, graph, type(instrumented).__name__.replace("WithFatuousHeads", ""))
    plain.meta.update({k: v for k, v in instrumented.meta.items() if k != _POINTS_KEY})
    plain.train(instrumented.training)
    return plain
