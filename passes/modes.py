"""Eval mode and module attributes kept for the length of a block: shapes, references and measurements must
not change a model."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["attributes_kept", "eval_mode"]


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


@contextlib.contextmanager
def attributes_kept(model: nn.Module) -> Iterator[None]:
    """Every module of ``model`` ends with the attributes it started with.

    Tracing, shape propagation and cost counting run the model (on meta tensors, or
    under fvcore's jit trace); a module that caches something built from its input
    (YOLO's Detect keeps its anchors and the input shape) would keep a meta or traced
    tensor, and the user's model would no longer run, or run differently.  A traced
    GraphModule shares those modules, so it gets them back as they were too.
    """
    saved = [(m, dict(vars(m)), dict(m._parameters), dict(m._buffers), dict(m._modules)) for m in model.modules()]
    try:
        yield
    finally:
        for module, attributes, parameters, buffers, children in saved:
            for key in [k for k in vars(module) if k not in attributes]:
                delattr(module, key)
            for key, value in attributes.items():
                if vars(module).get(key) is not value:
                    vars(module)[key] = value
            for registry, kept in ((module._parameters, parameters), (module._buffers, buffers),
                                   (module._modules, children)):
                if registry != kept or any(registry[k] is not v for k, v in kept.items()):
                    registry.clear()
                    registry.update(kept)
