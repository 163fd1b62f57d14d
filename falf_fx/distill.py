"""Knowledge distillation from the unpruned model: the fine-tuning loss of every method.

The slim model learns from the original's softened logits as well as from the
labels (Hinton et al., 2015): ``(1 - alpha) * task + alpha * T^2 * KL(teacher_T || student_T)``.
The teacher is a frozen copy in eval mode, so its batch-norm statistics and
dropout never move; it costs one forward pass per training batch.  With
``correct_only`` a sample is distilled only where the teacher's top class is its
label: a weak teacher's wrong answers are not taught (the labels still are).
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
    """``alpha``: weight of the teacher's term (0 turns distillation off); ``temperature``: softening;
    ``correct_only``: distil only the samples the teacher classifies right (needs class-index labels)."""

    alpha: float = 0.5
    temperature: float = 4.0
    correct_only: bool = False

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


def _correct(target: torch.Tensor, batch) -> torch.Tensor:
    """1.0 where the teacher's top class is the sample's label, else 0.0."""
    labels = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
    if not (isinstance(labels, torch.Tensor) and labels.dim() == 1 and len(labels) == len(target)
            and not labels.is_floating_point()):
        raise DistillationError("distill_correct_only needs class-index labels (a 1-d integer tensor as the batch's "
                                f"second item), got {type(labels).__name__}: pass distill_correct_only=False")
    return (target.argmax(dim=1) == labels).to(target.dtype)


def distillation_loss(teacher: nn.Module, task_loss: LossFn, settings: Distillation) -> LossFn:
    """``task_loss`` blended with the KL divergence to a frozen copy of ``teacher``."""
    frozen = copy.deepcopy(teacher).eval().requires_grad_(False)
    alpha, temperature = settings.alpha, settings.temperature

    def loss(outputs, batch) -> torch.Tensor:
        student = _logits(outputs, "slim model")
        with torch.no_grad():
            target = _logits(frozen(batch[0]), "original model")
        per_sample = nn.functional.kl_div(nn.functional.log_softmax(student / temperature, dim=1),
                                          nn.functional.log_softmax(target / temperature, dim=1),
                                          reduction="none", log_target=True).sum(dim=1)
        if settings.correct_only:
            per_sample = per_sample * _correct(target, batch)
        return (1.0 - alpha) * task_loss(outputs, batch) + alpha * temperature ** 2 * per_sample.mean()

    return loss
