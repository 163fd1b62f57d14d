"""Checkpoints: one file per training phase, written atomically, tied to the model they came from."""
from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from .errors import FalfError, first_line

__all__ = ["CheckpointError", "CheckpointStore", "fingerprint"]


class CheckpointError(FalfError):
    """A checkpoint is missing, unreadable, or belongs to another model."""


def fingerprint(model: nn.Module) -> str:
    """A digest of the model's parameter and buffer names and shapes (its architecture)."""
    digest = hashlib.sha1()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
    return digest.hexdigest()


class CheckpointStore:
    def __init__(self, directory: Union[str, os.PathLike]) -> None:
        self.directory = Path(directory)

    def path(self, phase: str) -> Path:
        return self.directory / f"{phase}.pt"

    def save(self, phase: str, model_fingerprint: str, state: dict[str, Any]) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.path(phase)
        partial = target.with_suffix(".pt.partial")
        torch.save({"fingerprint": model_fingerprint, **state}, partial)
        os.replace(partial, target)  # a crash mid-write never leaves a broken checkpoint
        return target

    def load(self, phase: str, model_fingerprint: Optional[str] = None) -> Optional[dict[str, Any]]:
        """The saved state of a phase, or None if that phase never saved one."""
        target = self.path(phase)
        if not target.exists():
            return None
        try:
            state = torch.load(target, weights_only=True)
        except pickle.UnpicklingError as error:
            raise CheckpointError(f"checkpoint {target} refused: it holds pickled objects, so falf_fx did not write "
                                  f"it (and does not run it); delete it or use another checkpoint_dir "
                                  f"({first_line(error)})") from error
        except Exception as error:  # noqa: BLE001 - reported with the file's name
            raise CheckpointError(f"cannot read checkpoint {target}: {first_line(error)}") from error
        if not isinstance(state, dict) or "fingerprint" not in state:
            raise CheckpointError(f"checkpoint {target} is not one falf_fx wrote (no model fingerprint); delete it "
                                  "or use another checkpoint_dir")
        if model_fingerprint is not None and state.get("fingerprint") != model_fingerprint:
            raise CheckpointError(f"checkpoint {target} was written for a different model "
                                  "(its parameter names or shapes differ); use another checkpoint_dir")
        return state

    def has_any(self) -> bool:
        return self.directory.is_dir() and any(self.directory.glob("*.pt"))
