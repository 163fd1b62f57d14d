"""The meta-tier shape functions agree with the real kernels, and refuse what the kernels refuse."""
from __future__ import annotations

import pytest
import torch
from torch import fx, nn
from torch.nn import functional as F

import falf_fx
from falf_fx.passes.shape_prop import _adaptive_avg_pool, _cat_shape


class _Shapes(nn.Module):
    """Every op with a shape function in passes/shape_prop.py, on inputs of assorted ranks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.bn = nn.BatchNorm2d(6)
        self.pool2 = nn.AdaptiveAvgPool2d((None, 2))
        self.pool1 = nn.AdaptiveAvgPool1d(3)
        self.pool3 = nn.AdaptiveAvgPool3d((2, None, 1))
        self.norm = nn.LayerNorm(4)
        self.linear = nn.Linear(4, 5)
        self.scale = nn.Parameter(torch.ones(5))

    def forward(self, x, seq, vol):
        y = torch.relu(self.bn(self.conv(x)))
        a = self.pool2(y) + F.adaptive_avg_pool2d(y, 1)  # broadcast (N, 6, H, 2) + (N, 6, 1, 1)
        b = self.pool1(seq) * F.adaptive_avg_pool1d(seq, 3)
        c = self.pool3(vol) - F.adaptive_avg_pool3d(vol, (2, 3, 1))
        d = self.linear(F.layer_norm(self.norm(seq[..., :4]), (4,))) * self.scale  # Linear on a 3-D input
        e = torch.cat([y, self.conv(x)], 1) + torch.cat((y, y), dim=-3)
        return a, b, c, d, F.adaptive_avg_pool2d(y, (5, 3)), e


def test_meta_shapes_match_a_real_run():
    model = _Shapes().eval()
    inputs = (torch.randn(2, 3, 9, 8), torch.randn(2, 4, 7), torch.randn(1, 2, 5, 3, 4))
    gm = falf_fx.trace(model, inputs)
    real = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            real[n.name] = out = super().run_node(n)
            return out

    with torch.no_grad():
        Recorder(gm).run(*inputs)
    shape = lambda v: fx.node.map_aggregate(v, lambda t: tuple(t.shape) if isinstance(t, torch.Tensor) else t)  # noqa: E731
    for node in gm.graph.nodes:
        if node.op != "output":
            assert node.meta["val"].device.type == "meta", node.name
            assert shape(node.meta["val"]) == shape(real[node.name]), node.name


@pytest.mark.parametrize("spatial, shape, size", [
    (2, (1, 3, 0, 4), 1), (2, (3, 4), 1), (2, (1, 1, 3, 4, 5), 1), (2, (1, 3, 4, 5), -1), (1, (2, 4, 5), (1, 2)),
    (3, (2, 3), 1), (2, (1, 0, 3, 4), 1), (2, (1, 3, 4, 5), (1, 2, 3)), (2, (3, 4, 5), (None, 2))])
def test_adaptive_pool_shape_is_never_laxer_than_the_kernel(spatial, shape, size):
    """Refusing more than the kernel only sends a graph to the fake-tensor tier; accepting more would be wrong."""
    kernel = getattr(F, f"adaptive_avg_pool{spatial}d")
    try:
        want = tuple(kernel(torch.randn(shape), size).shape)
    except (RuntimeError, ValueError, IndexError):
        want = None
    try:
        got = tuple(_adaptive_avg_pool(spatial)(torch.empty(shape, device="meta"), size).shape)
    except RuntimeError:
        got = None
    assert got is None or got == want


@pytest.mark.parametrize("spatial, shape, size", [(2, (2, 6, 7, 9), (None, 2)), (2, (6, 7, 9), 1), (1, (2, 4, 5), 3),
                                                  (3, (1, 2, 5, 3, 4), (2, None, 1)), (2, (1, 0, 3, 4), 1)])
def test_adaptive_pool_shape_answers_the_usual_cases(spatial, shape, size):
    kernel = getattr(F, f"adaptive_avg_pool{spatial}d")
    got = _adaptive_avg_pool(spatial)(torch.empty(shape, device="meta"), size)
    assert got.shape == kernel(torch.randn(shape), size).shape and got.device.type == "meta"


@pytest.mark.parametrize("shapes, dim", [
    ([(2, 3, 4), (2, 5, 4)], 1), ([(2, 3, 4), (2, 5, 4)], -2), ([(2, 3), (2, 3)], 0), ([(2, 3, 4), (2, 3, 5)], 1),
    ([(2, 3, 4), (2, 3)], 1), ([(2, 3)], 2), ([(2, 0, 4), (2, 1, 4)], 1), ([(0,), (2, 3)], 0), ([(3,), (4,)], 0)])
def test_cat_shape_is_never_laxer_than_the_kernel(shapes, dim):
    try:
        want = tuple(torch.cat([torch.randn(s) for s in shapes], dim).shape)
    except (RuntimeError, IndexError):
        want = None
    try:
        got = _cat_shape([torch.empty(s, device="meta") for s in shapes], dim)
    except (RuntimeError, IndexError):
        got = want = None  # refused: the kernel refuses too, or the fake tier decides
    assert got is None or tuple(got.shape) == want


def test_cat_shape_leaves_dtype_promotion_and_layouts_to_the_kernel():
    meta = lambda *s, **kw: torch.empty(*s, device="meta", **kw)  # noqa: E731
    assert _cat_shape([meta(2, 3), meta(2, 3, dtype=torch.float64)], 0) is None
    assert _cat_shape([meta(1, 3, 4, 4).to(memory_format=torch.channels_last)] * 2, 1) is None
    assert _cat_shape([meta(2, 3)], 0, out=meta(2, 3)) is None
    assert _cat_shape([meta(2, 3), meta(2, 4)], dim=1).shape == (2, 7)
