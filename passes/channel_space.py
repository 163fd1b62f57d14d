"""Channel atoms: the index maps of the analysis.

Every position along a channel axis gets an integer *atom*. A tensor axis is
described by an array of atoms (one per position), so every index map the
analysis needs (offsets for concat/split, blocks for flatten -> linear,
permutations for channel shuffle) is a plain numpy expression on such arrays.

Two atoms are *united* when they must be removed together (the two sides of a
residual add, the same filter seen by two consumers).  A *channel* is a class
of united atoms; a *group* is a set of channels linked through the producer
(conv / linear output axis) that created them.

Unions, freezes and producer marks are only recorded (whole arrays at a time)
and resolved at the end with one connected-components pass, so the cost is
linear in the number of atoms however wide the concatenations get.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["ChannelSpace", "ParamAxis", "freeze_reason", "components", "first_seen_pairs"]


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _atoms(atoms: np.ndarray) -> np.ndarray:
    return np.asarray(atoms, dtype=np.int64).ravel()


def components(size: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Label of the connected component of every node 0..size-1 (edges a[i]-b[i])."""
    if a.size == 0:
        return np.arange(size, dtype=np.int64)
    graph = coo_matrix((np.ones(a.size, dtype=np.int8), (a, b)), shape=(size, size))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def first_seen_pairs(keys: np.ndarray, values: np.ndarray) -> list[tuple[int, int]]:
    """Distinct (key, value) pairs in the order they first occur."""
    if keys.size == 0:
        return []
    pairs = np.stack([keys, values], axis=1)
    _, first = np.unique(pairs, axis=0, return_index=True)
    first.sort()
    return [(int(k), int(v)) for k, v in pairs[first]]


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
class _Log:
    """(atoms, label) entries: labels stored once, atoms kept as the arrays given."""

    atoms: list[np.ndarray] = field(default_factory=list)
    label_ids: list[int] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)

    def add(self, atoms: np.ndarray, label: str) -> None:
        atoms = _atoms(atoms)
        if atoms.size:
            self.atoms.append(atoms)
            self.label_ids.append(self.labels.setdefault(label, len(self.labels)))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every atom entry, its label id and its entry number, as flat arrays."""
        if not self.atoms:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        lengths = [a.size for a in self.atoms]
        return (np.concatenate(self.atoms), np.repeat(np.asarray(self.label_ids, dtype=np.int64), lengths),
                np.repeat(np.arange(len(self.atoms), dtype=np.int64), lengths))

    def label_table(self) -> list[str]:
        return list(self.labels)


@dataclass
class ChannelSpace:
    """Atoms, their unions, which are producers, and which are frozen (with why)."""

    size: int = 0
    param_axes: dict[ParamAxis, np.ndarray] = field(default_factory=dict)
    frozen_params: dict[str, str] = field(default_factory=dict)
    _pairs: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    _frozen: _Log = field(default_factory=_Log)
    _producers: _Log = field(default_factory=_Log)
    _axes_of_param: dict[str, list[np.ndarray]] = field(default_factory=dict)

    # -- creating atoms -------------------------------------------------
    def new_atoms(self, count: int) -> np.ndarray:
        atoms = np.arange(self.size, self.size + count, dtype=np.int64)
        self.size += count
        return _readonly(atoms)

    def mark_producer(self, atoms: np.ndarray, owner: str) -> None:
        """``owner`` created these atoms (the first owner named for an atom keeps it)."""
        self._producers.add(atoms, owner)

    # -- relations ------------------------------------------------------
    def unite(self, a: np.ndarray, b: np.ndarray) -> None:
        """Unite a[i] with b[i] for every i (shapes must match)."""
        if a.shape != b.shape:
            raise RuntimeError(f"internal: a rule united atom arrays of shapes {a.shape} and {b.shape}")
        a, b = _atoms(a), _atoms(b)
        differ = a != b
        if differ.any():
            self._pairs.append((a[differ], b[differ]))

    def unite_all(self, atoms: np.ndarray) -> None:
        """Unite every atom of the array into one channel."""
        unique = np.unique(atoms)
        if unique.size > 1:
            self._pairs.append((np.full(unique.size - 1, unique[0]), unique[1:]))

    def unite_blocks(self, atoms: np.ndarray, blocks: int) -> np.ndarray:
        """Unite position p of every block with position p of block 0.

        Keeps all blocks the same width after pruning (grouped convs, chunk).
        Returns the atoms of block 0, which now stand for every block.
        """
        table = atoms.reshape(blocks, -1)
        self.unite(np.broadcast_to(table[0], table[1:].shape), table[1:])
        return _readonly(table[0].copy())

    def freeze(self, atoms: np.ndarray, reason: str) -> None:
        self._frozen.add(atoms, reason)

    # -- parameters -----------------------------------------------------
    def bind_param(self, axis: ParamAxis, atoms: np.ndarray) -> np.ndarray:
        """Say which channel each position of a parameter axis belongs to.

        A parameter bound twice (a module called twice, tied weights) unites
        the two bindings: both call sites must slice it the same way.
        """
        bound = self.param_axes.get(axis)
        if bound is None:
            self.param_axes[axis] = atoms
            self._axes_of_param.setdefault(axis.name, []).append(atoms)
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
        for atoms in self._axes_of_param.get(name, ()):
            self.freeze(atoms, reason)

    # -- results --------------------------------------------------------
    def channel_of_atoms(self) -> np.ndarray:
        """Map every atom to a dense channel id (ids ordered by first atom)."""
        if self._pairs:
            a = np.concatenate([p[0] for p in self._pairs])
            b = np.concatenate([p[1] for p in self._pairs])
        else:
            a = b = np.zeros(0, dtype=np.int64)
        labels = components(self.size, a, b)
        # renumber so channel ids follow the order in which atoms were created
        _, first_index, inverse = np.unique(labels, return_index=True, return_inverse=True)
        order = np.argsort(first_index, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        return rank[inverse]

    def frozen_entries(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """Every frozen atom entry: atoms, reason ids, entry numbers (log order), and the reason texts."""
        return (*self._frozen.arrays(), self._frozen.label_table())

    def producer_atoms(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Producer atoms (each once, in the order first marked) with the id of their first owner."""
        atoms, owners, _ = self._producers.arrays()
        unique, first = np.unique(atoms, return_index=True)
        order = np.argsort(first, kind="stable")
        return unique[order], owners[first[order]], self._producers.label_table()

    @property
    def frozen(self) -> dict[int, list[str]]:
        """Atom -> its freeze reasons (each once, in the order given); for inspection and tests."""
        found: dict[int, list[str]] = {}
        table = self._frozen.label_table()
        for atoms, label in zip(self._frozen.atoms, self._frozen.label_ids):
            for atom in np.unique(atoms).tolist():
                reasons = found.setdefault(atom, [])
                if table[label] not in reasons:
                    reasons.append(table[label])
        return found

    @property
    def producer_owner(self) -> dict[int, str]:
        """Producer atom -> the first owner that marked it; for inspection and tests."""
        atoms, owners, table = self.producer_atoms()
        return {int(a): table[o] for a, o in zip(atoms, owners)}
