"""Channel counts read at run time (``x.size(1)``, ``x.shape``, ``x.numel()``) and where they go.

A slim model reads its own, smaller sizes.  A view or reshape wants exactly
that (their rules judge run-time sizes themselves), but arithmetic on a channel
count (``x / x.shape[1]``) would silently change the result, so the channels a
count was read from are frozen wherever it is used as a value.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import fx

from .channel_space import ChannelSpace

__all__ = ["ChannelCount", "read_count", "combine_counts", "freeze_counts"]


@dataclass(frozen=True)
class ChannelCount:
    """The channel atoms whose number an int was computed from, and the tensors it was read from."""

    atoms: tuple[np.ndarray, ...]
    sources: frozenset[str] = frozenset()


def read_count(node: fx.Node, layouts: dict[fx.Node, Any]) -> Any:
    """What a size read depends on: a ChannelCount, a tuple of them per dim (``x.size()``), or None."""
    source = node.args[0] if node.args else None
    if not isinstance(source, fx.Node) or not isinstance(source.meta.get("val"), torch.Tensor):
        return None
    layout = layouts.get(source)
    layout = layout if isinstance(layout, dict) else {}
    rank = source.meta["val"].dim()
    read_from = frozenset((source.name,))
    per_dim = tuple(ChannelCount((layout[d],) if d in layout else (), read_from) for d in range(rank))
    if node.op == "call_method" and node.target == "size":
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return per_dim if dim is None else per_dim[dim] if isinstance(dim, int) else None
    if node.op == "call_function" and node.target is getattr and node.args[1:] == ("shape",):
        return per_dim
    if node.op == "call_method" and node.target == "numel":
        return ChannelCount(tuple(layout.values()), read_from)
    return None


def _input_counts(node: fx.Node, counts: dict[fx.Node, Any]) -> list[ChannelCount]:
    """Every count among the node's inputs (a count is a ChannelCount or a tuple of them)."""
    found: list[ChannelCount] = []
    for source in node.all_input_nodes:
        count = counts.get(source)
        found.extend(part for part in (count if isinstance(count, tuple) else (count,))
                     if isinstance(part, ChannelCount))
    return found


def _input_atoms(node: fx.Node, counts: dict[fx.Node, Any]) -> list[np.ndarray]:
    """The channel atoms behind every count among the node's inputs."""
    return [atoms for count in _input_counts(node, counts) for atoms in count.atoms]


def combine_counts(node: fx.Node, counts: dict[fx.Node, Any]) -> Optional[Any]:
    """The counts a Python-level node (indexing a size, int arithmetic) depends on."""
    if node.target is operator.getitem and isinstance(counts.get(node.args[0]), tuple):
        per_dim, index = counts[node.args[0]], node.args[1]
        if isinstance(index, (int, slice)):
            return per_dim[index]
    found = _input_counts(node, counts)
    atoms = tuple(a for count in found for a in count.atoms)
    return ChannelCount(atoms, frozenset().union(*(c.sources for c in found))) if atoms else None


def freeze_counts(space: ChannelSpace, node: fx.Node, counts: dict[fx.Node, Any], where: str) -> None:
    """Freeze the channels whose count reaches ``node`` as a value."""
    for atoms in _input_atoms(node, counts):
        space.freeze(atoms, f"its channel count is read at run time and used as a value ({where})")
