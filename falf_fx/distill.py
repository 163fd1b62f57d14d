"""Knowledge distillation from the unpruned model: the fine-tuning loss of every method.

The slim model learns from the original's softened logits as well as from the
labels (Hinton et al., 2015): ``(1 - alpha) * task + alpha * T^2 * KL(teacher_T || student_T)``.
The teacher is a frozen copy in eval mode, so its batch-norm statistics and
dropout never move; it costs one forward pass per training batch.  ``where``
picks the samples that are distilled: ``all``; ``teacher_correct``, where the
teacher's top class is the label; ``teacher_ahead``, where the teacher gives the
label more probability than the student does, so a student that has overtaken a
weak teacher on a sample is no longer pulled back (the labels are always taught).
``until`` says how long: to the ``end`` of the run, or until the student's
held-out metric first reaches the teacher's (``teacher_passed``): a teacher the
student has overtaken has nothing left to teach as a whole, and its softened
logits hold the student near the teacher's own accuracy (measured on the quality
benchmark's weakest base, see the README).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from .errors import FalfValueError
from .training import LossFn

__all__ = ["Distillation", "DistillationError", "DistillationLoss", "WHERE", "UNTIL"]
WHERE = ("all", "teacher_correct", "teacher_ahead")
UNTIL = ("end", "teacher_passed")


class DistillationError(FalfValueError):
    """The outputs cannot be distilled (not class logits); the message says how to turn it off."""


@dataclass(frozen=True)
class Distillation:
    """``alpha``: weight of the teacher's term (0 turns distillation off); ``temperature``: softening;
    ``where``: which samples are distilled (``all``, ``teacher_correct``, ``teacher_ahead``; the last two
    need class-index labels); ``until``: ``end`` or ``teacher_passed`` (needs a held-out metric; without
    one it distils to the end)."""

    alpha: float = 0.5
    temperature: float = 4.0
    where: str = "all"
    until: str = "end"

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise DistillationError(f"distill must be a weight in [0, 1] (0 = off), not {self.alpha}")
        if self.temperature <= 0:
            raise DistillationError(f"distill_temperature must be > 0, not {self.temperature}")
        if self.where not in WHERE:
            raise DistillationError(f"distill_where must be one of {', '.join(WHERE)}, not {self.where!r}")
        if self.until not in UNTIL:
            raise DistillationError(f"distill_until must be one of {', '.join(UNTIL)}, not {self.until!r}")

    @property
    def enabled(self) -> bool:
        return self.alpha > 0


def _logits(outputs, who: str) -> torch.Tensor:
    if isinstance(outputs, torch.Tensor) and outputs.dim() == 2:
        return outputs
    shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
    raise DistillationError(f"the {who}'s outputs ({shape}) are not class logits (batch, classes), so they cannot be "
                            "distilled: pass distill=0")


def _selected(where: str, student: torch.Tensor, target: torch.Tensor, batch) -> torch.Tensor:
    """1.0 for the samples ``where`` distils, else 0.0."""
    labels = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
    if not (isinstance(labels, torch.Tensor) and labels.dim() == 1 and len(labels) == len(target)
            and not labels.is_floating_point()):
        raise DistillationError(f"distill_where={where!r} needs class-index labels (a 1-d integer tensor as the "
                                f"batch's second item), got {type(labels).__name__}: pass distill_where='all'")
    if where == "teacher_correct":
        return (target.argmax(dim=1) == labels).to(target.dtype)
    column = labels.unsqueeze(1)
    ahead = target.softmax(dim=1).gather(1, column) > student.detach().softmax(dim=1).gather(1, column)
    return ahead.squeeze(1).to(target.dtype)


class DistillationLoss:
    """``task_loss`` blended with the KL divergence to a frozen copy of ``teacher``, until :meth:`stop`."""

    def __init__(self, teacher: nn.Module, task_loss: LossFn, settings: Distillation) -> None:
        self.frozen = copy.deepcopy(teacher).eval().requires_grad_(False)
        self.task_loss, self.settings = task_loss, settings
        self.active = True

    def stop(self) -> None:
        """The task loss alone from now on (the teacher is no longer run)."""
        self.active = False

    def __call__(self, outputs, batch) -> torch.Tensor:
        if not self.active:
            return self.task_loss(outputs, batch)
        alpha, temperature = self.settings.alpha, self.settings.temperature
        student = _logits(outputs, "slim model")
        with torch.no_grad():
            target = _logits(self.frozen(batch[0]), "original model")
        per_sample = nn.functional.kl_div(nn.functional.log_softmax(student / temperature, dim=1),
                                          nn.functional.log_softmax(target / temperature, dim=1),
                                          reduction="none", log_target=True).sum(dim=1)
        if self.settings.where != "all":
            per_sample = per_sample * _selected(self.settings.where, student, target, batch)
        return (1.0 - alpha) * self.task_loss(outputs, batch) + alpha * temperature ** 2 * per_sample.mean()
