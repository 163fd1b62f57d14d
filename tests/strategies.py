"""Hypothesis strategies for random networks, written as small programs of ops.

A network is a :class:`ProgramSpec`: a tuple of ops, each reading tensors made
before it (the input is tensor 0), and the indices of the tensors it returns.
:class:`ProgramNet` runs a spec as an ``nn.Module`` that torch.fx traces into a
DAG.  Why a program and not a module tree: hypothesis shrinks the op tuple, so a
failure comes back as the shortest spec that still breaks, printed as plain
dataclasses that paste straight into a repro::

    spec = ProgramSpec(in_shape=(4, 5, 6), ops=(Conv(src=0, out=6),), outputs=(1,))
    model, x = instantiate(spec, seed=0)

Shapes below never include the batch axis: ``(C, *spatial)`` for feature maps,
``(F,)`` for vectors (after a linear head).  Channels are always dim 1 of the
real tensor.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

from tests.conftest import randomize_norms

__all__ = [
    "ACT_SPELLINGS", "Act", "BINARY_SPELLINGS", "Binary", "CAT_SPELLINGS", "CHUNK_SPELLINGS", "Cat", "Chunk", "Conv",
    "Head", "Norm", "Pool", "ProgramNet", "ProgramSpec", "SPLIT_SPELLINGS", "Shuffle", "Split", "Strided",
    "instantiate", "programs",
]

Shape = tuple[int, ...]

MAX_CHANNELS = 12  # what a conv or head may produce
MAX_CAT_CHANNELS = 24  # what a concatenation may produce
MAX_OPS = 8

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BATCH_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_MAX_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_AVG_POOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
_GLOBAL_POOL = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}
_ACTS = {"relu": (nn.ReLU, F.relu), "gelu": (nn.GELU, F.gelu), "silu": (nn.SiLU, F.silu),
         "hardswish": (nn.Hardswish, F.hardswish)}


def _is_map(shape: Shape) -> bool:
    return len(shape) > 1


# -- ops ---------------------------------------------------------------------------------
# Each op knows its output shapes, builds its module (or None) and runs on the tensor list.


@dataclass(frozen=True)
class Conv:
    """Conv1d/2d/3d with padding k // 2; groups 1, depthwise (= in channels) or grouped."""

    src: int
    out: int
    kernel: int = 3
    stride: int = 1
    groups: int = 1
    bias: bool = False

    def out_shapes(self, shapes: list[Shape]) -> list[Shape]:
        _, *space = shapes[self.src]
        pad = self.kernel // 2
        return [(self.out, *((s + 2 * pad - self.kernel) // self.stride + 1 for s in space))]

    def module(self, shapes: list[Shape]) -> nn.Module:
        c, *space = shapes[self.src]
        return _CONV[len(space)](c, self.out, self.kernel, self.stride, self.kernel // 2, groups=self.groups,
                                 bias=self.bias)

    def run(self, module, env, shapes):
        return [module(env[self.src])]


@dataclass(frozen=True)
class Norm:
    """BatchNorm over the channels (BatchNorm1d for vectors)."""

    src: int

    def out_shapes(self, shapes):
        return [shapes[self.src]]

    def module(self, shapes):
        shape = shapes[self.src]
        return _BATCH_NORM[max(len(shape) - 1, 1)](shape[0])

    def run(self, module, env, shapes):
        return [module(env[self.src])]


ACT_SPELLINGS = ("module", "functional", "keyword", "inplace", "method")


@dataclass(frozen=True)
class Act:
    """An activation: its module, ``F.relu(x)``, ``F.relu(input=x)``, ``F.relu(x.clone(), inplace=True)``
    or ``x.relu()`` (the method spelling where torch has one)."""

    src: int
    kind: str = "relu"
    spelling: str = "module"

    def out_shapes(self, shapes):
        return [shapes[self.src]]

    def module(self, shapes):
        return _ACTS[self.kind][0]() if self.spelling == "module" else None

    def run(self, module, env, shapes):
        x, function = env[self.src], _ACTS[self.kind][1]
        if self.spelling == "module":
            return [module(x)]
        if self.spelling == "keyword":
            return [function(input=x)]
        if self.spelling == "inplace" and self.kind != "gelu":  # F.gelu has no inplace
            return [function(x.clone(), inplace=True)]
        if self.spelling == "method":
            return [getattr(x, self.kind)() if hasattr(torch.Tensor, self.kind) else function(x)]
        return [function(x)]


BINARY_SPELLINGS = ("operator", "function", "keyword", "method", "inplace", "augmented")


@dataclass(frozen=True)
class Binary:
    """``env[a] + env[b]`` or ``*``, broadcasting: same shape is a residual, size-1 axes broadcast.

    Spelled ``a + b``, ``torch.add(a, b)``, ``torch.add(input=a, other=b)``, ``a.add(b)``,
    ``a.clone().add_(b)`` or ``y = a.clone(); y += b``.
    """

    a: int
    b: int
    op: str = "add"
    spelling: str = "operator"

    def out_shapes(self, shapes):
        return [tuple(max(p, q) for p, q in zip(shapes[self.a], shapes[self.b]))]

    def module(self, shapes):
        return None

    def run(self, module, env, shapes):
        a, b = env[self.a], env[self.b]
        if self.spelling in ("inplace", "augmented") and shapes[self.a] != self.out_shapes(shapes)[0]:
            a, b = b, a  # an in-place op writes into its first operand: that one must have the result's shape
        if self.spelling == "function":
            return [getattr(torch, self.op)(a, b)]
        if self.spelling == "keyword":
            return [getattr(torch, self.op)(input=a, other=b)]
        if self.spelling == "method":
            return [getattr(a, self.op)(b)]
        if self.spelling == "inplace":
            return [getattr(a.clone(), self.op + "_")(b)]
        if self.spelling == "augmented":
            y = a.clone()
            if self.op == "add":
                y += b
            else:
                y *= b
            return [y]
        return [{"add": operator.add, "mul": operator.mul}[self.op](a, b)]


CAT_SPELLINGS = ("keyword", "positional", "concat", "all_keywords", "negative_dim")


@dataclass(frozen=True)
class Cat:
    """Concatenation along the channels: ``torch.cat(xs, dim=1)``, ``torch.cat(xs, 1)``,
    ``torch.concat(xs, 1)``, ``torch.cat(tensors=xs, dim=1)`` or ``torch.cat(xs, dim=1 - rank)``."""

    srcs: tuple[int, ...]
    spelling: str = "keyword"

    def out_shapes(self, shapes):
        first = shapes[self.srcs[0]]
        return [(sum(shapes[i][0] for i in self.srcs), *first[1:])]

    def module(self, shapes):
        return None

    def run(self, module, env, shapes):
        xs = [env[i] for i in self.srcs]
        if self.spelling == "positional":
            return [torch.cat(xs, 1)]
        if self.spelling == "concat":
            return [torch.concat(xs, 1)]
        if self.spelling == "all_keywords":
            return [torch.cat(tensors=xs, dim=1)]
        if self.spelling == "negative_dim":
            return [torch.cat(xs, dim=1 - xs[0].dim())]
        return [torch.cat(xs, dim=1)]


@dataclass(frozen=True)
class Split:
    """Split the channels into parts of the given (unequal) sizes; each part is a new tensor."""

    src: int
    sizes: tuple[int, ...]
    spelling: str = "function"  # SPLIT_SPELLINGS

    def out_shapes(self, shapes):
        rest = shapes[self.src][1:]
        return [(s, *rest) for s in self.sizes]

    def module(self, shapes):
        return None

    def run(self, module, env, shapes):
        x, sizes = env[self.src], list(self.sizes)
        parts = {"function": lambda: torch.split(x, sizes, dim=1),
                 "method": lambda: x.split(sizes, 1),
                 "method_keyword": lambda: x.split(sizes, dim=1),
                 "all_keywords": lambda: torch.split(x, split_size_or_sections=sizes, dim=1),
                 "narrow": lambda: tuple(x.narrow(1, sum(sizes[:i]), n) for i, n in enumerate(sizes)),
                 "narrow_keywords": lambda: tuple(x.narrow(dim=1, start=sum(sizes[:i]), length=n)
                                                  for i, n in enumerate(sizes)),
                 "torch_narrow": lambda: tuple(torch.narrow(x, 1, sum(sizes[:i]), n) for i, n in enumerate(sizes)),
                 "slice": lambda: tuple(x[:, sum(sizes[:i]):sum(sizes[:i + 1])] for i in range(len(sizes)))}
        chosen = parts[self.spelling]()
        return [chosen[i] for i in range(len(sizes))]  # indexed, not iterated: fx cannot iterate a Proxy


SPLIT_SPELLINGS = ("function", "method", "method_keyword", "all_keywords", "narrow", "narrow_keywords",
                   "torch_narrow", "slice")


def _chunk_sizes(channels: int, chunks: int) -> list[int]:
    """torch.chunk's part sizes: ceil(C / chunks) each, the last one shorter, maybe fewer parts."""
    size = math.ceil(channels / chunks)
    return [min(size, channels - start) for start in range(0, channels, size)]


@dataclass(frozen=True)
class Chunk:
    """torch.chunk along the channels (uneven when ``chunks`` does not divide C)."""

    src: int
    chunks: int
    spelling: str = "function"  # CHUNK_SPELLINGS

    def out_shapes(self, shapes):
        c, *rest = shapes[self.src]
        return [(s, *rest) for s in _chunk_sizes(c, self.chunks)]

    def module(self, shapes):
        return None

    def run(self, module, env, shapes):
        x = env[self.src]
        parts = {"function": lambda: torch.chunk(x, self.chunks, 1),
                 "method": lambda: x.chunk(self.chunks, 1),
                 "method_keyword": lambda: x.chunk(self.chunks, dim=1),
                 "all_keywords": lambda: torch.chunk(input=x, chunks=self.chunks, dim=1)}[self.spelling]()
        return [parts[i] for i in range(len(_chunk_sizes(shapes[self.src][0], self.chunks)))]


CHUNK_SPELLINGS = ("function", "method", "method_keyword", "all_keywords")


@dataclass(frozen=True)
class Strided:
    """Every ``step``-th channel from ``start``: ``x[:, start::step]`` (exact: a slice or a list index)."""

    src: int
    start: int
    step: int

    def out_shapes(self, shapes):
        c, *rest = shapes[self.src]
        return [(len(range(self.start, c, self.step)), *rest)]

    def module(self, shapes):
        return None

    def run(self, module, env, shapes):
        return [env[self.src][:, self.start::self.step]]


@dataclass(frozen=True)
class Shuffle:
    """ShuffleNet's channel shuffle: view (N, g, C/g, ...), transpose(1, 2), view back.

    ``literal`` writes C and the spatial sizes as numbers (batch as -1); ``size``
    reads every size from ``x.size()`` at run time, as torchvision does.
    """

    src: int
    groups: int
    style: str = "literal"

    def out_shapes(self, shapes):
        return [shapes[self.src]]

    def module(self, shapes):
        return None

    def run(self, module, env, shapes):
        x = env[self.src]
        if self.style == "literal":
            c, *space = shapes[self.src]
            y = x.view(-1, self.groups, c // self.groups, *space)
            return [torch.transpose(y, 1, 2).contiguous().view(-1, c, *space)]
        size = x.size()
        n, c = size[0], size[1]
        space = [size[d] for d in range(2, len(shapes[self.src]) + 1)]
        y = x.view(n, self.groups, c // self.groups, *space).transpose(1, 2).contiguous()
        return [y.view(n, c, *space)]


@dataclass(frozen=True)
class Pool:
    """Max or average pooling (kernel 2, stride 2), or global average pooling to size 1."""

    src: int
    kind: str = "max"

    def out_shapes(self, shapes):
        c, *space = shapes[self.src]
        if self.kind == "global":
            return [(c, *(1 for _ in space))]
        return [(c, *(s // 2 for s in space))]

    def module(self, shapes):
        n = len(shapes[self.src]) - 1
        if self.kind == "global":
            return _GLOBAL_POOL[n](1)
        return {"max": _MAX_POOL, "avg": _AVG_POOL}[self.kind][n](2)

    def run(self, module, env, shapes):
        return [module(env[self.src])]


@dataclass(frozen=True)
class Head:
    """Flatten from dim 1, then Linear; ``flatten`` picks how the flatten is written."""

    src: int
    out: int
    flatten: str = "torch"  # torch.flatten | x.flatten | nn.Flatten | x.view(x.size(0), -1)

    def out_shapes(self, shapes):
        return [(self.out,)]

    def module(self, shapes):
        linear = nn.Linear(math.prod(shapes[self.src]), self.out)
        return nn.Sequential(nn.Flatten(), linear) if self.flatten == "module" else linear

    def run(self, module, env, shapes):
        x = env[self.src]
        if self.flatten == "torch":
            x = torch.flatten(x, 1)
        elif self.flatten == "method":
            x = x.flatten(1)
        elif self.flatten == "view":
            x = x.view(x.size(0), -1)
        return [module(x)]


# -- the network ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgramSpec:
    in_shape: Shape
    ops: tuple
    outputs: tuple[int, ...]
    batch: int = 2


class ProgramNet(nn.Module):
    """Runs a ProgramSpec; fx unrolls the loop into one node per op."""

    def __init__(self, spec: ProgramSpec) -> None:
        super().__init__()
        self.spec = spec
        self.layers = nn.ModuleDict()
        self.tensor_shapes = [spec.in_shape]
        for i, op in enumerate(spec.ops):
            module = op.module(self.tensor_shapes)
            if module is not None:
                self.layers[str(i)] = module
            self.tensor_shapes += op.out_shapes(self.tensor_shapes)

    def _layer(self, i: int) -> Optional[nn.Module]:
        return self.layers[str(i)] if str(i) in self.layers else None

    def forward(self, x):
        env = [x]
        for i, op in enumerate(self.spec.ops):
            env += op.run(self._layer(i), env, self.tensor_shapes)
        outs = tuple(env[j] for j in self.spec.outputs)
        return outs[0] if len(outs) == 1 else outs


def instantiate(spec: ProgramSpec, seed: int) -> tuple[nn.Module, torch.Tensor]:
    """The network in eval mode with random norm statistics, and an input, both from ``seed``."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = randomize_norms(ProgramNet(spec), seed).eval()
        x = torch.randn(spec.batch, *spec.in_shape)
    return model, x


# -- strategies ------------------------------------------------------------------------------


def _source(draw, shapes: list[Shape], ok=lambda shape: True) -> Optional[int]:
    """A tensor index: the newest one half the time (networks are mostly chains), else any earlier one."""
    candidates = [i for i in reversed(range(len(shapes))) if ok(shapes[i])]
    if not candidates:
        return None
    return draw(st.one_of(st.just(candidates[0]), st.sampled_from(candidates)))


def _divisors(n: int) -> list[int]:
    return [g for g in range(2, n) if n % g == 0]


def _channels(draw, shapes: list[Shape]) -> int:
    """A channel count, often one already in the program so adds and cats find partners.

    Fresh counts start at 2: a one-channel group can never lose a channel, and
    one-channel tensors still come from inputs, splits and reused counts.
    """
    seen = sorted({s[0] for s in shapes if s[0] <= MAX_CHANNELS})
    return draw(st.one_of(st.integers(2, MAX_CHANNELS), st.sampled_from(seen)))


def _conv(draw, shapes):
    src = _source(draw, shapes, _is_map)
    c = shapes[src][0]
    modes = ["plain"] + (["depthwise"] if c > 1 else []) + (["grouped"] if _divisors(c) else [])
    mode = draw(st.sampled_from(modes))
    kernel = draw(st.sampled_from([3, 1]))
    stride = draw(st.sampled_from([1, 2]))
    bias = draw(st.booleans())
    if mode == "plain":
        return Conv(src, _channels(draw, shapes), kernel, stride, 1, bias)
    if mode == "depthwise":
        return Conv(src, c * draw(st.sampled_from([1, 2])), kernel, stride, c, bias)
    groups = draw(st.sampled_from(_divisors(c)))
    return Conv(src, groups * draw(st.integers(1, max(1, MAX_CHANNELS // groups))), kernel, stride, groups, bias)


def _broadcasts(a: Shape, b: Shape) -> bool:
    return len(a) == len(b) and all(p == q or p == 1 or q == 1 for p, q in zip(a, b))


def _binary(draw, shapes):
    a = _source(draw, shapes)
    b = _source(draw, shapes, lambda s: _broadcasts(shapes[a], s))
    return Binary(a, b, draw(st.sampled_from(["add", "mul"])), draw(st.sampled_from(BINARY_SPELLINGS)))


def _cat(draw, shapes):
    srcs = [_source(draw, shapes)]
    for _ in range(draw(st.integers(1, 2))):
        room = MAX_CAT_CHANNELS - sum(shapes[i][0] for i in srcs)
        more = _source(draw, shapes, lambda s: s[1:] == shapes[srcs[0]][1:] and s[0] <= room)
        if more is not None:
            srcs.append(more)
    return Cat(tuple(srcs), draw(st.sampled_from(CAT_SPELLINGS)))


def _split(draw, shapes):
    src = _source(draw, shapes, lambda s: s[0] > 1)
    c = shapes[src][0]
    kind = draw(st.sampled_from(["chunk", "split", "strided"]))
    if kind == "chunk":
        return Chunk(src, draw(st.integers(2, c)), draw(st.sampled_from(CHUNK_SPELLINGS)))
    if kind == "strided":
        step = draw(st.integers(2, max(2, c // 2 + 1)))
        return Strided(src, draw(st.integers(0, min(step, c) - 1)), step)
    cuts = draw(st.lists(st.integers(1, c - 1), min_size=1, max_size=3, unique=True))
    edges = [0, *sorted(cuts), c]
    return Split(src, tuple(b - a for a, b in zip(edges, edges[1:])), draw(st.sampled_from(SPLIT_SPELLINGS)))


def _shuffle(draw, shapes):
    src = _source(draw, shapes, lambda s: bool(_divisors(s[0])))
    groups = draw(st.sampled_from(_divisors(shapes[src][0])))
    return Shuffle(src, groups, draw(st.sampled_from(["literal", "size"])))


def _pool(draw, shapes):
    src = _source(draw, shapes, _is_map)
    kinds = ["max", "avg", "global"] if min(shapes[src][1:]) >= 2 else ["global"]
    return Pool(src, draw(st.sampled_from(kinds)))


def _head(draw, shapes):
    src = _source(draw, shapes)
    return Head(src, _channels(draw, shapes), draw(st.sampled_from(["torch", "method", "module", "view"])))


def _norm(draw, shapes):
    return Norm(_source(draw, shapes))


def _act(draw, shapes):
    return Act(_source(draw, shapes), draw(st.sampled_from(sorted(_ACTS))), draw(st.sampled_from(ACT_SPELLINGS)))


# Each kind of op with a test of whether the program holds a tensor it can read.  Convs come
# three times: a group is prunable only between two producers, and most ops are not producers.
_OP_KINDS = (
    *[(_conv, lambda shapes: any(map(_is_map, shapes)))] * 3,
    (_norm, lambda shapes: True),
    (_act, lambda shapes: True),
    (_binary, lambda shapes: True),
    (_cat, lambda shapes: True),
    (_split, lambda shapes: any(s[0] > 1 for s in shapes)),
    (_shuffle, lambda shapes: any(_divisors(s[0]) for s in shapes)),
    (_pool, lambda shapes: any(map(_is_map, shapes))),
    (_head, lambda shapes: True),
)


def _classifier(draw, shapes):
    """A last conv or linear layer on the newest tensor, as most networks end."""
    if _is_map(shapes[-1]):
        return Conv(len(shapes) - 1, _channels(draw, shapes), kernel=1)
    return Head(len(shapes) - 1, _channels(draw, shapes))


@st.composite
def programs(draw, dims: int, max_ops: int = MAX_OPS) -> ProgramSpec:
    """A random network on ``dims``-dimensional feature maps (1, 2 or 3).

    A stem conv, 1 to ``max_ops - 1`` random ops, and half the time a last conv
    or linear layer.  The model's inputs and outputs are never pruned, so the
    stem and last layer are what give the ops between them channels to remove.
    """
    top = 8 if dims < 3 else 6
    in_shape = (draw(st.integers(1, 6)), *(draw(st.integers(4, top)) for _ in range(dims)))
    ops = [Conv(0, _channels(draw, [in_shape]), draw(st.sampled_from([3, 1])))]
    shapes = [in_shape, *ops[0].out_shapes([in_shape])]
    for _ in range(draw(st.integers(1, max_ops - 1))):
        make = draw(st.sampled_from([make for make, possible in _OP_KINDS if possible(shapes)]))
        op = make(draw, shapes)
        ops.append(op)
        shapes += op.out_shapes(shapes)
    if draw(st.booleans()):
        ops.append(_classifier(draw, shapes))
        shapes += ops[-1].out_shapes(shapes)
    last = len(shapes) - 1
    extra = draw(st.lists(st.integers(0, last - 1), max_size=2, unique=True)) if last else []
    return ProgramSpec(in_shape, tuple(ops), (*extra, last), draw(st.sampled_from([2, 1])))
