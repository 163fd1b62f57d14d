"""Channel atoms: the index maps of the analysis.

Every position along a channel axis gets an integer *atom*. A tensor axis is
described by an array of atoms (one per position), so every index map the
analysis needs (offsets for concat/split, blocks for flatten -> linear,
permutations for channel shuffle) is a plain numpy expression on such arrays.

Two atoms are *united* when they must be removed together (the two sides of a
residual add, the same filter seen by two consumers).  A *channel* is a class
of united atoms; a *group* is a set of channels linked through the producer
(conv / linear output axis) that created them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from networkx.utils import UnionFind

__all__ = ["ChannelSpace", "ParamAxis", "freeze_reason"]


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


@dataclass(frozen=True)
class ParamAxis:
    """One axis of a parameter or buffer, named by its qualified name."""

    name: str
    dim: int

    def __str__(self) -> str:
        return f"{self.name}[dim {self.dim}]"


def freeze_reason(kind: str, where: str) -> str:
    return f"{kind} ({where})"


@dataclass
class ChannelSpace:
    """Atoms, their unions, which are producers, and which are frozen (with why)."""

    size: int = 0
    union_find: UnionFind = field(default_factory=UnionFind)
    producer_owner: dict[int, str] = field(default_factory=dict)
    frozen: dict[int, list[str]] = field(default_factory=dict)
    param_axes: dict[ParamAxis, np.ndarray] = field(default_factory=dict)
    frozen_params: dict[str, str] = field(default_factory=dict)

    # -- creating atoms -------------------------------------------------
    def new_atoms(self, count: int) -> np.ndarray:
        atoms = np.arange(self.size, self.size + count, dtype=np.int64)
        self.size += count
        return _readonly(atoms)

    def mark_producer(self, atoms: np.ndarray, owner: str) -> None:
        for atom in atoms.tolist():
            self.producer_owner.setdefault(atom, owner)

    # -- relations ------------------------------------------------------
    def unite(self, a: np.ndarray, b: np.ndarray) -> None:
        """Unite a[i] with b[i] for every i (shapes must match)."""
        if a.shape != b.shape:
            raise ValueError(f"cannot unite atom arrays of shapes {a.shape} and {b.shape}")
        for x, y in zip(a.tolist(), b.tolist()):
            if x != y:
                self.union_find.union(x, y)

    def unite_all(self, atoms: np.ndarray) -> None:
        """Unite every atom of the array into one channel."""
        unique = np.unique(atoms)
        if unique.size > 1:
            self.union_find.union(*unique.tolist())

    def unite_blocks(self, atoms: np.ndarray, blocks: int) -> np.ndarray:
        """Unite position p of every block with position p of block 0.

        Keeps all blocks the same width after pruning (grouped convs, chunk).
        Returns the atoms of block 0, which now stand for every block.
        """
        table = atoms.reshape(blocks, -1)
        for row in table[1:]:
            self.unite(table[0], row)
        return _readonly(table[0].copy())

    def freeze(self, atoms: np.ndarray, reason: str) -> None:
        for atom in np.unique(atoms).tolist():
            reasons = self.frozen.setdefault(atom, [])
            if reason not in reasons:
                reasons.append(reason)

    # -- parameters -----------------------------------------------------
    def bind_param(self, axis: ParamAxis, atoms: np.ndarray) -> np.ndarray:
        """Say which channel each position of a parameter axis belongs to.

        A parameter bound twice (a module called twice, tied weights) unites
        the two bindings: both call sites must slice it the same way.
        """
        bound = self.param_axes.get(axis)
        if bound is None:
            self.param_axes[axis] = atoms
            bound = atoms
        else:
            self.unite(bound, atoms)
        if axis.name in self.frozen_params:
            self.freeze(atoms, self.frozen_params[axis.name])
        return bound

    def param_atoms(self, axis: ParamAxis, length: int) -> np.ndarray:
        """The atoms of a parameter axis, created on first use."""
        if axis not in self.param_axes:
            self.bind_param(axis, self.new_atoms(length))
        return self.param_axes[axis]

    def freeze_param(self, name: str, reason: str) -> None:
        self.frozen_params.setdefault(name, reason)
        for axis, atoms in self.param_axes.items():
            if axis.name == name:
                self.freeze(atoms, reason)

    # -- results --------------------------------------------------------
    def channel_of_atoms(self) -> np.ndarray:
        """Map every atom to a dense channel id (ids ordered by first atom)."""
        roots = np.array([self.union_find[a] for a in range(self.size)], dtype=np.int64)
        _, first_index, inverse = np.unique(roots, return_index=True, return_inverse=True)
        # renumber so channel ids follow the order in which atoms were created
        order = np.argsort(first_index, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        return rank[inverse]
