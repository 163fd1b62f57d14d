"""Models from libraries whose classes users keep calling after pruning: Hugging Face and Ultralytics.

A slim model captured whole is returned as an instance of such a class too
(:func:`falf_fx.parts.adopt_interface`), so ``save_pretrained``, ``config`` or the
Ultralytics trainer's ``model.model[-1]`` still work.  A Hugging Face ``config``
describes the original widths, though: :func:`stale_config` names the tensors that
``from_pretrained`` would build at another shape from it.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from .parts import ADOPTED

__all__ = ["LIBRARY_MODELS", "is_library_model", "stale_config", "warn_stale_config"]

# (module, class name) of the base classes recognised in a model's MRO
LIBRARY_MODELS = (("transformers.modeling_utils", "PreTrainedModel"), ("ultralytics.nn.tasks", "BaseModel"))


def is_library_model(model: nn.Module) -> bool:
    return any((base.__module__, base.__name__) in LIBRARY_MODELS for base in type(model).__mro__)


def stale_config(slim: nn.Module) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Tensors whose slim shape differs from what the model's class builds from ``slim.config``
    (name -> (slim shape, config shape)); empty for a model without a Hugging Face config.

    The class is built on the meta device: no memory, no initialisation.
    """
    config = getattr(slim, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return {}
    cls = next((base for base in type(slim).__mro__ if not vars(base).get(ADOPTED) and "config_class" in dir(base)),
               None)
    if cls is None:
        return {}
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rebuilt = cls(config)
    expected = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    return {k: (tuple(v.shape), expected[k]) for k, v in slim.state_dict().items()
            if k in expected and tuple(v.shape) != expected[k]}


def warn_stale_config(slim: nn.Module) -> None:
    """Say, once per prune, that ``config`` no longer rebuilds the slim model, and what to save with."""
    stale = stale_config(slim)
    if stale:
        name, (have, want) = next(iter(stale.items()))
        warnings.warn(f"falf_fx: the slim model's config still describes the original widths: {len(stale)} "
                      f"tensors differ from what it builds (e.g. {name}: {have} here, {want} from the config), so "
                      "from_pretrained cannot rebuild save_pretrained's output; save with falf_fx.save(slim, path) "
                      "and load with falf_fx.load", stacklevel=3)
