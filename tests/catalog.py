"""The hand-built model catalogue: one small network per channel rule (design.md §2) and per tricky pattern.

Every entry is a ``Case``: a builder for a fresh module with random weights and a
builder for tiny example inputs.  ``make(name)`` gives the model in eval mode with
random norm statistics, ready for ``check_equivalence``.  Other tests (fuzzing,
benchmarks of the analysis) may reuse the classes and the ``CASES`` table.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import randomize_norms

__all__ = ["Case", "CASES", "make"]


@dataclass(frozen=True)
class Case:
    """How to build one catalogue model and its example inputs."""

    build: Callable[[], nn.Module]
    inputs: Callable[[], tuple[torch.Tensor, ...]]


def _randn(*shape: int) -> torch.Tensor:
    """Inputs of std 4: after random BatchNorm statistics most ReLUs stay alive, so a channel
    sliced wrongly shows in the output instead of hiding in a dead one."""
    return 4.0 * torch.randn(*shape)


def _image(c: int = 3, size: int = 8, batch: int = 2) -> Callable[[], tuple[torch.Tensor, ...]]:
    return lambda: (_randn(batch, c, size, size),)


def _seq(c: int = 3, length: int = 10) -> Callable[[], tuple[torch.Tensor, ...]]:
    return lambda: (_randn(2, c, length),)


def _volume(c: int = 2, size: int = 4) -> Callable[[], tuple[torch.Tensor, ...]]:
    return lambda: (_randn(2, c, size, size, size),)


def _features(c: int = 6) -> Callable[[], tuple[torch.Tensor, ...]]:
    return lambda: (_randn(4, c),)


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())


# -- producers, consumers and per-channel followers ----------------------------------


def conv1d_net() -> nn.Module:
    return nn.Sequential(nn.Conv1d(3, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU(),
                         nn.Conv1d(8, 8, 3, padding=1, groups=8), nn.Conv1d(8, 4, 3))


def conv2d_net() -> nn.Module:
    return nn.Sequential(conv_bn_relu(3, 8), nn.Conv2d(8, 4, 3))


def conv3d_net() -> nn.Module:
    return nn.Sequential(nn.Conv3d(2, 6, 3, padding=1), nn.BatchNorm3d(6), nn.ReLU(), nn.Conv3d(6, 4, 1))


def conv_transpose1d_net() -> nn.Module:
    return nn.Sequential(nn.ConvTranspose1d(3, 8, 3, stride=2), nn.BatchNorm1d(8), nn.ReLU(),
                         nn.ConvTranspose1d(8, 4, 2))


def conv_transpose2d_net() -> nn.Module:
    """Plain, grouped (2 groups) and depthwise transposed convs."""
    return nn.Sequential(nn.ConvTranspose2d(3, 8, 2, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.ConvTranspose2d(8, 8, 3, padding=1, groups=2), nn.ReLU(),
                         nn.ConvTranspose2d(8, 8, 3, padding=1, groups=8), nn.ConvTranspose2d(8, 4, 3, padding=1))


def conv_transpose3d_net() -> nn.Module:
    return nn.Sequential(nn.ConvTranspose3d(2, 6, 2, stride=2), nn.BatchNorm3d(6), nn.ReLU(),
                         nn.ConvTranspose3d(6, 3, 1))


def linear_net() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 10), nn.ReLU(),
                         nn.Linear(10, 3))


def instance_norm_net() -> nn.Module:
    """InstanceNorm with running statistics (used in eval mode), then one normalising each sample."""
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.InstanceNorm2d(8, affine=True, track_running_stats=True),
                         nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1), nn.InstanceNorm2d(6, affine=True), nn.ReLU(),
                         nn.Conv2d(6, 4, 1))


def group_norm_net() -> nn.Module:
    """GroupNorm(4, 16): channels go four at a time, a whole normalisation group each."""
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.GroupNorm(4, 16), nn.ReLU(), nn.Conv2d(16, 4, 3))


class LayerNormOverChannels(nn.Module):
    """LayerNorm over an MLP's features, via permute over a conv's channels, and functionally over
    (C, H, W) (all frozen); LayerNorm over H and W only leaves the channels free."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.norm2d = nn.LayerNorm(8)
        self.conv_out = nn.Conv2d(8, 4, 1)
        self.fc1 = nn.Linear(6, 12)
        self.norm = nn.LayerNorm(12)
        self.fc2 = nn.Linear(12, 5)
        self.spatial = nn.Conv2d(3, 6, 3, padding=1)
        self.norm_hw = nn.LayerNorm([6, 6])
        self.spatial_out = nn.Conv2d(6, 4, 1)
        self.whole = nn.Conv2d(3, 5, 3, padding=1)
        self.whole_out = nn.Conv2d(5, 4, 1)

    def forward(self, x, v):
        y = self.norm2d(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        z = self.whole(x)
        return (self.conv_out(y), self.fc2(self.norm(self.fc1(v))), self.spatial_out(self.norm_hw(self.spatial(x))),
                self.whole_out(F.layer_norm(z, z.shape[1:])))


class PReLUNet(nn.Module):
    """PReLU with a slope per channel (sliced with the group) and with one shared slope."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act1 = nn.PReLU(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.act2 = nn.PReLU()
        self.conv3 = nn.Conv2d(8, 4, 3)

    def forward(self, x):
        return self.conv3(self.act2(self.conv2(self.act1(self.conv1(x)))))


class PassThrough(nn.Module):
    """Every op in the pass-through row of design.md §2 between two convs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.acts = nn.Sequential(nn.ReLU(), nn.GELU(), nn.SiLU(), nn.Hardswish(), nn.Dropout(0.3), nn.Identity(),
                                  nn.MaxPool2d(2), nn.AvgPool2d(2, stride=1))
        self.conv2 = nn.Conv2d(8, 4, 3)

    def forward(self, x):
        y = self.acts(self.conv1(x))
        y = F.interpolate(y, scale_factor=2.0, mode="nearest")
        y = F.pad(y, (1, 1, 2, 0))
        y = torch.relu(y) * 2.0 + 1.0
        y = (y - 0.5) / 3.0 + y ** 2
        y = torch.where(y > 1.0, y, 0.5 * y)
        return self.conv2(-y)


class Couplers(nn.Module):
    """add, sub, mul, div and maximum between two convs' outputs: all one group."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 3, padding=1)
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.d = nn.Conv2d(3, 8, 3, padding=1)
        self.e = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.a(x) + self.b(x)
        y = y * self.c(x) - self.d(x)
        y = y / (self.e(x).abs() + 1.0)
        y = torch.maximum(y, self.a(x).tanh())
        return self.head(y)


class BroadcastOperands(nn.Module):
    """A (N,1,H,W) spatial gate (one channel: no coupling, frozen) and a (N,C,1,1) channel gate (couples)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, padding=1)
        self.spatial_gate = nn.Conv2d(3, 1, 3, padding=1)
        self.squeeze = nn.Conv2d(8, 4, 1)
        self.excite = nn.Conv2d(4, 8, 1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.body(x) * torch.sigmoid(self.spatial_gate(x))
        s = F.adaptive_avg_pool2d(y, 1)
        y = y * torch.sigmoid(self.excite(torch.relu(self.squeeze(s))))
        return self.head(y + 0.5)


class ConcatSplitChannels(nn.Module):
    """cat, split, chunk, narrow and slicing along C."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 10, 3, padding=1)
        self.p = nn.Conv2d(6, 4, 1)
        self.q = nn.Conv2d(6, 4, 1)
        self.r = nn.Conv2d(8, 4, 1)
        self.s = nn.Conv2d(2, 4, 1)
        self.t = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], dim=1)  # 16
        first, second = torch.split(y, [6, 10], dim=1)
        left, right = second.chunk(2, dim=1)  # 5 + 5
        z = torch.cat([left, right, first[:, :3]], dim=1)  # 13
        return (self.p(first) + self.r(z.narrow(1, 2, 8)) + self.s(y[:, 14:]) + self.t(right[:, 1:4])
                + self.q(torch.cat([left[:, :3], first[:, 3:]], 1)))


class FlattenLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.bn = nn.BatchNorm2d(6)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(6 * 4 * 4, 10)
        self.out = nn.Linear(10, 3)

    def forward(self, x):
        return self.out(torch.relu(self.fc(self.flatten(torch.relu(self.bn(self.conv(x)))))))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class ChannelShuffle(nn.Module):
    """ShuffleNet's view-transpose-view: 3 groups of 4 channels, then 4 groups of 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 12, 1)
        self.bn1 = nn.BatchNorm2d(12)
        self.depthwise = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.conv2 = nn.Conv2d(12, 8, 1)
        self.conv3 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = channel_shuffle(torch.relu(self.bn1(self.conv1(x))), 3)
        y = torch.relu(self.conv2(self.depthwise(y)))
        return self.conv3(channel_shuffle(y, 4))


class GroupedAndDepthwise(nn.Module):
    """A grouped conv (4 groups of 8), a depthwise conv and a depthwise conv with multiplier 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 1)
        self.grouped = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.bn = nn.BatchNorm2d(32)
        self.depthwise = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.expand = nn.Conv2d(32, 64, 3, padding=1, groups=32, bias=False)
        self.head = nn.Conv2d(64, 4, 1)

    def forward(self, x):
        y = self.depthwise(torch.relu(self.bn(self.grouped(self.conv1(x)))))
        return self.head(self.expand(y))


class DistanceBoundary(nn.Module):
    """torch.cdist is not understood: the channels reaching it are frozen."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Conv2d(3, 8, 1)
        self.k = nn.Conv2d(3, 8, 1)
        self.free = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        distances = torch.cdist(self.q(x).flatten(2).transpose(1, 2), self.k(x).flatten(2).transpose(1, 2))
        return self.head(torch.relu(self.free(x))), distances.mean()


class _Cube(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 3

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 3 * x ** 2 * grad


def cube(x: torch.Tensor) -> torch.Tensor:
    """A custom autograd op that fx keeps as one opaque call (torch.fx.wrap)."""
    return _Cube.apply(x)


torch.fx.wrap("cube")


class CustomFunctionBoundary(nn.Module):
    """A custom autograd op in the middle: the channels entering it are frozen, the rest is pruned."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.conv3(torch.relu(self.conv2(cube(self.conv1(x)))))


class InputResidual(nn.Module):
    """A model input added to a conv's output: the input's channels cannot be sliced, so neither can the conv's."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.conv3(torch.relu(self.conv2(self.conv1(x) + x)))


class ChannelCountAsValue(nn.Module):
    """``y / y.shape[1]`` and ``torch._assert(s.shape[1] == 5)`` read channel counts at run time:
    those channels must stay.  Run-time sizes in a view are fine."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 4, 1)
        self.side = nn.Conv2d(3, 5, 1)
        self.side_out = nn.Conv2d(5, 4, 1)

    def forward(self, x):
        y = self.conv1(x)
        z = self.conv2(y / y.shape[1])
        n, c, h, w = z.size()
        z = z.view(n, c, h * w).view(n, c, h, w)
        s = self.side(x)
        torch._assert(s.shape[1] == 5, "five side channels")
        return self.conv3(z + z.sum((2, 3), keepdim=True) / (h * w)) + self.side_out(s)


# -- composite patterns ------------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + identity)


class Bottleneck(nn.Module):
    def __init__(self, c_in: int, width: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.reduce = conv_bn_relu(c_in, width)
        self.conv = nn.Sequential(nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(width, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(self.expand(self.conv(self.reduce(x))) + identity)


class ResidualNet(nn.Module):
    """stem -> basic, basic with downsample -> bottleneck with downsample, bottleneck -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn_relu(3, 8)
        self.block1 = BasicBlock(8, 8, 1)
        self.block2 = BasicBlock(8, 12, 2)
        self.block3 = Bottleneck(12, 4, 16, 1)
        self.block4 = Bottleneck(16, 6, 16, 1)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        y = self.block4(self.block3(self.block2(self.block1(self.stem(x)))))
        return self.fc(y.mean((2, 3)))


class NestedConcat(nn.Module):
    """Inception/DenseNet style: branches of 1x, 2x, 3x and 6x the base width, concatenated twice."""

    def __init__(self, base: int = 2) -> None:
        super().__init__()
        self.stem = conv_bn_relu(3, 4)
        self.b1 = nn.Conv2d(4, base, 1)
        self.b2 = nn.Conv2d(4, 2 * base, 3, padding=1)
        self.b3 = nn.Conv2d(4, 3 * base, 1)
        self.b6 = nn.Conv2d(4, 6 * base, 3, padding=1)
        inner = 6 * base
        self.bn = nn.BatchNorm2d(4 + inner + 6 * base)
        self.dense = nn.Conv2d(4 + inner + 6 * base, 3 * base, 1)
        self.head = nn.Conv2d(4 + inner + 6 * base + 3 * base, 4, 1)

    def forward(self, x):
        s = self.stem(x)
        inner = torch.cat([self.b1(s), torch.cat([self.b2(s), self.b3(s)], 1)], 1)
        dense = torch.cat([s, inner, self.b6(s)], 1)
        return self.head(torch.cat([dense, self.dense(torch.relu(self.bn(dense)))], 1))


class SharedOnSplit(nn.Module):
    """Split into unequal parts (4, 4, 8); one conv is called on both 4-channel parts."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 16, 3, padding=1)
        self.shared = nn.Conv2d(4, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.head = nn.Conv2d(20, 4, 1)

    def forward(self, x):
        a, b, c = torch.split(self.conv0(x), [4, 4, 8], dim=1)
        return self.head(torch.cat([self.bn(self.shared(a)), self.shared(b) * 2.0, c], 1))


class SplitCatResidual(nn.Module):
    """Split, transform each part, cat back, add the input (a RepVGG/ShuffleNet-v2 style unit)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn_relu(3, 8)
        self.left = conv_bn_relu(3, 3)
        self.right = conv_bn_relu(5, 5)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        s = self.stem(x)
        a, b = s.split([3, 5], dim=1)
        return self.head(torch.cat([self.left(a), self.right(b)], 1) + s)


class SpatialCatSplit(nn.Module):
    """cat and split along H: the channels of the parts stay one group, nothing else couples."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn_relu(3, 8)
        self.top = nn.Conv2d(8, 6, 3, padding=1)
        self.bottom = nn.Conv2d(8, 5, 3, padding=1)
        self.up = nn.Conv2d(3, 6, 3, padding=1)
        self.down = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        upper, lower = self.stem(x).split([3, 5], dim=2)
        joined = torch.cat([self.up(x), self.down(x)], dim=2)  # (N, 6, 2H, W)
        return self.top(upper).sum(1), self.bottom(lower).sum(1), self.head(joined)


class LinearToConvTranspose(nn.Module):
    """A decoder: Linear -> view as (16, 2, 2) -> ConvTranspose2d -> flatten -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.fc_in = nn.Linear(6, 16 * 2 * 2)
        self.deconv = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.bn = nn.BatchNorm2d(8)
        self.fc_out = nn.Linear(8 * 4 * 4, 5)

    def forward(self, v):
        y = self.fc_in(v).view(-1, 16, 2, 2)
        return self.fc_out(torch.flatten(torch.relu(self.bn(self.deconv(y))), 1))


class SingleChannelConv(nn.Module):
    """A conv with one output channel (not depthwise) feeding a normal conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 1, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(1)
        self.conv2 = nn.Conv2d(1, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.conv3(torch.relu(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class BatchNormAfterConcat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(10)
        self.head = nn.Conv2d(10, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1))))


class TwoInThreeOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image = conv_bn_relu(3, 8)
        self.mask = conv_bn_relu(1, 8)
        self.mix = nn.Conv2d(8, 6, 3, padding=1)
        self.seg = nn.Conv2d(6, 2, 1)
        self.cls = nn.Linear(6, 5)

    def forward(self, x, m):
        y = torch.relu(self.mix(self.image(x) + self.mask(m)))
        return self.seg(y), self.cls(y.mean((2, 3))), y.sum(1)


class ValueDependent(nn.Module):
    """Python control flow on tensor values: fx cannot trace it."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1)

    def forward(self, x):
        if x.sum() > 0:
            return self.conv(x)
        return -self.conv(x)


class WithUntraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(3, 8)
        self.gate = ValueDependent(8)
        self.conv2 = conv_bn_relu(8, 6)
        self.conv3 = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.conv3(self.conv2(self.gate(self.conv1(x))))


class CallForms(nn.Module):
    """Ops as call_function (F.conv2d, F.batch_norm, F.linear with the module's own parameters),
    call_method (x.add, x.view) and call_module side by side."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.3)
        self.bias = nn.Parameter(torch.randn(8))
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)  # used through F.batch_norm only
        self.fc_weight = nn.Parameter(torch.randn(6, 8 * 2 * 2) * 0.1)
        self.fc_bias = nn.Parameter(torch.randn(6))
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        y = F.conv2d(x, self.weight, self.bias, padding=1).add(self.conv(x))
        y = F.batch_norm(y, self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias)
        y = (torch.relu(y).flatten(2) * 1.5).view(y.size())
        y = F.adaptive_avg_pool2d(y, 2)
        y = y.view(y.size(0), 32)
        return self.fc(torch.relu(F.linear(y, self.fc_weight, self.fc_bias)))


class FreeParameters(nn.Module):
    """A layer-scale vector (C, 1, 1) multiplied in and a (1, C, 1, 1) bias added: sliced with the group."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.scale = nn.Parameter(torch.randn(8, 1, 1))
        self.shift = nn.Parameter(torch.randn(1, 8, 1, 1))
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x) * self.scale + self.shift))


class MeanOverChannels(nn.Module):
    """ConvNeXt-V2's global response normalisation: each channel divided by the mean over all channels."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(3, 8, 1)
        self.gamma = nn.Parameter(torch.randn(1, 8, 1, 1))
        self.project = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        h = F.gelu(self.expand(x))
        g = torch.linalg.vector_norm(h, 2, dim=(2, 3), keepdim=True)
        n = g / (g.mean(dim=1, keepdim=True) + 1e-6)
        return self.project(self.gamma * (h * n) + h) + x.mean(1, keepdim=True)


CASES: dict[str, Case] = {
    "conv1d": Case(conv1d_net, _seq()),
    "conv2d": Case(conv2d_net, _image()),
    "conv3d": Case(conv3d_net, _volume()),
    "conv_transpose1d": Case(conv_transpose1d_net, _seq()),
    "conv_transpose2d": Case(conv_transpose2d_net, _image(size=4)),
    "conv_transpose3d": Case(conv_transpose3d_net, _volume(size=2)),
    "linear": Case(linear_net, _features()),
    "instance_norm": Case(instance_norm_net, _image()),
    "group_norm": Case(group_norm_net, _image()),
    "layer_norm": Case(LayerNormOverChannels, lambda: (_randn(2, 3, 6, 6), _randn(3, 6))),
    "prelu": Case(PReLUNet, _image()),
    "pass_through": Case(PassThrough, _image()),
    "couplers": Case(Couplers, _image()),
    "broadcast": Case(BroadcastOperands, _image()),
    "concat_split": Case(ConcatSplitChannels, _image(size=5)),
    "flatten_linear": Case(FlattenLinear, _image(size=6)),
    "channel_shuffle": Case(ChannelShuffle, _image(size=5)),
    "grouped_depthwise": Case(GroupedAndDepthwise, _image(size=5)),
    "distance_boundary": Case(DistanceBoundary, _image(size=4)),
    "custom_function": Case(CustomFunctionBoundary, _image(size=5)),
    "residual": Case(ResidualNet, _image()),
    "nested_concat": Case(NestedConcat, _image(size=5)),
    "shared_on_split": Case(SharedOnSplit, _image(size=5)),
    "split_cat_residual": Case(SplitCatResidual, _image(size=5)),
    "spatial_cat_split": Case(SpatialCatSplit, _image(size=8)),
    "linear_to_conv_transpose": Case(LinearToConvTranspose, _features()),
    "single_channel_conv": Case(SingleChannelConv, _image(size=5)),
    "bn_after_concat": Case(BatchNormAfterConcat, _image(size=5)),
    "two_in_three_out": Case(TwoInThreeOut, lambda: (_randn(2, 3, 6, 6), _randn(2, 1, 6, 6))),
    "untraceable_submodule": Case(WithUntraceable, _image(size=5)),
    "call_forms": Case(CallForms, _image(size=6)),
    "free_parameters": Case(FreeParameters, _image(size=5)),
    "input_residual": Case(InputResidual, _image(size=5)),
    "channel_count_as_value": Case(ChannelCountAsValue, _image(size=5)),
    "mean_over_channels": Case(MeanOverChannels, _image(size=5)),
}


def make(name: str, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A fresh model of case ``name`` (eval mode, random weights and norm statistics) and its inputs."""
    torch.manual_seed(seed)
    case = CASES[name]
    model = randomize_norms(case.build(), seed).eval()
    return model, case.inputs()
