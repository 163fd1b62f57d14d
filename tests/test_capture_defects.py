"""Issue 12's defects 1 to 5, each as it was reproduced: a Conv2d subclass, concrete_args, a view sized by
another tensor, a leaf that caches what it computes, and a slim model that fails where the original ran."""
from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from torch import nn

import falf_fx
from falf_fx import SlimError
from falf_fx.passes.rule_registry import _REGISTRY
from falf_fx.testing import check_equivalence


class DepthwiseConv2d(nn.Conv2d):
    """Like Hugging Face's EfficientNetDepthwiseConv2d: a Conv2d subclass with no forward of its own."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, 3, padding=1, groups=channels, bias=False)


def test_1_a_conv_subclass_without_its_own_forward_keeps_its_groups_right():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), DepthwiseConv2d(8), nn.BatchNorm2d(8),
                          nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(2, 3, 8, 8)
    assert check_equivalence(model, x).channels_removed > 0
    slim = falf_fx.prune(model, x, ratio=0.5)
    assert slim(x).shape == (2, 4, 8, 8)


class Flagged(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x, scale=None, double=False):
        y = self.conv(x)
        if double:
            y = y * 2
        return self.head(y if scale is None else y * scale)


def test_2_a_model_traced_with_concrete_args_prunes():
    model, x = Flagged().eval(), torch.randn(1, 3, 8, 8)
    gm = falf_fx.trace(model, x, concrete_args={"scale": None, "double": True})
    assert [n.op for n in gm.graph.nodes].count("placeholder") == 1  # the fixed inputs are baked in
    torch.testing.assert_close(gm(x), model(x, double=True))
    slim = falf_fx.prune(gm, x, ratio=0.5)
    assert slim(x).shape == (1, 4, 8, 8) and slim.get_submodule("conv").out_channels == 4


class ViewSizedElsewhere(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        n, c, h, w = a.shape
        return self.head(a), b.reshape(n, c, h * w).view(n, c, h, w)  # b's view takes a's channel count


def test_3_a_view_sized_by_another_tensors_channels_ties_them():
    model, x = ViewSizedElsewhere().eval(), torch.randn(1, 3, 8, 8)
    analysis = falf_fx.analyze(falf_fx.trace(model, x))
    (group,) = [g for g in analysis.groups if "a" in g.producers]
    assert "b" in group.producers and not group.prunable  # b is an output, so a cannot shrink alone
    slim = falf_fx.prune(model, x, ratio=0.5)
    assert [t.shape for t in slim(x)] == [(1, 4, 8, 8), (1, 8, 8, 8)]


class CachingHead(nn.Module):
    """Like YOLO's Detect: untraceable (a branch on a shape), and it caches a tensor built from its input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.shape, self.anchors = nn.Conv2d(8, 4, 1), None, torch.empty(0)

    def forward(self, x):
        if self.shape != x.shape:
            self.anchors = torch.arange(x.shape[-1], dtype=x.dtype, device=x.device)
            self.shape = x.shape
        return self.conv(x) + self.anchors


@pytest.mark.parametrize("call", ["trace", "analyze", "prune"])
def test_4_tracing_leaves_the_users_model_as_it_was(call):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), CachingHead()).eval()
    x = torch.randn(1, 3, 8, 8)
    want = model(x).clone()
    model[2].shape, model[2].anchors = None, torch.empty(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the auto-leaf warning
        if call == "trace":
            falf_fx.trace(model, x)
        elif call == "analyze":
            falf_fx.analyze(falf_fx.trace(model, x))
        else:
            falf_fx.prune(model, x, ratio=0.5)
    assert model[2].shape is None and model[2].anchors.numel() == 0 and not model[2].anchors.is_meta
    torch.testing.assert_close(model(x), want)


def test_5_a_slim_model_that_fails_is_blamed_not_the_inputs(monkeypatch):
    class Narrowed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return self.head(self.conv(x).narrow(1, 4, 4))

    broken = dataclasses.replace(_REGISTRY.methods["narrow"], rewrite_args=None)  # a rewrite that forgets sizes
    monkeypatch.setitem(_REGISTRY.methods, "narrow", broken)
    with pytest.raises(SlimError, match=r"the slim model does not run where the original did: node 'narrow'.*"
                                        r"this is a falf_fx bug") as caught:
        falf_fx.prune(Narrowed(), torch.randn(1, 3, 4, 4), ratio=0.5)
    assert "example inputs" not in str(caught.value)
