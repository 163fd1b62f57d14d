"""Knowledge distillation from the unpruned model: the fine-tuning loss of every method.

The slim model learns from the original's softened logits as well as from the
labels (Hinton et al., 2015): ``(1 - alpha) * task + alpha * T^2 * KL(teacher_T || student_T)``.
The teacher is a frozen copy in eval mode, so its batch-norm statistics and
dropout never move; it costs one forward pass per training batch.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .errors import FalfValueError
from .training import LossFn

__all__ = ["Distillation", "DistillationError", "distillation_loss"]


class DistillationError(FalfValueError):
    """The outputs cannot be distilled (not class logits); the message says how to turn it off."""


@dataclass(frozen=True)
class Distillation:
    """``alpha``: weight of the teacher's term (0 turns distillation off); ``temperature``: softening."""

    alpha: float = 0.5
    temperature: float = 4.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise DistillationError(f"distill must be a weight in [0, 1] (0 = off), not {self.alpha}")
        if self.temperature <= 0:
            raise DistillationError(f"distill_temperature must be > 0, not {self.temperature}")

    @property
    def enabled(self) -> bool:
        return self.alpha > 0


def _logits(outputs, who: str) -> torch.Tensor:
    if isinstance(outputs, torch.Tensor) and outputs.dim() == 2:
        return outputs
    shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
    raise DistillationError(f"the {who}'s outputs ({shape}) are not class logits (batch, classes), so they cannot be "
                            "distilled: pass distill=0")


def distillation_loss(teacher: nn.Module, task_loss: LossFn, settings: Distillation) -> LossFn:
    """``task_loss`` blended with the KL divergence to a frozen copy of ``teacher``."""
    frozen = copy.deepcopy(teacher).eval().requires_grad_(False)
    alpha, temperature = settings.alpha, settings.temperature

    def loss(outputs, batch) -> torch.Tensor:
        student = _logits(outputs, "slim model")
        with torch.no_grad():
            target = _logits(frozen(batch[0]), "original model")
        soft = nn.functional.kl_div(nn.functional.log_softmax(student / temperature, dim=1),
                                    nn.functional.log_softmax(target / temperature, dim=1),
                                    reduction="batchmean", log_target=True)
        return (1.0 - alpha) * task_loss(outputs, batch) + alpha * temperature ** 2 * soft

    return loss
