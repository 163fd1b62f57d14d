"""Magnitude pruning: the baseline every benchmark compares against."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..importance import group_importance
from .base import Round, ScoreMethod

__all__ = ["Magnitude"]


@dataclass
class Magnitude(ScoreMethod):
    importance: str = "l1"
    name: ClassVar[str] = "magnitude"

    def scores(self, round_: Round) -> dict[int, np.ndarray]:
        return group_importance(round_.analysis, self.importance, seed=round_.seed)
