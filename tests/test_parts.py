"""Capture in parts: what cannot be traced is split into what can, and pruned inside, its interface kept."""
from __future__ import annotations

import warnings

import torch
from torch import fx, nn

import falf_fx
from falf_fx.parts import capture_parts
from falf_fx.testing import check_equivalence


class Gate(nn.Module):
    """Control flow on tensor values around a block that traces well."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 8, 3, padding=1))

    def forward(self, x):
        return self.body(x) if x.mean() > 0 else -self.body(x)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.gate = Gate()
        self.head = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 4, 1))

    def forward(self, x):
        return self.head(self.gate(self.stem(x)))


class Top(Net):
    """The model's own forward reads tensor values: captured as its submodules."""

    def forward(self, x):
        y = self.gate(self.stem(x))
        return self.head(y) if y.abs().sum() > 0 else y[:, :4]


def _prune(model: nn.Module, x: torch.Tensor) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return falf_fx.prune(model, x, ratio=0.5)


def test_a_leaf_the_trace_keeps_is_pruned_inside() -> None:
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts = capture_parts(model, x)
    assert [p.name for p in parts] == ["", "gate.body"]
    for part in parts:
        check_equivalence(part.graph_module, part.example_inputs, seed=0)
    slim = _prune(model, x)
    assert isinstance(slim, fx.GraphModule) and isinstance(slim.gate.body, fx.GraphModule)
    assert slim.gate.body.get_submodule("0").out_channels == 8  # inside the leaf: 16 -> 8
    assert slim.get_submodule("head.0").out_channels == 6  # around it: 12 -> 6
    assert slim.get_submodule("stem.0").out_channels == 8  # its interface keeps its channels
    assert slim(x).shape == model(x).shape


def test_a_model_whose_forward_cannot_be_traced_is_pruned_in_parts() -> None:
    torch.manual_seed(0)
    model, x = Top().eval(), torch.randn(2, 3, 8, 8)
    slim = _prune(model, x)
    assert type(slim) is Top and slim is not model
    assert {"stem", "gate.body", "head"} <= {n for n, m in slim.named_modules() if isinstance(m, fx.GraphModule)}
    assert slim.get_submodule("head.0").out_channels == 6 and slim.get_submodule("gate.body.0").out_channels == 8
    assert model.head[0].out_channels == 12  # the user's model is untouched
    assert slim(x).shape == model(x).shape
