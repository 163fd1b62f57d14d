"""Eval mode for the length of a block: shapes, references and measurements must not change a model."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["eval_mode"]


@contextlib.contextmanager
def eval_mode(*roots: nn.Module) -> Iterator[None]:
    """Every module under ``roots`` in eval mode while the block runs; each one's own mode restored after."""
    modes = {m: m.training for root in roots for m in root.modules()}
    try:
        for root in roots:
            root.eval()
        yield
    finally:
        for module, mode in modes.items():
            module.training = mode
