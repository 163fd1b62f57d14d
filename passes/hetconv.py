"""HetConv (Singh et al., CVPR 2019): K×K convs whose filters mix K×K and 1×1 kernels.

Each filter of a HetConv layer has K×K kernels on 1/P of its M input channels and
1×1 kernels on the rest, so the layer costs ``1/P + (1 - 1/P)/K²`` of the dense conv.

:class:`HetConv2d` cuts input channels and filters into P contiguous blocks: the
filters of block s have K×K kernels on input block s and 1×1 kernels on every
other block.  Relabelling channels by their residue mod P (``c -> (c mod P)·M/P +
c div P``, and the same for filters) turns this into the paper's shifted pattern
(filter n has its K×K kernels on the channels c ≡ n mod P); a network can absorb
the relabelling into its weights, so both describe the same layers.  In block form
every multiply-add the design needs is spent and no other:

* ``spatial``: a K×K conv with groups=P — ``N·(M/P)·K²`` MACs per output pixel;
* ``pointwise``: a 1×1 conv with groups=P over the other P−1 blocks of each group,
  gathered by one ``cat`` of channel slices — ``N·M·(P−1)/P`` MACs per pixel.

That is the ``"blocks"`` form.  The ``"overlap"`` form spends ``N·M/P`` more per pixel
to gather nothing: the same grouped K×K conv plus one dense 1×1 conv over all M
inputs.  On a filter's own block the 1×1 weight only adds to the K×K kernel's centre
tap, so both forms hold exactly the same layers (the overlap starts at zero when
converted, and training it keeps it a HetConv: no masks).  On CPUs the cat of
slices and the grouped 1×1 conv often cost more than the extra MACs: ``form="auto"``
times both at each layer's own input size and keeps the faster.

The rewrite pass inlines the chosen forward into a GraphModule (slices, cat, convs,
add), so the analysis, slimming, fvcore and ``falf_fx.save`` see only standard ops.
"""
from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable, Sequence
from typing import Optional, Union

import torch
from torch import fx, nn
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from .shape_prop import fake_inputs_like, propagate_shapes
from .errors import FalfValueError

__all__ = ["FORMS", "HetConv2d", "HetConvPass", "Selection", "conversion_blocker", "hetconv_graph_module",
           "HETCONV_KEY"]

HETCONV_KEY = "falf_fx.hetconv"  # gm.meta entry: {"p", "form", "converted": [names], "forms", "skipped", "timings"}
FORMS = ("blocks", "overlap")  # the layer's exact forms; "auto" picks one per layer by measured latency

# A selection: None (the default), name patterns (fnmatch), or a callable (name, conv) -> bool.
Selection = Union[None, str, Sequence[str], Callable[[str, nn.Module], bool]]


def _pair(value: Union[int, Sequence[int]]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _reach(kernel_size: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int]:
    """How far the centre tap of a kernel lies from its first tap, per spatial axis."""
    return tuple(d * (k // 2) for k, d in zip(kernel_size, dilation))


def _padding_of(conv: nn.Conv2d) -> tuple[int, int]:
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        return _reach(conv.kernel_size, conv.dilation)  # odd kernels only reach here
    return _pair(conv.padding)


def conversion_blocker(conv: nn.Module, p: int) -> Optional[str]:
    """Why ``conv`` cannot become a HetConv2d with part ``p`` (None when it can)."""
    if type(conv) is not nn.Conv2d:
        return f"a {type(conv).__name__}: only torch.nn.Conv2d is converted"
    kh, kw = conv.kernel_size
    if kh != kw or kh % 2 == 0:
        return f"kernel {kh}x{kw}: HetConv needs a square kernel of odd size"
    if kh == 1:
        return "kernel 1x1: already pointwise"
    if conv.groups != 1:
        return f"groups={conv.groups}: HetConv replaces dense (groups=1) convs"
    if conv.in_channels % p or conv.out_channels % p:
        return (f"{conv.in_channels} input and {conv.out_channels} output channels: both must be divisible "
                f"by P={p}")
    if any(pad < reach for pad, reach in zip(_padding_of(conv), _reach(conv.kernel_size, conv.dilation))):
        return (f"padding {_padding_of(conv)} is smaller than the kernel's half-width: an output's centre tap "
                "is not an input pixel, so its 1x1 kernels have no equivalent")
    return None


class HetConv2d(nn.Module):
    """K×K kernels on one input block per filter block, 1×1 kernels on the other P−1 blocks.

    Takes Conv2d's arguments plus ``p`` and ``form`` (``"blocks"``: a grouped 1×1 conv
    over the gathered other blocks; ``"overlap"``: a dense 1×1 conv over all inputs);
    ``padding`` defaults to the kernel's half-width (the centred "same" padding of a
    3×3 conv).  ``p=1`` is a plain conv.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, p: int = 4, stride=1,
                 padding=None, dilation=1, bias: bool = True, padding_mode: str = "zeros",
                 device=None, dtype=None, form: str = "blocks") -> None:
        super().__init__()
        kernel = _pair(kernel_size)
        if kernel[0] != kernel[1] or kernel[0] % 2 == 0:
            raise FalfValueError(f"HetConv2d needs a square kernel of odd size, got {kernel}")
        if p < 1 or in_channels % p or out_channels % p:
            raise FalfValueError(f"P={p} must be a positive divisor of both in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        dilation = _pair(dilation)
        padding = _reach(kernel, dilation) if padding is None else _pair(padding)
        pointwise_padding = tuple(pad - r for pad, r in zip(padding, _reach(kernel, dilation)))
        if min(pointwise_padding) < 0:
            raise FalfValueError(f"padding {padding} is smaller than the kernel's half-width "
                                 f"{_reach(kernel, dilation)}: the centre taps are not input pixels")
        if form not in FORMS:
            raise FalfValueError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
        self.in_channels, self.out_channels, self.p, self.form = in_channels, out_channels, p, form
        factory = {"device": device, "dtype": dtype}
        self.spatial = nn.Conv2d(in_channels, out_channels, kernel, stride, padding, dilation, groups=p,
                                 bias=bias, padding_mode=padding_mode, **factory)
        overlap = form == "overlap"
        self.pointwise = None if p == 1 else nn.Conv2d(
            in_channels if overlap else in_channels * (p - 1), out_channels, 1, stride, pointwise_padding,
            groups=1 if overlap else p, bias=False, padding_mode=padding_mode, **factory)

    @property
    def block(self) -> int:
        """Input channels per block (M/P)."""
        return self.in_channels // self.p

    def gather_slices(self) -> list[tuple[int, int]]:
        """Channel ranges whose concatenation holds, for each group s in turn, the blocks s+1 .. s+P−1 (mod P)."""
        m, b = self.in_channels, self.block
        ranges = []
        for s in range(self.p):
            if (s + 1) * b < m:
                ranges.append(((s + 1) * b, m))
            if s > 0:
                ranges.append((0, s * b))
        return ranges

    def gathered_channels(self, s: int) -> torch.Tensor:
        """The input channel behind each input position of group s of the pointwise conv."""
        return (torch.arange((self.p - 1) * self.block) + (s + 1) * self.block) % self.in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.spatial(x)
        if self.pointwise is None:
            return out
        if self.form == "overlap":
            return out + self.pointwise(x)
        others = torch.cat([x[:, start:stop] for start, stop in self.gather_slices()], 1)
        return out + self.pointwise(others)

    @torch.no_grad()
    def load_dense(self, weight: torch.Tensor) -> None:
        """Keep what this layer keeps of a dense K×K weight ``(N, M, K, K)``.

        Filter block s takes the K×K kernels of input block s and the centre taps of the others
        (in the overlap form, the 1×1 weights on its own block are zero).
        """
        n, m, kh, kw = weight.shape
        if (n, m, (kh, kw)) != (self.out_channels, self.in_channels, self.spatial.kernel_size):
            raise FalfValueError(f"dense weight of shape {tuple(weight.shape)} does not fit a HetConv2d with "
                             f"{self.out_channels} filters, {self.in_channels} inputs and kernel "
                             f"{self.spatial.kernel_size}")
        b, filters = self.block, self.out_channels // self.p
        for s in range(self.p):
            rows = slice(s * filters, (s + 1) * filters)
            self.spatial.weight[rows] = weight[rows, s * b:(s + 1) * b]
            if self.pointwise is None:
                continue
            centre = weight[rows, :, kh // 2, kw // 2]
            if self.form == "overlap":
                self.pointwise.weight[rows, :, 0, 0] = centre
                self.pointwise.weight[rows, s * b:(s + 1) * b] = 0.0
            else:
                self.pointwise.weight[rows, :, 0, 0] = centre[:, self.gathered_channels(s).to(weight.device)]

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        """The dense K×K weight ``(N, M, K, K)`` of the conv this layer equals: zero off its pattern."""
        kh, kw = self.spatial.kernel_size
        weight = self.spatial.weight.new_zeros(self.out_channels, self.in_channels, kh, kw)
        b, filters = self.block, self.out_channels // self.p
        for s in range(self.p):
            rows = slice(s * filters, (s + 1) * filters)
            weight[rows, s * b:(s + 1) * b] = self.spatial.weight[rows]
            if self.pointwise is None:
                continue
            if self.form == "overlap":  # the 1×1 weights on the own block add to the centre taps
                weight[rows, :, kh // 2, kw // 2] += self.pointwise.weight[rows, :, 0, 0]
            else:
                columns = self.gathered_channels(s).to(weight.device)
                weight[rows, columns, kh // 2, kw // 2] = self.pointwise.weight[rows, :, 0, 0]
        return weight

    def as_form(self, form: str) -> "HetConv2d":
        """This layer in another form: the same function (up to float rounding), e.g. trained in one form and
        run in the one measured faster."""
        spatial = self.spatial
        other = HetConv2d(self.in_channels, self.out_channels, spatial.kernel_size, self.p, spatial.stride,
                          spatial.padding, spatial.dilation, spatial.bias is not None, spatial.padding_mode,
                          device=spatial.weight.device, dtype=spatial.weight.dtype, form=form)
        other.load_dense(self.dense_weight())
        if spatial.bias is not None:
            with torch.no_grad():
                other.spatial.bias.copy_(spatial.bias)
        return other.train(self.training)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, p: int, form: str = "blocks") -> "HetConv2d":
        """A HetConv2d initialised from ``conv``: its K×K kernels where kept, their centre taps elsewhere."""
        blocker = conversion_blocker(conv, p)
        if blocker is not None:
            raise FalfValueError(f"cannot convert this conv to HetConv with P={p}: {blocker}")
        het = cls(conv.in_channels, conv.out_channels, conv.kernel_size, p, conv.stride, _padding_of(conv),
                  conv.dilation, conv.bias is not None, conv.padding_mode,
                  device=conv.weight.device, dtype=conv.weight.dtype, form=form)
        het.load_dense(conv.weight)
        if conv.bias is not None:
            with torch.no_grad():
                het.spatial.bias.copy_(conv.bias)
        het.train(conv.training)
        return het

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, p={self.p}, form={self.form}"


# -- the rewrite pass ----------------------------------------------------------------------


def _called_convs(gm: fx.GraphModule) -> dict[str, nn.Module]:
    """Every conv module the graph calls, by qualified name, in the order of their first call."""
    convs: dict[str, nn.Module] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            module = gm.get_submodule(node.target)
            if isinstance(module, nn.modules.conv._ConvNd):
                convs.setdefault(str(node.target), module)
    return convs


def _chosen(convs: dict[str, nn.Module], select: Selection) -> dict[str, Optional[str]]:
    """The convs a selection picks, each with a reason it is kept standard regardless (or None)."""
    if select is None:
        first = next(iter(convs), None)
        chosen = {}
        for name, conv in convs.items():
            if getattr(conv, "kernel_size", None) != (3, 3):
                continue
            reason = None
            if name == first:
                reason = "the network's first conv: kept standard (select it by name to convert it)"
            elif tuple(conv.stride) not in ((1, 1), (2, 2)):
                reason = f"stride {tuple(conv.stride)}: the default takes strides 1 and 2 (select it by name)"
            chosen[name] = reason
        return chosen
    if callable(select):
        return {name: None for name, conv in convs.items() if select(name, conv)}
    patterns = [select] if isinstance(select, str) else list(select)
    chosen = {name: None for name in convs if any(fnmatch.fnmatchcase(name, pat) for pat in patterns)}
    if not chosen:
        examples = ", ".join(f"'{n}'" for n in list(convs)[:4]) or "none"
        raise FalfValueError(f"select {patterns} matches no conv of this model (its convs are named like {examples})")
    return chosen


def _install(gm: fx.GraphModule, name: str, het: HetConv2d) -> None:
    """Put a plain container with the two convs at ``name``, as fx does for any traced submodule."""
    container = nn.Module()
    container.spatial = het.spatial
    if het.pointwise is not None:
        container.pointwise = het.pointwise
    owner, _, attr = name.rpartition(".")
    setattr(gm.get_submodule(owner), attr, container)


def _inline(gm: fx.GraphModule, node: fx.Node, name: str, body: fx.Graph) -> None:
    """Replace a call of the conv ``name`` by HetConv2d's traced body, its modules under ``name``."""
    x = node.args[0] if node.args else node.kwargs["input"]
    env: dict[fx.Node, object] = {}
    result = None
    with gm.graph.inserting_before(node):
        for inner in body.nodes:
            if inner.op == "placeholder":
                env[inner] = x
            elif inner.op == "output":
                result = fx.node.map_arg(inner.args[0], env.__getitem__)
            else:
                target = f"{name}.{inner.target}" if inner.op == "call_module" else inner.target
                env[inner] = gm.graph.create_node(inner.op, target, fx.node.map_arg(inner.args, env.__getitem__),
                                                  fx.node.map_arg(inner.kwargs, env.__getitem__))
    node.replace_all_uses_with(result)
    gm.graph.erase_node(node)


def _fastest_form(conv: nn.Conv2d, p: int, node: fx.Node, latency) -> tuple[str, dict[str, float]]:
    """The form of this layer measured fastest at its own input size, and each form's milliseconds."""
    from falf_fx.latency import measure_latency

    x = torch.randn((node.args[0] if node.args else node.kwargs["input"]).meta["val"].shape)
    timings = {form: measure_latency(HetConv2d.from_conv(conv, p, form), x, latency) for form in FORMS}
    return min(timings, key=timings.get), {form: round(ms, 5) for form, ms in timings.items()}


def hetconv_graph_module(gm: fx.GraphModule, p: int = 4, select: Selection = None, form: str = "blocks",
                         latency=None) -> fx.GraphModule:
    """A new GraphModule with the selected convs replaced by HetConv layers (``gm`` is untouched).

    ``select``: None takes every 3×3 conv with stride 1 or 2 except the network's first;
    name patterns (``"layer*.conv2"``) or a callable ``(name, conv) -> bool`` pick others.
    ``form``: ``"blocks"``, ``"overlap"``, or ``"auto"``: each layer's forms timed under
    ``latency`` (a ``falf_fx.latency.LatencySettings``; its default when None) and the
    faster kept.  Selected convs that cannot be converted stay standard;
    ``gm.meta[HETCONV_KEY]`` lists what was converted in which form, what was skipped
    and why, and for ``"auto"`` each layer's timings.
    """
    if not isinstance(p, int) or p < 1:
        raise FalfValueError(f"P must be a positive integer, got {p!r}")
    if form not in FORMS + ("auto",):
        raise FalfValueError(f"form must be one of {', '.join(FORMS + ('auto',))}, got {form!r}")
    if any("val" not in n.meta for n in gm.graph.nodes if n.op == "placeholder"):
        raise FalfValueError("trace the model with falf_fx.trace(model, example_inputs) before converting it")
    if form == "auto" and latency is None:
        from falf_fx.latency import LatencySettings
        latency = LatencySettings()
    new = copy.deepcopy(gm)
    convs = _called_convs(new)
    converted, forms, skipped, timings = [], {}, {}, {}
    for name, reason in _chosen(convs, select).items():
        reason = reason or conversion_blocker(convs[name], p)
        if reason is not None:
            skipped[name] = reason
            continue
        calls = [n for n in new.graph.nodes if n.op == "call_module" and n.target == name]
        chosen = form
        if form == "auto":
            chosen, timings[name] = _fastest_form(convs[name], p, calls[0], latency)
        het = HetConv2d.from_conv(convs[name], p, chosen)
        body = fx.symbolic_trace(het).graph
        for node in calls:
            _inline(new, node, name, body)
        _install(new, name, het)
        converted.append(name)
        forms[name] = chosen
    new.graph.lint()
    new.recompile()
    new.meta.pop("falf_fx.analysis", None)
    new.meta[HETCONV_KEY] = {"p": p, "form": form, "converted": converted, "forms": forms, "skipped": skipped}
    if form == "auto":
        new.meta[HETCONV_KEY].update(timings=timings, batch_size=latency.batch_size, threads=latency.thread_count)
    propagate_shapes(new, fake_inputs_like(gm))
    return new


class HetConvPass(PassBase):
    """torch.fx pass: replace the selected convs by HetConv layers (see :func:`hetconv_graph_module`)."""

    def __init__(self, p: int = 4, select: Selection = None, form: str = "blocks", latency=None) -> None:
        self.p, self.select, self.form, self.latency = p, select, form, latency

    def call(self, graph_module: fx.GraphModule) -> PassResult:
        new = hetconv_graph_module(graph_module, self.p, self.select, self.form, self.latency)
        return PassResult(new, bool(new.meta[HETCONV_KEY]["converted"]))
