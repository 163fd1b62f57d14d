"""Latency as a pruning cost: per-layer tables measured on this machine, and a plan's predicted latency.

MACs are a proxy: a conv's time does not fall in step with its channels (kernels
are tuned for some widths, small layers are bound by memory and overhead).  So
every prunable conv and linear layer is timed alone, at its own input size, on a
grid of kept input and output shares; a plan's latency is the measured latency
of the whole model less what each layer saves, read off its table.  Tables are
cached on disk (JSON, never pickle), keyed by the processor, torch version,
thread count and batch size, so a layer shape is timed once per machine.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import fx, nn

from falf_fx.passes.analysis import Analysis
from falf_fx.passes.channel_space import ParamAxis
from falf_fx.passes.modes import attributes_kept, eval_mode

from .capture import as_input_tuple

__all__ = ["GRID", "LatencyModel", "LatencySettings", "channel_latency_costs", "latency_ratio",
           "measure_latency", "report_latency_ms"]

GRID = (0.125, 0.25, 0.5, 0.75, 1.0)  # kept shares of an axis at which each layer is timed
_MIN_ROUNDS = 5  # back-to-back ratios behind every latency ratio, before its spread may end the timing


@dataclass(frozen=True)
class LatencySettings:
    """Where latency is measured: batch size (None: the example's own inputs as they are), threads (None:
    torch's current count), and the table cache."""

    batch_size: Optional[int] = 1
    threads: Optional[int] = None
    cache_dir: Optional[str] = None  # None: $FALF_FX_CACHE, else ~/.cache/falf_fx
    min_run_time: float = 0.05  # seconds of runs behind each timing
    # how long a latency ratio may be timed for a 1% standard error: on a shared virtual machine one back-to-back
    # pair's ratio spreads by about 10% even when nothing else runs, so that takes about 100 pairs (15 left 3%)
    max_rounds: int = 100
    max_seconds: float = 120.0  # after the first 5 pairs

    @property
    def thread_count(self) -> int:
        return self.threads or torch.get_num_threads()

    def machine(self) -> dict[str, Any]:
        """What a measured table holds for: the processor, torch, threads and batch size."""
        return {"processor": _processor(), "torch": torch.__version__, "threads": self.thread_count,
                "batch_size": self.batch_size}

    def cache_file(self) -> Path:
        root = Path(self.cache_dir or os.environ.get("FALF_FX_CACHE") or Path.home() / ".cache" / "falf_fx")
        key = hashlib.sha1(json.dumps(self.machine(), sort_keys=True).encode()).hexdigest()[:16]
        return root / "latency" / f"{key}.json"


def _processor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _median_seconds(stmt: str, env: dict[str, Any], settings: LatencySettings) -> float:
    from torch.utils import benchmark

    timer = benchmark.Timer(stmt=stmt, globals=env, num_threads=settings.thread_count)
    return timer.blocked_autorange(min_run_time=settings.min_run_time).median


def measure_latency(model: nn.Module, example_inputs: Any, settings: LatencySettings = LatencySettings()) -> float:
    """Median latency of one eval forward in milliseconds, the example's first sample repeated to
    ``batch_size`` (None: the example as it is)."""
    inputs = tuple(_batched(x, settings.batch_size) for x in as_input_tuple(example_inputs))
    with torch.inference_mode(), eval_mode(model), attributes_kept(model):
        return _median_seconds("model(*x)", {"model": model, "x": inputs}, settings) * 1e3


def report_latency_ms(model: nn.Module, example_inputs: Any) -> float:
    """The latency a report shows: the example's inputs as they are, at torch's thread count, 0.2 s of runs."""
    return measure_latency(model, example_inputs, LatencySettings(batch_size=None, min_run_time=0.2))


def latency_ratio(model: nn.Module, original: nn.Module, example_inputs: Any,
                  settings: LatencySettings = LatencySettings(), precision: float = 0.01) -> float:
    """``model``'s latency over ``original``'s: the median of ratios of the two timed back to back (in turns
    first), so that load from other work on the machine falls on both alike.  Rounds are added until the
    median's standard error is within ``precision`` of it, or ``settings.max_rounds`` pairs or ``max_seconds``
    are spent: a busy machine is timed longer, not trusted."""
    ratios: list[float] = []
    start = time.perf_counter()
    while len(ratios) < settings.max_rounds:
        pair = (model, original) if len(ratios) % 2 == 0 else (original, model)
        ms = [measure_latency(m, example_inputs, settings) for m in pair]
        ratios.append(ms[0] / ms[1] if pair[0] is model else ms[1] / ms[0])
        if len(ratios) >= _MIN_ROUNDS and (_median_error(ratios) <= precision
                                           or time.perf_counter() - start >= settings.max_seconds):
            break
    return float(np.median(ratios))


def _median_error(values: Sequence[float]) -> float:
    """The relative standard error of the median of ``values``, from their interquartile range (so the odd
    run slowed by other work widens it less than a standard deviation would)."""
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return float(0.93 * (q3 - q1) / np.sqrt(len(values)) / median) if median else 0.0


def _batched(x: Any, batch_size: Optional[int]) -> Any:
    if batch_size is None or not isinstance(x, torch.Tensor) or x.dim() == 0:
        return x
    return x[:1].expand(batch_size, *x.shape[1:]).contiguous()


# -- the layers a plan changes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layer:
    """A prunable conv or linear layer: its shape, and the global channel ids of its weight's axes."""

    name: str
    signature: str  # the layer's shape, batch included: the key of its table
    depthwise: bool
    out_ids: np.ndarray
    in_ids: np.ndarray  # empty where the input axis is not prunable (or depthwise: it follows the output)


def _weight_ids(analysis: Analysis, name: str, dim: int) -> np.ndarray:
    atoms = analysis.param_axes.get(ParamAxis(f"{name}.weight" if name else "weight", dim))
    if atoms is None or not atoms.size:
        return np.zeros(0, dtype=np.int64)
    return analysis.channel_of_atom[atoms]


def _prunable(analysis: Analysis, ids: np.ndarray) -> bool:
    """Whether any of these channels can go (a channel of a prunable group, not frozen)."""
    for channel in np.unique(ids).tolist():
        gid = int(analysis.group_of_channel[channel])
        group = analysis.groups[gid] if gid >= 0 else None
        if group is not None and group.prunable and not group.frozen[analysis.index_in_group[channel]]:
            return True
    return False


def _weighted_nodes(gm: fx.GraphModule):
    """Each conv and linear call with its module and the meta tensors of its input and output."""
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        module = gm.get_submodule(node.target)
        if (isinstance(module, (nn.Conv2d, nn.Linear)) and node.args and "val" in getattr(node.args[0], "meta", {})
                and isinstance(node.meta.get("val"), torch.Tensor)):
            yield node, module


def _activation_volumes(analysis: Analysis) -> list[tuple[float, np.ndarray]]:
    """Every conv and linear output's size, and the channel ids of its prunable output axis (maybe none).

    The other layers (norms, activations, additions, pooling) work on these
    outputs, so their time is taken to fall with the kept share of this volume.
    """
    volumes = []
    for node, _ in _weighted_nodes(analysis.graph_module):
        ids = _weight_ids(analysis, node.target, 0)
        volumes.append((float(node.meta["val"][0].numel()), ids if _prunable(analysis, ids) else ids[:0]))
    return volumes


def _layers(analysis: Analysis, batch_size: Optional[int]) -> list[_Layer]:
    layers = []
    for node, module in _weighted_nodes(analysis.graph_module):
        out_ids, in_ids = _weight_ids(analysis, node.target, 0), _weight_ids(analysis, node.target, 1)
        depthwise = isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels
        if isinstance(module, nn.Conv2d) and module.groups > 1 and not depthwise:
            continue  # grouped convs: a MACs-like share of their time, left to the correction on the whole model
        if not _prunable(analysis, out_ids):
            out_ids = np.zeros(0, dtype=np.int64)
        if depthwise or not _prunable(analysis, in_ids):
            in_ids = np.zeros(0, dtype=np.int64)
        if not out_ids.size and not in_ids.size:
            continue
        shape = list(node.args[0].meta["val"].shape)
        shape[0] = batch_size or shape[0]
        layers.append(_Layer(node.target, _signature(module, shape), depthwise, out_ids, in_ids))
    return layers


def _signature(module: nn.Module, input_shape: Sequence[int]) -> str:
    if isinstance(module, nn.Conv2d):
        spec = {"kind": "conv2d", "in": module.in_channels, "out": module.out_channels,
                "kernel": list(module.kernel_size), "stride": list(module.stride),
                "padding": module.padding if isinstance(module.padding, str) else list(module.padding),
                "dilation": list(module.dilation), "groups": module.groups, "bias": module.bias is not None}
    else:
        spec = {"kind": "linear", "in": module.in_features, "out": module.out_features,
                "bias": module.bias is not None}
    return json.dumps({**spec, "input": list(input_shape)}, sort_keys=True)


def _time_layer(signature: str, kept_in: float, kept_out: float, settings: LatencySettings) -> float:
    """Milliseconds of the layer with these shares of its input and output channels kept (depthwise: both)."""
    spec = json.loads(signature)
    cin, cout = max(1, round(spec["in"] * kept_in)), max(1, round(spec["out"] * kept_out))
    shape = list(spec["input"])
    if spec["kind"] == "conv2d":
        groups = 1
        if spec["groups"] > 1:  # depthwise: channels and groups shrink together, the multiplier stays
            groups = cin = max(1, round(spec["in"] * kept_out))
            cout = cin * (spec["out"] // spec["in"])
        padding = spec["padding"] if isinstance(spec["padding"], str) else tuple(spec["padding"])
        layer = nn.Conv2d(cin, cout, tuple(spec["kernel"]), tuple(spec["stride"]), padding,
                          tuple(spec["dilation"]), groups, spec["bias"])
        shape[1] = cin
    else:
        layer = nn.Linear(cin, cout, spec["bias"])
        shape[-1] = cin
    x = torch.randn(shape)
    with torch.inference_mode():
        return _median_seconds("layer(x)", {"layer": layer.eval(), "x": x}, settings) * 1e3


def _grids(layer: _Layer) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The kept shares a layer is timed at: the grid on each axis that can shrink, full width on the others."""
    return (GRID if layer.in_ids.size else (1.0,)), (GRID if layer.out_ids.size else (1.0,))


class LatencyModel:
    """The latency a plan leaves, predicted from measured per-layer tables (the ``predict`` of ``MacsModel``).

    ``total`` is the model's measured latency; each prunable conv or linear layer
    saves its full time less its time at the kept shares (bilinear in the grid,
    held at the grid's smallest share below it).  The rest of the time (every
    other layer, and the overhead) falls with the kept share of the conv and
    linear outputs' volume.  A first-order model: callers measure the slim model
    and correct their goal.
    """

    def __init__(self, analysis: Analysis, total_ms: float, settings: LatencySettings = LatencySettings(),
                 progress: bool = False) -> None:
        self.analysis, self.total, self.settings = analysis, float(total_ms), settings
        self.layers = _layers(analysis, settings.batch_size)
        self.tables = _load_tables(settings, self.layers, progress)
        self.volumes = _activation_volumes(analysis)
        self.volume = sum(size for size, _ in self.volumes) or 1.0
        self.rest = max(self.total - sum(self.layer_ms(layer, 1.0, 1.0) for layer in self.layers), 0.0)

    def layer_ms(self, layer: _Layer, kept_in: float, kept_out: float) -> float:
        grid_in, grid_out = _grids(layer)
        table = np.asarray(self.tables[layer.signature])
        along_out = [np.interp(kept_out, grid_out, row) for row in table]
        return float(np.interp(kept_in, grid_in, along_out))

    def saved_ms(self, layer: _Layer, removed: np.ndarray) -> float:
        kept_in = 1.0 - removed[layer.in_ids].mean() if layer.in_ids.size else 1.0
        kept_out = 1.0 - removed[layer.out_ids].mean() if layer.out_ids.size else 1.0
        return self.layer_ms(layer, 1.0, 1.0) - self.layer_ms(layer, kept_in, kept_out)

    def predict(self, removed: np.ndarray) -> float:
        """Milliseconds left when the channels flagged in ``removed`` (global channel ids) go."""
        volume_saved = sum(size * removed[ids].mean() for size, ids in self.volumes if ids.size)
        return (self.total - sum(self.saved_ms(layer, removed) for layer in self.layers)
                - self.rest * volume_saved / self.volume)


def _load_tables(settings: LatencySettings, layers: Sequence[_Layer], progress: bool) -> dict[str, list]:
    """Each layer shape's table (rows: kept input shares, columns: kept output shares), timing what the cache
    lacks and writing it back."""
    path = settings.cache_file()
    cached: dict[str, Any] = {}
    if path.exists():
        try:
            cached = json.loads(path.read_text()).get("layers", {})
        except (OSError, ValueError):
            cached = {}  # a damaged cache is measured again, never trusted
    wanted: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {}
    for layer in layers:
        grids = _grids(layer)
        key = layer.signature
        entry = cached.get(key)
        if entry is None or [len(entry), len(entry[0])] != [len(grids[0]), len(grids[1])]:
            wanted[key] = grids
    if wanted:
        from rich.progress import track

        points = [(key, i, o) for key, (gin, gout) in wanted.items() for i in gin for o in gout]
        tables = {key: [[0.0] * len(gout) for _ in gin] for key, (gin, gout) in wanted.items()}
        for key, i, o in track(points, description="timing layers", disable=not progress, transient=True):
            gin, gout = wanted[key]
            tables[key][gin.index(i)][gout.index(o)] = _time_layer(key, i, o, settings)
        cached.update(tables)
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_suffix(".tmp")
        scratch.write_text(json.dumps({"machine": settings.machine(), "layers": cached}, indent=0))
        os.replace(scratch, path)
    return {layer.signature: cached[layer.signature] for layer in layers}


def channel_latency_costs(model: LatencyModel) -> dict[int, np.ndarray]:
    """Estimated milliseconds saved by removing each channel of each prunable group (first order).

    A layer axis of n channels whose time falls by d from all kept to the next grid
    share s saves d / (n (1 - s)) per channel: the slope of its table near full width.
    """
    analysis = model.analysis
    costs = {group.id: np.zeros(group.size) for group in analysis.prunable_groups}
    step = GRID[-2]
    for layer in model.layers:
        full = model.layer_ms(layer, 1.0, 1.0)
        for ids, kept in ((layer.in_ids, (step, 1.0)), (layer.out_ids, (1.0, step))):
            if not ids.size:
                continue
            slope = max(full - model.layer_ms(layer, *kept), 0.0) / (ids.size * (1.0 - step))
            for channel in ids.tolist():
                gid = int(analysis.group_of_channel[channel])
                if gid in costs:
                    costs[gid][analysis.index_in_group[channel]] += slope
    return costs
