"""How channel atoms travel through view/reshape/flatten/unflatten/squeeze.

Pure functions on shapes and atom arrays, tested on their own.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .channel_space import ChannelSpace

__all__ = ["reshape_chunks", "map_reshape"]


def reshape_chunks(in_shape: Sequence[int], out_shape: Sequence[int]) -> list[tuple[range, range]]:
    """Pair runs of input dims with runs of output dims of equal element count.

    This is how a view regroups memory: ``(N, C, H, W) -> (N, g, C//g, H, W)``
    pairs ``C`` with ``(g, C//g)``.  Sizes that do not match are a bug of the caller (RuntimeError).
    """
    chunks: list[tuple[range, range]] = []
    i = j = 0
    n, m = len(in_shape), len(out_shape)
    while i < n or j < m:
        i0, j0 = i, j
        p_in = p_out = 1
        if i < n:
            p_in *= in_shape[i]
            i += 1
        if j < m:
            p_out *= out_shape[j]
            j += 1
        while p_in != p_out:
            if p_in < p_out and i < n:
                p_in *= in_shape[i]
                i += 1
            elif p_out < p_in and j < m:
                p_out *= out_shape[j]
                j += 1
            else:
                raise RuntimeError(f"internal: reshape from {tuple(in_shape)} to {tuple(out_shape)} changes the "
                                   "number of elements")
        chunks.append((range(i0, i), range(j0, j)))
    return chunks


def _pick_output_dim(grid: np.ndarray, dynamic: Sequence[bool]) -> int:
    """Choose the output dim that carries the channels.

    Only dims that leave no run-time size beside them qualify, if any do (a
    run-time size beside the channels freezes them).  Among those, prefer a dim
    along which the atoms are already constant across the other dims (no new
    coupling needed); else the largest dim (finest pruning granularity), then
    one whose size is computed at run time, then the outermost.
    """
    candidates = [k for k in range(grid.ndim) if grid.shape[k] > 1]
    alone = [k for k in candidates if not any(dynamic[j] for j in candidates if j != k)]
    candidates = alone or candidates
    for k in candidates:
        rows = np.moveaxis(grid, k, 0).reshape(grid.shape[k], -1)
        if (rows == rows[:, :1]).all():
            return k
    return max(candidates, key=lambda k: (grid.shape[k], dynamic[k], -k))


def map_reshape(
    space: ChannelSpace,
    layout: dict[int, np.ndarray],
    in_shape: Sequence[int],
    out_shape: Sequence[int],
    where: str,
    dynamic_out: Sequence[bool] | None = None,
) -> dict[int, np.ndarray]:
    """Layout of a reshape's output, uniting atoms that must now go together.

    ``dynamic_out[k]`` says whether output dim k's size is computed at run time
    (an fx node or -1) rather than written as a literal.  A literal size beside
    the channel dim in the same chunk is fine (it stays); a run-time size there
    could silently change after slimming, so the channels are frozen instead.
    """
    dynamic_out = dynamic_out or [False] * len(out_shape)
    out: dict[int, np.ndarray] = {}
    for in_dims, out_dims in reshape_chunks(in_shape, out_shape):
        tracked = [d for d in in_dims if d in layout]
        for d in tracked:
            if in_shape[d] == 1:
                space.freeze(layout[d], f"a single channel reshaped away ({where})")
        tracked = [d for d in tracked if in_shape[d] > 1]
        if not tracked:
            continue
        for d in tracked[1:]:
            space.freeze(layout[d], f"two channel axes merged by a reshape ({where})")
        t = tracked[0]
        if len(out_dims) == 0:
            continue
        grid_shape = [in_shape[d] for d in in_dims]
        expand = [1] * len(grid_shape)
        expand[t - in_dims.start] = in_shape[t]
        grid = np.broadcast_to(layout[t].reshape(expand), grid_shape)
        grid = grid.reshape([out_shape[d] for d in out_dims])
        dyn = [dynamic_out[d] for d in out_dims]
        k = _pick_output_dim(grid, dyn)
        others = [d for i, d in enumerate(out_dims) if i != k and out_shape[d] > 1]
        if any(dynamic_out[d] for d in others):
            space.freeze(layout[t], f"reshape with a run-time size beside the channel axis ({where})")
            continue
        rows = np.moveaxis(grid, k, 0).reshape(grid.shape[k], -1)
        if rows.shape[1] > 1:
            for row in rows:
                space.unite_all(row)
        atoms = rows[:, 0].copy()
        atoms.flags.writeable = False
        out[out_dims.start + k] = atoms
    return out
